"""Self-attention classifier (the seed's design) over image patches or rows.

python run.py --config configs/attention.py                         # 4x4 patches of mnist10k
python run.py --config configs/attention.py --config.model.tokens=rows
python run.py --config configs/attention.py:smoke                   # a few steps, for tests
"""

import os

import ml_collections

from jaxvision import config as config_lib


def get_config(preset: str = ''):
  # The data (mnist10k, +-2 px shifts), AdamW and label smoothing of configs/cnn.py.
  c = config_lib.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cnn.py'))
  c.model = ml_collections.ConfigDict(
    {
      'name': 'attention',
      'num_classes': 10,
      'tokens': 'patches',
      'patch': 4,
      'dim': 128,
      'layers': 1,
      'pool_heads': 4,
      'hidden': 256,
      'dropout': 0.1,
    }
  )
  c.optim.lr = 2e-3
  c.optim.warmup_frac = 0.2
  c.optim.weight_decay = 0.01
  c.optim.grad_clip = 1.0
  c.train.steps = 2500  # 40 epochs of the 8,000 training images
  c.train.eval_every = 500
  c.train.ckpt_every = 500

  if preset == 'smoke':
    config_lib.smoke(c)
    c.model.dim = 16
    c.model.hidden = 32
  elif preset:
    raise ValueError(f'configs/attention.py has presets smoke, not {preset!r}')
  return c
