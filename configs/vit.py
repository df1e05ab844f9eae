"""Vision Transformer.

python run.py --config configs/vit.py            # ViT-tiny/7 (7x7 patches) on mnist10k, offline
python run.py --config configs/vit.py:smoke      # a few steps, for tests
python run.py --config configs/vit.py:cifar10    # ViT-S/4 on TFDS cifar10 (prepared first)
"""

import os

import ml_collections

from jaxvision import config as config_lib


def get_config(preset: str = ''):
  # The data (mnist10k, +-2 px shifts), AdamW and label smoothing of configs/cnn.py.
  c = config_lib.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cnn.py'))
  c.model = ml_collections.ConfigDict(
    {
      'name': 'vit',
      'num_classes': 10,
      'patch': 7,  # 28x28 -> 16 patches (+ the class token)
      'dim': 96,
      'depth': 6,
      'heads': 4,
      'mlp_dim': 192,
      'dropout': 0.0,
      'pool': 'cls',
      'gelu': 'tanh',  # 'erf': timm's exact GELU (its public weights)
      'remat': False,  # True: recompute each block's activations in the backward pass
    }
  )
  c.optim.lr = 1e-3
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_frac = 0.05
  c.optim.weight_decay = 0.05
  c.optim.grad_clip = 1.0
  c.train.steps = 3750  # 60 epochs of the 8,000 training images
  c.train.eval_every = 750
  c.train.ckpt_every = 750

  if preset == 'smoke':
    config_lib.smoke(c)
    c.model.dim = 16
    c.model.depth = 1
    c.model.heads = 2
    c.model.mlp_dim = 32
  elif preset == 'cifar10':  # ViT-S/4: 64 patches of 4x4, 300 epochs
    c.model.patch = 4
    c.model.dim = 384
    c.model.depth = 12
    c.model.heads = 6
    c.model.mlp_dim = 1536
    c.model.dropout = 0.1
    c.data.name = 'cifar10'
    c.data.augment = 'crop_flip'
    c.data.shift = 4
    c.data.scale = 'minus_one_one'
    c.data.batch_size = 512
    c.optim.lr = 1e-3
    c.train.steps = 98 * 300
    c.train.eval_every = 980
    c.train.ckpt_every = 980
  elif preset:
    raise ValueError(f'configs/vit.py has presets smoke and cifar10, not {preset!r}')
  return c
