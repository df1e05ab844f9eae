"""Convolutional VAE: stride-2 conv encoder, sub-pixel transposed-conv decoder.

  python run.py --config configs/conv_vae.py          # full offline run on mnist10k
  python run.py --config configs/conv_vae.py:smoke    # a few steps, for tests

Everything else is configs/vae.py.
"""
import os

from jaxvision import config as config_lib


def get_config(preset: str = ''):
  if preset not in ('', 'smoke'):
    raise ValueError(f'configs/conv_vae.py has the preset smoke, not {preset!r}')
  c = config_lib.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vae.py'), preset)
  c.model.name = 'vae_conv'
  c.model.conv_impl = 'im2col'
  if preset == 'smoke':
    c.model.features = (8, 16)
    c.model.hidden = 32
    c.eval.iwae_k = 10
    c.eval.iwae_chunk = 5
    return c
  c.model.latents = 32
  c.model.features = (32, 64)
  c.model.hidden = 512
  c.data.batch_size = 64
  c.eval.iwae_chunk = 20
  c.train.steps = 18750  # 150 epochs of the 8,000 training images
  c.train.log_every = 250
  c.train.eval_every = 3750
  c.train.ckpt_every = 3750
  return c
