"""Convolutional VAE: stride-2 conv encoder, sub-pixel transposed-conv decoder.

  python run.py --config configs/conv_vae.py          # full offline run on mnist10k
  python run.py --config configs/conv_vae.py:smoke    # a few steps, for tests
"""
from jaxvision import config as config_lib


def get_config(preset: str = ''):
  c = config_lib.base()
  c.task = 'vae'
  c.model.name = 'vae_conv'
  c.model.latents = 32
  c.model.features = (32, 64)
  c.model.hidden = 512
  c.model.conv_impl = 'im2col'

  c.data.name = 'mnist10k'
  c.data.scale = 'zero_one'
  c.data.batch_size = 64
  c.data.eval_batch_size = 500

  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'

  c.eval.iwae_k = 1000
  c.eval.iwae_chunk = 20

  c.train.steps = 18750  # 150 epochs of the 8,000 training images
  c.train.log_every = 250
  c.train.eval_every = 3750
  c.train.ckpt_every = 3750

  if preset == 'smoke':
    c.train.steps = 6
    c.train.log_every = 2
    c.train.eval_every = 3
    c.train.ckpt_every = 3
    c.data.batch_size = 32
    c.data.eval_batch_size = 1000
    c.model.features = (8, 16)
    c.model.latents = 8
    c.model.hidden = 32
    c.eval.iwae_k = 10
    c.eval.iwae_chunk = 5
  elif preset:
    raise ValueError(f'configs/conv_vae.py has the preset smoke, not {preset!r}')
  return c
