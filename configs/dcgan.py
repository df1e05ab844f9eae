"""DCGAN: BCE, Adam 2e-4 (b1 = 0.5), separate generator and discriminator optimizers.

On digits the default is self-conditioned (Liu et al. 2020): no labels are used, but G and D are
conditioned on 30 balanced clusters that jaxvision finds in the train images
(jaxvision/data/clusters.py), and samples draw the cluster uniformly. On mnist10k the plain DCGAN
stops at 22x the real-vs-real Frechet distance, this one at 2.5x (README.md).

  python run.py --config configs/dcgan.py            # 28x28 digits of mnist10k, offline
  python run.py --config configs/dcgan.py:plain      # the plain, unconditional DCGAN
  python run.py --config configs/dcgan.py:smoke      # a few steps, for tests
  python run.py --config configs/dcgan.py:cifar10    # 4x4 -> 32x32 colour, TFDS cifar10
  python run.py --config configs/dcgan.py:celeb_a    # 4x4 -> 64x64, TFDS celeb_a centre-cropped
  python run.py --config configs/dcgan.py --config.model.info_codes=10   # an InfoGAN

Sample grids from fixed latents go to WORKDIR/samples at every eval.
"""

from jaxvision import config as config_lib
from jaxvision import tasks


def get_config(preset: str = ''):
  c = tasks.base_config('gan')
  c.model.name = 'dcgan'
  c.model.latents = 100
  c.model.g_features = 32  # 7x7x128 -> 14x14x64 -> 28x28x1
  c.model.d_features = 64  # 28 -> 14x14x64 -> 7x7x128
  c.model.upsample = 'subpixel'
  c.model.conv_impl = 'xla_subpixel'  # D's strided input gradients by sub-pixel phases: 1.17x
  c.model.d_dropout = 0.0
  c.model.num_classes = 30  # = data.clusters: G and D conditioned on the cluster
  c.model.conditioning = 'projection'
  c.model.info_codes = 0  # > 0: InfoGAN, a categorical code of this many values (gan.info_weight)

  c.data.name = 'mnist10k'
  c.data.scale = 'minus_one_one'
  c.data.clusters = (
    30  # pseudo-labels for a self-conditioned GAN; 0 (and model.num_classes=0): plain
  )
  c.data.batch_size = 32
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

  c.train.steps = 10000  # 40 epochs of the 8,000 training images
  c.train.log_every = 50
  c.train.eval_every = 5000  # each eval's FD/KID on 8,000 samples costs ~40 s here
  c.train.ckpt_every = 5000

  if preset in (
    'smoke',
    'cifar10',
    'celeb_a',
    'plain',
  ):  # clusters of pixels are for digits; tests: plain
    c.data.clusters = c.model.num_classes = 0
  if preset == 'plain':  # the earlier default: 8,000 steps of 64
    c.data.batch_size = 64
    c.train.steps = 8000
    c.train.eval_every = c.train.ckpt_every = 2000
  elif preset == 'smoke':
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
    raise ValueError(
      f'configs/dcgan.py has presets plain, smoke, cifar10 and celeb_a, not {preset!r}'
    )
  return c
