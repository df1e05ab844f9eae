"""TFDS builder `mnist10k`: the real MNIST test split, shipped with jaxvision.

The 10,000 images of the official MNIST test split (LeCun, Cortes, Burges;
CC BY-SA 3.0, see `mnist10k_files/README.md`) are the only real digits these
machines can reach offline. The project-wide split is fixed: image `i` goes to
`test` when `i % 5 == 0` (2,000 images) and to `train` otherwise (8,000).
The builder prepares itself from the files in the package, without network.
"""

import gzip
import hashlib
from importlib import resources

import numpy as np
import tensorflow_datasets as tfds

FILES = {  # name -> md5 of the shipped, gzip-compressed IDX file
  'images': ('t10k-images-idx3-ubyte.gz', '9fb629c4189551a2d022fa330f9573f3'),
  'labels': ('t10k-labels-idx1-ubyte.gz', 'ec29112dd5afa0611ce80d1b7f02629c'),
}
TEST_EVERY = 5  # index % 5 == 0 -> test


def _read_file(name: str) -> bytes:
  """The decompressed bytes of a shipped IDX file, after its md5 check."""
  fname, md5 = FILES[name]
  raw = resources.files('jaxvision.data').joinpath('mnist10k_files', fname).read_bytes()
  if hashlib.md5(raw).hexdigest() != md5:
    raise ValueError(
      f'{fname}: md5 mismatch; reinstall jaxvision (the shipped MNIST file is damaged)'
    )
  return gzip.decompress(raw)


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
  """All 10,000 images and labels of the shipped files, in file order.

  Returns:
    (images uint8[N, 28, 28, 1], labels uint8[N]).

  Raises:
    ValueError: a shipped file is damaged (md5 or IDX header).
  """
  img, lab = _read_file('images'), _read_file('labels')
  if int.from_bytes(img[:4], 'big') != 2051 or int.from_bytes(lab[:4], 'big') != 2049:
    raise ValueError('MNIST IDX magic numbers are wrong; reinstall jaxvision')
  images = np.frombuffer(img, np.uint8, offset=16).reshape(-1, 28, 28, 1)
  labels = np.frombuffer(lab, np.uint8, offset=8)
  return images, labels


def split_indices(split: str, n: int = 10_000) -> np.ndarray:
  """The file indices of a split: index % 5 == 0 is test, the rest train.

  Args:
    split: 'train' or 'test'.
    n: the number of images in the files.

  Returns:
    int64 indices, ascending.

  Raises:
    ValueError: `split` is neither 'train' nor 'test'.
  """
  idx = np.arange(n)
  if split == 'test':
    return idx[idx % TEST_EVERY == 0]
  if split == 'train':
    return idx[idx % TEST_EVERY != 0]
  raise ValueError(f'mnist10k has splits train and test, not {split!r}')


class Mnist10k(tfds.core.GeneratorBasedBuilder):
  """Real MNIST test split (10k), split 8,000 train / 2,000 test by index % 5."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Offline MNIST test split, index % 5 == 0 is test.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
          'label': tfds.features.ClassLabel(num_classes=10),
          'index': tfds.features.Scalar(dtype=np.int32),
        }
      ),
      supervised_keys=('image', 'label'),
      homepage='http://yann.lecun.com/exdb/mnist/',
      citation='LeCun, Cortes, Burges. The MNIST database of handwritten digits.',
      license='CC BY-SA 3.0',
      disable_shuffling=True,  # keep file order: index i is the i-th image of the split
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything ships with the package
    return {split: self._generate_examples(split) for split in ('train', 'test')}

  def _generate_examples(self, split):
    images, labels = load_arrays()
    for i in split_indices(split, len(labels)):
      yield int(i), {'image': images[i], 'label': int(labels[i]), 'index': int(i)}
