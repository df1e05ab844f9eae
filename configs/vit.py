"""Vision Transformer.

  python run.py --config configs/vit.py            # ViT-tiny/7 (7x7 patches) on mnist10k, offline
  python run.py --config configs/vit.py:smoke      # a few steps, for tests
  python run.py --config configs/vit.py:cifar10    # ViT-S/4 on TFDS cifar10 (needs the prepared dataset)
"""
from jaxvision import config as config_lib


def get_config(preset: str = ''):
  c = config_lib.base()
  c.task = 'classification'
  c.model.name = 'vit'
  c.model.num_classes = 10
  c.model.patch = 7  # 28x28 -> 16 patches (+ the class token)
  c.model.dim = 96
  c.model.depth = 6
  c.model.heads = 4
  c.model.mlp_dim = 192
  c.model.dropout = 0.0
  c.model.pool = 'cls'

  c.data.name = 'mnist10k'
  c.data.batch_size = 128
  c.data.augment = 'shift'
  c.data.shift = 2

  c.optim.name = 'adamw'
  c.optim.lr = 1e-3
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_frac = 0.05
  c.optim.weight_decay = 0.05
  c.optim.grad_clip = 1.0
  c.loss.label_smoothing = 0.1

  c.train.steps = 3750  # 60 epochs of the 8,000 training images
  c.train.log_every = 50
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
