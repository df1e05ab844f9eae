"""ResNet v1.5 with BatchNorm.

  python run.py --config configs/resnet.py            # ResNet-20 on mnist10k (offline)
  python run.py --config configs/resnet.py:smoke      # a few steps, for tests
  python run.py --config configs/resnet.py:cifar10    # ResNet-18, TFDS cifar10, crop + flip
  python run.py --config configs/resnet.py:imagenet   # ResNet-50, TFDS imagenet2012, 224x224

cifar10 and imagenet2012 must be prepared in the TFDS data dir first (they
cannot be downloaded here; imagenet2012 needs its manual files).
benchmarks/make_imagenet_like.py writes a stand-in in imagenet2012's format:

  python benchmarks/make_imagenet_like.py --data_dir /tmp/imagenet_like --n 20000
  python run.py --config configs/resnet.py:imagenet --config.data.tfds_dir=/tmp/imagenet_like
"""

import os

import ml_collections

from jaxvision import config as config_lib


def get_config(preset: str = ''):
  # The data, optimizer and schedule of configs/cnn.py; only the model (and weight decay) differ.
  c = config_lib.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cnn.py'))
  c.model = ml_collections.ConfigDict(
    {
      'name': 'resnet',
      'num_classes': 10,
      'stage_sizes': (3, 3, 3),  # ResNet-20: 6n + 2 layers with n = 3
      'block': 'basic',
      'width': 16,
      'stem': 'cifar',
      'conv_impl': 'xla_subpixel',  # strided input gradients by sub-pixel phases
      'bn_momentum': 0.9,
      'padding': 'same',  # 'torch': torchvision's padding of the strided convs (its public weights)
      'frozen_batchnorm': False,  # True: BatchNorm uses its running statistics in training too
      'remat': False,  # True: recompute each block's activations in the backward pass
    }
  )
  c.optim.weight_decay = 5e-4
  # XLA:CPU's own convolutions instead of YNNPACK's: 1.21x on this step (benchmarks/README.md,
  # quiet rerun; 1.23x in the first run);
  # no effect on GPU/TPU.
  c.cpu_convolutions = 'xla'

  if preset == 'smoke':
    config_lib.smoke(c)
    c.model.stage_sizes = (1, 1)
    c.model.width = 8
  elif preset == 'cifar10':  # ResNet-18, 200 epochs of SGD + momentum, cosine
    c.model.stage_sizes = (2, 2, 2, 2)
    c.model.width = 64
    c.data.name = 'cifar10'
    c.data.augment = 'crop_flip'
    c.data.shift = 4
    c.data.scale = 'minus_one_one'
    c.optim.name = 'momentum'
    c.optim.lr = 0.1
    c.optim.schedule = 'warmup_cosine'
    c.optim.warmup_frac = 0.025
    c.optim.weight_decay = 5e-4
    c.loss.label_smoothing = 0.0
    c.train.steps = 390 * 200
    c.train.eval_every = 3900
    c.train.ckpt_every = 3900
  elif preset == 'imagenet':  # ResNet-50, 90 epochs, batch 1024, lr 0.4, 5 warm-up epochs
    c.model.num_classes = 1000
    c.model.stage_sizes = (3, 4, 6, 3)
    c.model.block = 'bottleneck'
    c.model.width = 64
    c.model.stem = 'imagenet'
    c.data.name = 'imagenet2012'
    c.data.eval_split = 'validation'
    c.data.image_size = 224
    c.data.augment = 'inception_crop'
    c.data.scale = 'imagenet'
    c.data.batch_size = 1024
    c.data.eval_batch_size = 1000
    c.data.cache = False
    # Decoding and the inception crop run on the host, in one grain worker process per core, one
    # thread each (docs/performance.md, "ImageNet-format input pipeline").
    c.data.workers = -1
    c.data.read_threads = 1
    c.optim.name = 'momentum'
    c.optim.lr = 0.4
    c.optim.schedule = 'warmup_cosine'
    c.optim.warmup_frac = 5 / 90
    c.optim.weight_decay = 5e-5  # on every parameter; 1e-4 on kernels only is the usual equivalent
    c.loss.label_smoothing = 0.1
    c.train.steps = 1251 * 90
    c.train.eval_every = 1251 * 5
    c.train.ckpt_every = 1251
  elif preset:
    raise ValueError(f'configs/resnet.py has presets smoke, cifar10 and imagenet, not {preset!r}')
  return c
