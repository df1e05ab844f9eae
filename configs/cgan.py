"""Conditional DCGAN: the label embedded into G's input, a projection discriminator.

  python run.py --config configs/cgan.py            # class-conditional digits, mnist10k
  python run.py --config configs/cgan.py:smoke      # a few steps, for tests

Everything else is configs/dcgan.py. The sample grid has one row per class
(the same latent down each column).
"""

import os

from jaxvision import config as config_lib


def get_config(preset: str = ''):
  if preset not in ('', 'smoke'):
    raise ValueError(f'configs/cgan.py has presets smoke, not {preset!r}')
  c = config_lib.from_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'dcgan.py'), preset
  )
  c.data.clusters = 0  # the labels
  c.model.num_classes = 10
  c.model.conditioning = 'projection'
  if not preset:  # 4,000 steps of 64: the labels make it an easier problem than dcgan.py's
    c.data.batch_size = 64  # dcgan.py's is 32
    c.train.steps = 4000
    c.train.eval_every = 1000
    c.train.ckpt_every = 1000
  return c
