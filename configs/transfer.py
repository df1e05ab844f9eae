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
"""

import os

from jaxvision import config as config_lib


def get_config(preset: str = 'pretrain'):
  presets = ('pretrain', 'finetune', 'finetune_frozen', 'scratch', 'smoke')
  if preset not in presets:
    raise ValueError(f'configs/transfer.py has presets {", ".join(presets)}, not {preset!r}')
  c = config_lib.from_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cnn.py'),
    'smoke' if preset == 'smoke' else '',
  )
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
