"""Diffusion (v-prediction, cosine schedule, DDPM sampling) and flow matching with a UNet, digits.

  python run.py --config configs/diffusion.py            # unconditional, 28x28 mnist10k, offline
  python run.py --config configs/diffusion.py:flow       # rectified flow, Heun steps
  python run.py --config configs/diffusion.py:cond       # conditional, classifier-free guidance
  python run.py --config configs/diffusion.py:smoke      # a few steps, for tests
  python run.py --config configs/diffusion.py:cifar10    # 32x32 colour, TFDS cifar10 (prepared)
  python run.py --config configs/diffusion.py --mode sample --config.sample.n=64 \
      --config.sample.steps=50

Sample grids from fixed noise go to WORKDIR/samples at every eval; eval/fd and eval/kid compare
8,000 samples with the test digits.
"""

from jaxvision import config as config_lib
from jaxvision import tasks


def get_config(preset: str = ''):
  c = tasks.base_config('diffusion')
  c.model.name = 'unet'
  c.model.channels = 16
  c.model.channel_mults = (1, 2, 4)  # 28x28x16 -> 14x14x32 -> 7x7x64
  c.model.blocks = 2
  c.model.attention = (7,)
  c.model.heads = 4
  c.model.groups = 8
  c.model.dropout = 0.0
  c.model.num_classes = 0

  c.data.name = 'mnist10k'
  c.data.scale = 'minus_one_one'
  c.data.batch_size = 64
  c.data.eval_batch_size = 500

  c.diffusion.objective = 'v'
  # a horizon of ~200 steps: 0.999's ~1,000 of 4,000 carried weights from when the FD was 10x worse
  c.diffusion.ema_decay = 0.995
  # DDPM's ancestral steps: at 25 steps FD 1.22 against DDIM's 1.77 (500 samples, docs/diffusion.md)
  c.sample.sampler = 'ddpm'
  c.sample.steps = 25

  c.optim.name = 'adam'
  c.optim.lr = 1e-3
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_frac = 0.02
  c.optim.grad_clip = 1.0
  # XLA's own convolutions: the UNet's small 3x3 convs run faster than through YNNPACK on CPU
  c.cpu_convolutions = 'xla'

  c.eval.fd_samples = 8000
  c.train.steps = 4000
  c.train.log_every = 100
  c.train.eval_every = 4000
  c.train.ckpt_every = 1000

  if preset in ('flow', 'cond', 'smoke', 'cifar10', ''):
    pass
  else:
    raise ValueError(
      f'configs/diffusion.py has presets flow, cond, smoke and cifar10, not {preset!r}'
    )
  if preset == 'flow':  # rectified flow, integrated with Heun steps (two network calls each)
    c.diffusion.objective = 'flow'
    c.sample.sampler = 'heun'
    c.sample.steps = 12
  elif preset == 'cond':  # one label embedding per digit; 10 % of labels dropped for guidance
    c.model.num_classes = 10
    c.diffusion.label_dropout = 0.1
    c.sample.guidance = 1.0
    c.sample.steps = 15  # guided: 2 network calls a step, 30 an image (the default: 25)
    c.sample.sampler = 'ddim'  # guided, DDPM's steps gain nothing here (500 samples: 0.93 vs 0.90)
  elif preset == 'smoke':
    config_lib.smoke(c)
    c.model.channels = 8
    c.model.channel_mults = (1, 2)
    c.model.blocks = 1
    c.model.attention = (14,)
    c.model.heads = 1  # one head of 16 channels: four of 4 ran the smoke run 1.6x slower on CPU
    c.model.groups = 4
    c.sample.steps = 3
    c.eval.fd_samples = 0
  elif preset == 'cifar10':  # 32x32x64 -> 16x16x128 -> 8x8x128 (attention) -> 4x4x128
    c.data.name = 'cifar10'
    c.model.channels = 64
    c.model.channel_mults = (1, 2, 2, 2)
    c.model.attention = (8,)
    c.model.dropout = 0.1
    c.model.groups = 32
    c.data.batch_size = 128
    c.eval.fd_samples = 0  # the domain features are for digits
    c.train.steps = 390 * 200
    c.train.eval_every = 3900
    c.train.ckpt_every = 3900
  return c
