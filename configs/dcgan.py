"""DCGAN: BCE, Adam 2e-4 (b1 = 0.5), separate generator and discriminator optimizers.

  python run.py --config configs/dcgan.py            # 28x28 digits of mnist10k, offline
  python run.py --config configs/dcgan.py:smoke      # a few steps, for tests
  python run.py --config configs/dcgan.py:cifar10    # 4x4 -> 32x32 colour, TFDS cifar10
  python run.py --config configs/dcgan.py:celeb_a    # 4x4 -> 64x64, TFDS celeb_a centre-cropped
  python run.py --config configs/dcgan.py --config.model.info_codes=10   # an InfoGAN

Sample grids from fixed latents go to WORKDIR/samples at every eval.
"""
from jaxvision import config as config_lib


def get_config(preset: str = ''):
  c = config_lib.base()
  c.task = 'gan'
  c.model.name = 'dcgan'
  c.model.latents = 100
  c.model.g_features = 32  # 7x7x128 -> 14x14x64 -> 28x28x1
  c.model.d_features = 64  # 28 -> 14x14x64 -> 7x7x128
  c.model.upsample = 'subpixel'
  c.model.conv_impl = 'xla'
  c.model.d_dropout = 0.0
  c.model.num_classes = 0
  c.model.conditioning = 'projection'
  c.model.info_codes = 0  # > 0: InfoGAN, a categorical code of this many values (gan.info_weight)

  c.data.name = 'mnist10k'
  c.data.scale = 'minus_one_one'
  c.data.batch_size = 64
  c.data.eval_batch_size = 500

  c.optim.name = 'adam'
  c.optim.lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999
  c.optim.schedule = 'constant'
  c.gan.loss = 'bce'
  c.gan.d_steps = 1
  c.gan.ema_decay = 0.999

  c.eval.fd_samples = 8000  # eval/fd, eval/kid (+ their real-data floors) at every eval
  # XLA:CPU's own convolutions instead of YNNPACK's: 1.11x on this step (benchmarks/README.md, quiet
  # rerun; 1.16x in the first run).
  c.cpu_convolutions = 'xla'

  c.train.steps = 8000  # 64 epochs of the 8,000 training images
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.ckpt_every = 2000

  if preset == 'smoke':
    config_lib.smoke(c)
    c.model.latents = 16
    c.model.g_features = 8
    c.model.d_features = 8
    c.eval.fd_samples = 0
  elif preset == 'cifar10':
    c.model.g_features = 64
    c.eval.fd_samples = 0  # the domain features are for digits
    c.data.name = 'cifar10'
    c.data.batch_size = 128
    c.train.steps = 390 * 100
    c.train.eval_every = 3900
    c.train.ckpt_every = 3900
  elif preset == 'celeb_a':
    c.model.g_features = 64
    c.eval.fd_samples = 0
    c.data.name = 'celeb_a'
    c.data.image_size = 64  # 218x178 faces: shorter side to 64, centre crop
    c.data.cache = False
    c.data.batch_size = 128
    c.train.steps = 1271 * 20
    c.train.eval_every = 2542
    c.train.ckpt_every = 2542
  elif preset:
    raise ValueError(f'configs/dcgan.py has presets smoke, cifar10 and celeb_a, not {preset!r}')
  return c
