"""Conditional VAE: the MLP VAE with the label's one-hot in the encoder and decoder.

  python run.py --config configs/cvae.py          # full offline run on mnist10k
  python run.py --config configs/cvae.py:smoke    # a few steps, for tests

Everything else is configs/vae.py. The samples grid has one row per class (the
same latent in every row). 4 latents, not the MLP VAE's 20: with 20 the encoder
keeps the digit's identity in the code, the decoder learns to read it from there,
and a row of the grid (one label, prior latents) shows whatever digits those
latents encode; with 4 the label decides the digit and the latents the style
(measured: README, Generation).
"""

import os

from jaxvision import config as config_lib


def get_config(preset: str = ''):
  if preset not in ('', 'smoke'):
    raise ValueError(f'configs/cvae.py has the preset smoke, not {preset!r}')
  c = config_lib.from_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vae.py'), preset
  )
  c.model.name = 'vae_cond'
  c.model.num_classes = 10
  c.model.latents = 4  # with 20 the code carries the class and the grid's rows are not legible
  if not preset:
    c.data.batch_size = 128
    c.train.steps = 6250  # 100 epochs of the 8,000 training images
    c.train.log_every = 125
    c.train.eval_every = 1250
    c.train.ckpt_every = 1250
  return c
