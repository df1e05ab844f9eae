"""Transfer learning on digits: pretrain the CNN on 0-4, fine-tune on 5-9 from few labels.

  python run.py --config configs/transfer.py:pretrain --workdir runs/pretrain_0to4
  python run.py --config configs/transfer.py:finetune --workdir runs/finetune_5to9 \
      --config.init_from.path=runs/pretrain_0to4
  python run.py --config configs/transfer.py:finetune_frozen --workdir runs/frozen_5to9 \
      --config.init_from.path=runs/pretrain_0to4
  python run.py --config configs/transfer.py:scratch --workdir runs/scratch_5to9

The few-label presets train on the first 100 train images of each of the digits 5-9
(500 labels; --config.data.per_class changes it) and test on all test images of 5-9.
The head (Dense_1) is re-initialised: its pretrained rows for 5-9 were only ever
pushed down. `finetune_frozen` also freezes the conv layers and their BatchNorms.

From public weights (jaxvision/pretrained): torchvision's ImageNet ResNet-18 fine-tuned on
the digits (32 labelled images of each, resized to 32x32; its conv1 summed over the RGB
channels for the grey images, its 1000-class head replaced by a fresh 10-class one):

  python run.py --config configs/transfer.py:resnet18 --workdir runs/resnet18_digits \
      --config.init_from.path=resnet18.pth
  python run.py --config configs/transfer.py:resnet18_frozen --workdir runs/resnet18_frozen \
      --config.init_from.path=resnet18.pth

where resnet18.pth is written once (with internet) by
torch.save(torchvision.models.resnet18(weights='DEFAULT').state_dict(), 'resnet18.pth').
`resnet18_frozen` trains the head alone (a linear probe of the frozen backbone, whose
BatchNorms normalise with the file's running statistics in training too).
"""

import os

from jaxvision import config as config_lib


def get_config(preset: str = 'pretrain'):
  presets = (
    'pretrain',
    'finetune',
    'finetune_frozen',
    'scratch',
    'smoke',
    'resnet18',
    'resnet18_frozen',
  )
  if preset not in presets:
    raise ValueError(f'configs/transfer.py has presets {", ".join(presets)}, not {preset!r}')
  if preset.startswith('resnet18'):
    return _resnet18(frozen=preset == 'resnet18_frozen')
  c = config_lib.from_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cnn.py'),
    'smoke' if preset == 'smoke' else '',
  )
  # The im2col convolutions its results were measured with (configs/cnn.py's default since is
  # XLA's own: faster, other last digits).
  c.model.conv_impl = 'im2col'
  c.cpu_convolutions = 'ynnpack'
  if preset in ('pretrain', 'smoke'):
    c.data.classes = (0, 1, 2, 3, 4)
    if preset == 'pretrain':
      c.train.steps = 600  # ~19 epochs of the ~4,000 train images of 0-4
      c.train.eval_every = 200
      c.train.ckpt_every = 200
    return c
  c.data.classes = (5, 6, 7, 8, 9)
  c.data.per_class = 100
  c.data.batch_size = 50
  c.optim.lr = 1e-3
  c.train.steps = 300  # 30 epochs of the 500 labelled images
  c.train.log_every = 25
  c.train.eval_every = 100
  c.train.ckpt_every = 100
  if preset in ('finetune', 'finetune_frozen'):
    c.init_from.path = ''  # required: the pretrain workdir
    c.init_from.exclude = ('Dense_1/.*',)
  if preset == 'finetune_frozen':
    c.freeze = ('Conv_.*', 'BatchNorm_[01]/.*')
  return c


def _resnet18(frozen: bool):
  """torchvision's ResNet-18 (its weights file in init_from.path) fine-tuned on the digits."""
  c = config_lib.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'resnet.py'))
  c.model.stage_sizes = (2, 2, 2, 2)
  c.model.width = 64
  c.model.stem = 'imagenet'
  c.model.padding = 'torch'  # torchvision's symmetric padding of the strided 3x3 convs
  c.data.image_size = 32  # 28x28 digits resized (bicubic); 64 costs ~4x the compute per step
  c.data.scale = 'minus_one_one'  # about the range of ImageNet-standardised grey images
  c.data.per_class = 32  # 320 labelled images
  c.data.batch_size = 32
  c.optim.name = 'adamw'
  c.optim.lr = 3e-3 if frozen else 1e-3
  c.optim.schedule = 'warmup_cosine'
  c.optim.warmup_frac = 0.1
  c.optim.weight_decay = 1e-4
  c.train.steps = 150  # 15 epochs of the 320 images
  c.train.log_every = 25
  c.train.eval_every = 75
  c.train.ckpt_every = 75
  c.init_from.path = config_lib.required()  # torchvision's resnet18 state dict (.pth)
  c.init_from.exclude = ('head/.*',)  # 1000 ImageNet classes: a fresh 10-class head
  if frozen:
    c.freeze = ('conv_stem/.*', 'norm_stem/.*', 'stage.*')  # everything but the head
    c.model.frozen_batchnorm = True  # the backbone's features in training are those of eval
  return c
