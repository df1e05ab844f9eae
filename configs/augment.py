"""Synthetic-data augmentation: the CNN on 1,000 real digits, with and without generated ones.

  python run.py --config configs/cgan.py --workdir runs/cgan_1k --config.data.per_class=100
  python run.py --config configs/cgan.py --workdir runs/cgan_1k --config.data.per_class=100 \
      --mode sample --config.sample.n=10000
  python run.py --config configs/augment.py:real --workdir runs/augment_real
  python run.py --config configs/augment.py:synthetic --workdir runs/augment_synthetic \
      --config.data.synthetic.path=runs/cgan_1k/samples/step_4000.npz
  python run.py --config configs/cas.py --workdir runs/cas_cgan_1k \
      --config.data.synthetic.path=runs/cgan_1k/samples/step_4000.npz
  python run.py --config configs/augment.py:finetune --workdir runs/augment_finetune \
      --config.init_from.path=runs/cas_cgan_1k

All train configs/cnn.py for the same number of steps on the first 100 train images of
each digit (1,000 real images) and test on the full real test split. `synthetic` adds
the conditional generator's labelled samples (trained on those same 1,000 images) to
them, with the real images repeated so that they are still half of what the classifier
sees; `finetune` starts instead from the CNN trained on the 10,000 generated digits
alone (configs/cas.py, whose accuracy is the generator's CAS) and trains it on the
1,000 real ones: the synthetic data as pretraining.
"""

import os

from jaxvision import config as config_lib


def get_config(preset: str = 'real'):
  if preset not in ('real', 'synthetic', 'finetune', 'smoke'):
    raise ValueError(
      f'configs/augment.py has presets real, synthetic, finetune and smoke, not {preset!r}'
    )
  c = config_lib.from_file(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'cnn.py'),
    'smoke' if preset == 'smoke' else '',
  )
  # The im2col convolutions its results were measured with (configs/cnn.py's default since is
  # XLA's own: faster, other last digits).
  c.model.conv_impl = 'im2col'
  c.cpu_convolutions = 'ynnpack'
  c.data.per_class = 100  # 1,000 real training images
  if preset != 'smoke':
    c.train.steps = 800
    c.train.eval_every = 400
    c.train.ckpt_every = 400
  if preset == 'finetune':
    c.init_from.path = config_lib.required()  # the workdir of a configs/cas.py run on the samples
  if preset == 'synthetic':
    c.data.synthetic.path = config_lib.required()  # the .npz of --mode sample
    c.data.synthetic.mode = 'add'
    c.data.synthetic.real_fraction = (
      0.5  # 1,000 real x 10 + 10,000 generated: half of every batch real
    )
  return c
