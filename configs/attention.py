"""Self-attention classifier (the seed's design) over image patches or rows.

  python run.py --config configs/attention.py                         # 4x4 patches of mnist10k
  python run.py --config configs/attention.py --config.model.tokens=rows
  python run.py --config configs/attention.py:smoke                   # a few steps, for tests
"""
from jaxvision import config as config_lib


def get_config(preset: str = ''):
  c = config_lib.base()
  c.task = 'classification'
  c.model.name = 'attention'
  c.model.num_classes = 10
  c.model.tokens = 'patches'
  c.model.patch = 4
  c.model.dim = 128
  c.model.layers = 1
  c.model.pool_heads = 4
  c.model.hidden = 256
  c.model.dropout = 0.1

  c.data.name = 'mnist10k'
  c.data.batch_size = 128
  c.data.augment = 'shift'
  c.data.shift = 2

  c.optim.name = 'adamw'
  c.optim.lr = 2e-3
  c.optim.schedule = 'onecycle'
  c.optim.warmup_frac = 0.2
  c.optim.weight_decay = 0.01
  c.optim.grad_clip = 1.0
  c.loss.label_smoothing = 0.1

  c.train.steps = 2500  # 40 epochs of the 8,000 training images
  c.train.log_every = 50
  c.train.eval_every = 500
  c.train.ckpt_every = 500

  if preset == 'smoke':
    config_lib.smoke(c)
    c.model.dim = 16
    c.model.hidden = 32
  elif preset:
    raise ValueError(f'configs/attention.py has presets smoke, not {preset!r}')
  return c
