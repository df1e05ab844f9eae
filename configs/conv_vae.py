"""Convolutional VAE: stride-2 conv encoder, sub-pixel transposed-conv decoder.

  python run.py --config configs/conv_vae.py          # full offline run on mnist10k
  python run.py --config configs/conv_vae.py:smoke    # a few steps, for tests
  python run.py --config configs/conv_vae.py:cifar10  # colour: discretised logistic likelihood

Everything else is configs/vae.py.
"""

import os

from jaxvision import config as config_lib


def get_config(preset: str = ''):
  if preset not in ('', 'smoke', 'cifar10'):
    raise ValueError(f'configs/conv_vae.py has the presets smoke and cifar10, not {preset!r}')
  c = config_lib.from_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vae.py'),
    'smoke' if preset == 'smoke' else '',
  )
  c.model.name = 'vae_conv'
  # XLA's own convolutions, not YNNPACK's or patches + matmul: 1.16x the im2col step on the CPU
  # (step_throughput.py --jax-variants xla_conv_noynn, docs/performance.md)
  c.model.conv_impl = 'xla'
  c.cpu_convolutions = 'xla'
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
  c.train.steps = 12500  # 100 epochs of the 8,000 training images
  c.train.log_every = 250
  c.train.eval_every = 2500
  c.train.ckpt_every = 2500
  if preset == 'cifar10':  # 8-bit colour: discretised logistic per pixel, 128 latents, 100 epochs
    c.data.name = 'cifar10'
    c.loss.likelihood = 'logistic'
    c.model.latents = 128
    c.model.features = (64, 128, 256)  # 32 -> 16 -> 8 -> 4
    c.model.hidden = 1024
    c.data.batch_size = 128
    c.eval.fd_samples = 0  # the domain features are for digits
    c.eval.iwae_k = 100
    c.train.steps = 391 * 100
    c.train.log_every = 391
    c.train.eval_every = 391 * 10
    c.train.ckpt_every = 391 * 5
  return c
