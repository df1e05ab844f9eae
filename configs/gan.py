"""The seed's MLP GAN (100 -> 256 -> 512 -> 1024 -> 784 tanh; D 784 -> 1024 -> 512 -> 256 -> 1
with LeakyReLU 0.2 and dropout 0.3): BCE, Adam 2e-4 (b1 = 0.5), one optimizer each for G and D.

  python run.py --config configs/gan.py            # mnist10k, offline
  python run.py --config configs/gan.py:smoke      # a few steps, for tests

The data, optimizer and metrics are those of configs/dcgan.py.
"""

import os

import ml_collections

from jaxvision import config as config_lib


def get_config(preset: str = ''):
  if preset not in ('', 'smoke'):
    raise ValueError(f'configs/gan.py has presets smoke, not {preset!r}')
  c = config_lib.from_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dcgan.py'), preset
  )
  c.data.clusters = 0
  c.model = ml_collections.ConfigDict(
    {
      'name': 'gan_mlp',
      'latents': 100,
      'g_hidden': (256, 512, 1024),
      'd_hidden': (1024, 512, 256),
      'd_dropout': 0.3,
      'num_classes': 0,
    }
  )
  if preset == 'smoke':
    c.model.update(latents=16, g_hidden=(32,), d_hidden=(32,))
    return c
  c.data.batch_size = 64  # dcgan.py's is 32
  c.train.steps = 12500  # 100 epochs of the 8,000 training images
  c.train.log_every = 100
  c.train.eval_every = 2500
  c.train.ckpt_every = 2500
  return c
