"""Classic CNN (BatchNorm + Dropout variant) on digits.

python run.py --config configs/cnn.py            # full offline run on mnist10k
python run.py --config configs/cnn.py:smoke      # a few steps, for tests
python run.py --config configs/cnn.py:cifar10    # TFDS cifar10 (needs the prepared dataset)
python run.py --config configs/cnn.py:domain     # hidden 64: the feature net of FD/KID
"""

from jaxvision import config as config_lib
from jaxvision import tasks


def get_config(preset: str = ''):
  c = tasks.base_config('classification')
  c.model.name = 'cnn'
  c.model.variant = 'bn_dropout'
  c.model.conv_impl = 'xla'  # XLA's own (on CPU without YNNPACK): 1.16-1.46x im2col
  c.model.num_classes = 10
  c.model.features = (32, 64)
  c.model.hidden = 128

  c.cpu_convolutions = 'xla'

  c.data.name = 'mnist10k'
  c.data.batch_size = 128
  c.data.augment = 'shift'
  c.data.shift = 2

  c.optim.name = 'adamw'
  c.optim.lr = 3e-3
  c.optim.schedule = 'onecycle'
  c.optim.warmup_frac = 0.25
  c.optim.weight_decay = 1e-4
  c.loss.label_smoothing = 0.1

  c.train.steps = 1250  # 20 epochs of the 8,000 training images
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.ckpt_every = 250

  if preset == 'smoke':
    config_lib.smoke(c)
    c.model.features = (8, 16)
    c.model.hidden = 32
  elif preset == 'domain':  # the feature network of eval/fd and eval/kid (jaxvision/assets)
    c.model.hidden = 64
    c.model.conv_impl = 'im2col'  # as the committed weights were trained
    c.cpu_convolutions = 'ynnpack'
  elif preset == 'cifar10':
    c.data.name = 'cifar10'
    c.data.augment = 'crop_flip'
    c.data.shift = 4
    c.data.scale = 'minus_one_one'
    c.train.steps = 390 * 30
    c.train.eval_every = 1000
    c.train.ckpt_every = 1000
  elif preset:
    raise ValueError(f'configs/cnn.py has presets smoke, domain and cifar10, not {preset!r}')
  return c
