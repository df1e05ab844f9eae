"""Generated images as training data: `data.synthetic.path` names an .npz written by
`python run.py --config <generator> --mode sample` (uint8 `images`, int `labels`).

  data.synthetic.mode='add'   the real training split + the generated examples (synthetic-data
                              augmentation); data.synthetic.real_fraction=f repeats the real split r
                              times so that real examples make up about f of the mixture
                              (r = round(f/(1-f) * n_fake / n_real) >= 1)
  data.synthetic.mode='only'  the generated examples alone (classification accuracy score, CAS)

The eval split is never touched: it stays the real test split.
"""

import dataclasses
import hashlib

import numpy as np
from etils import epath

from jaxvision import paths, writers
from jaxvision.errors import DataError

MODES = ('add', 'only')


def load(path: str, image_shape, num_classes: int) -> dict:
  """The generated examples of an .npz from --mode sample, checked against the dataset.

  Args:
    path: the .npz (uint8 `images`, int `labels`), local or gs://.
    image_shape: the real split's image shape.
    num_classes: the real split's number of classes.

  Returns:
    {'image': uint8[n, *image_shape], 'label': int64[n]}.

  Raises:
    DataError: the file cannot be read, has no labels (an unconditional generator's), holds
      images of another dtype or shape, or labels outside [0, num_classes).
  """
  try:
    arrays = writers.load_npz(path)
  except (OSError, ValueError) as e:
    raise DataError(
      f'data.synthetic.path={path!r} cannot be read ({type(e).__name__}); write it with '
      f'`python run.py --config configs/cgan.py --workdir W --mode sample`'
    ) from e
  if 'labels' not in arrays:
    raise DataError(
      f'{path} has no labels: synthetic training data must come from a conditional '
      f'generator (cgan, cvae)'
    )
  images, labels = arrays['images'], arrays['labels'].astype(np.int64)
  if images.dtype != np.uint8 or tuple(images.shape[1:]) != tuple(image_shape):
    raise DataError(
      f'{path} holds {images.dtype} images of {images.shape[1:]}, the dataset has uint8 '
      f'{tuple(image_shape)}; sample from a generator trained on this dataset'
    )
  if labels.min() < 0 or labels.max() >= num_classes:
    raise DataError(f'{path} has labels outside [0, {num_classes})')
  return {'image': images, 'label': labels}


def mix(split, synthetic_config):
  """The train `Split` with the generated examples added (or instead).

  Args:
    split: the real train split.
    synthetic_config: config.data.synthetic (path, mode, real_fraction).

  Returns:
    The mixed split ('add': the real examples, repeated per `real_repeats`, then the generated
    ones; 'only': the generated ones); its fingerprint names the mode and the file's sha256.

  Raises:
    DataError: an unknown mode, or a file that `load` refuses.
  """
  if synthetic_config.mode not in MODES:
    raise DataError(f'data.synthetic.mode={synthetic_config.mode!r}; use one of {", ".join(MODES)}')
  fake = load(synthetic_config.path, split.image_shape, split.num_classes)
  digest = hashlib.sha256(epath.Path(paths.resolve(synthetic_config.path)).read_bytes())
  digest = digest.hexdigest()[:16]
  n = len(fake['label'])
  if synthetic_config.mode == 'only':
    read = lambda idx: {k: v[idx] for k, v in fake.items()}
    size = n
    mode = 'only'
  else:
    repeat = real_repeats(synthetic_config.real_fraction, split.size, n)
    real = split.read(np.tile(np.arange(split.size), repeat))
    both = {k: np.concatenate([real[k], fake[k].astype(real[k].dtype)]) for k in ('image', 'label')}
    read = lambda idx: {k: v[idx] for k, v in both.items()}
    size = repeat * split.size + n
    mode = 'add' if repeat == 1 else f'add/real_x{repeat}'
  return dataclasses.replace(
    split,
    size=size,
    read=read,
    fingerprint=f'{split.fingerprint}+synthetic[{mode}]/n={n}/sha256={digest}',
  )


def real_repeats(real_fraction: float, n_real: int, n_fake: int) -> int:
  """How many copies of the real split give real examples about `real_fraction` of the mixture.

  Args:
    real_fraction: the wanted share of real examples, in [0, 1); 0: one copy.
    n_real: real examples.
    n_fake: generated examples.

  Returns:
    round(f/(1-f) * n_fake / n_real), at least 1.
  """
  if real_fraction <= 0:
    return 1
  return max(1, round(real_fraction / (1.0 - real_fraction) * n_fake / n_real))
