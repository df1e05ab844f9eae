"""MLP VAE of the flax example (784-500-20-500-784) on dynamically binarised digits.

  python run.py --config configs/vae.py            # full offline run on mnist10k
  python run.py --config configs/vae.py:smoke      # a few steps, for tests

Reports eval/neg_elbo, eval/recon, eval/kl every eval and eval/nll_iwae
(k = eval.iwae_k importance samples) at the final eval; sample grids go to
WORKDIR/samples.
"""

from jaxvision import config as config_lib
from jaxvision import tasks


def get_config(preset: str = ''):
  c = tasks.base_config('vae')
  c.model.name = 'vae_mlp'
  c.model.latents = 20
  c.model.hidden = 500

  c.data.name = 'mnist10k'
  c.data.scale = 'zero_one'
  c.data.batch_size = 32
  c.data.eval_batch_size = 500

  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.schedule = 'cosine'

  c.eval.iwae_k = 1000
  c.eval.iwae_chunk = 50
  c.eval.fd_samples = 8000  # eval/fd, eval/kid (+ their real-data floors) at every eval

  c.train.steps = 125000  # 500 epochs of the 8,000 training images
  c.train.log_every = 1000
  c.train.eval_every = 25000
  c.train.ckpt_every = 25000

  if preset == 'smoke':
    config_lib.smoke(c)
    c.eval.fd_samples = 0
    c.model.hidden = 64
    c.model.latents = 8
    c.eval.iwae_k = 20
    c.eval.iwae_chunk = 10
  elif preset:
    raise ValueError(f'configs/vae.py has the preset smoke, not {preset!r}')
  return c
