"""Synthetic-data augmentation: the CNN on 1,000 real digits, with and without generated ones.

  python run.py --config configs/cgan.py --workdir runs/cgan_1k --config.data.per_class=100
  python run.py --config configs/cgan.py --workdir runs/cgan_1k --config.data.per_class=100 \
      --mode sample --config.sample.n=10000
  python run.py --config configs/augment.py:real --workdir runs/augment_real
  python run.py --config configs/augment.py:synthetic --workdir runs/augment_synthetic \
      --config.data.synthetic.path=runs/cgan_1k/samples/step_4000.npz

Both train configs/cnn.py for the same number of steps on the first 100 train images of
each digit (1,000 real images) and test on the full real test split; `synthetic` adds
the conditional generator's labelled samples (trained on those same 1,000 images), with
the real images repeated so that they are still half of what the classifier sees.
"""
import os

from jaxvision import config as config_lib


def get_config(preset: str = 'real'):
  if preset not in ('real', 'synthetic', 'smoke'):
    raise ValueError(f'configs/augment.py has presets real, synthetic and smoke, not {preset!r}')
  c = config_lib.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cnn.py'),
                           'smoke' if preset == 'smoke' else '')
  c.data.per_class = 100  # 1,000 real training images
  if preset != 'smoke':
    c.train.steps = 800
    c.train.eval_every = 400
    c.train.ckpt_every = 400
  if preset == 'synthetic':
    c.data.synthetic.path = ''  # required: the .npz of --mode sample
    c.data.synthetic.mode = 'add'
    c.data.synthetic.real_fraction = 0.5  # 1,000 real x 10 + 10,000 generated: half of every batch real
  return c
