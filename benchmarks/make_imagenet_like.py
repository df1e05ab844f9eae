"""Writes an ImageNet-like dataset in TFDS `imagenet2012`'s own format, without TensorFlow.

  python benchmarks/make_imagenet_like.py --data_dir /tmp/imagenet_like    # 20,000 + 1,000 JPEGs
  python benchmarks/make_imagenet_like.py --data_dir /tmp/imagenet_like --n 64 --n_val 16
  python run.py --config configs/resnet.py:imagenet --config.data.tfds_dir=/tmp/imagenet_like

The real ImageNet cannot be had here, so the input pipeline is measured on stand-ins of the same
format and cost: JPEGs of ImageNet's sizes (width uniform in [300, 500], height in [260, 440],
about 400x350 on average) and file sizes (about 100 KB at quality 95: a smooth random field in
four octaves, mostly luminance, plus pixel noise; each class its own tint, so a model can learn
something). Train image k has label k % 1000 and the name `<synset>_<k>.JPEG`; validation image k
is `ILSVRC2012_val_<k+1:08d>.JPEG` with that image's real label from TFDS's
validation_labels.txt. Image k of a split is a function of (--seed, split, k) alone.

How the format matches: the examples are written by TFDS's own `imagenet2012` builder class
(`tensorflow_datasets.datasets.imagenet2012`), subclassed only to take its examples from this
generator instead of ILSVRC2012_img_{train,val}.tar, whose reading needs TensorFlow's gfile. So
the files are what `tfds build imagenet2012 --file_format array_record` writes:
`DATA_DIR/imagenet2012/5.1.0/` holds dataset_info.json, features.json, label.labels.txt and
`imagenet2012-{train,validation}.array_record-NNNNN-of-NNNNN`; the features are `image` (a
`tfds.features.Image(encoding_format='jpeg')`: the JPEG file's bytes, stored as they are),
`label` (`ClassLabel` over the 1,000 synsets of TFDS's labels.txt) and `file_name` (`Text`);
records are in TFDS's key-hashed order (TFDS spills a split of over 1 GB to disk through
TensorFlow's gfile while it shuffles; without TensorFlow this script has it keep the whole split
in memory instead, about 100 KB per image). `tfds.builder('imagenet2012', data_dir=DATA_DIR,
file_format='array_record')` then finds it prepared. Decoding the images needs no TensorFlow
either: TFDS's data source decodes Image features with PIL when OpenCV is absent, and jaxvision
reads them undecoded and decodes them with PIL itself (jaxvision/data/images.py).
"""

import argparse
import io
import multiprocessing
import os
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import shuffle
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as imagenet

QUALITY = 95
NOISE = 16.0  # pixel noise (std, in 0-255 units); with QUALITY, about 100 KB per JPEG
OCTAVES = ((3, 45.0), (12, 28.0), (48, 16.0), (160, 10.0))  # (cells across, luminance amplitude)
SPLITS = {'train': 0, 'validation': 1}


def _lines(path: str) -> list[str]:
  with open(os.fspath(tfds.core.tfds_path(path))) as f:
    return f.read().strip().splitlines()


SYNSETS = _lines('datasets/imagenet2012/labels.txt')  # the 1,000 class names, in label order
VAL_LABELS = _lines('datasets/imagenet2012/validation_labels.txt')  # synset of val image k + 1


def _field(rng, h: int, w: int, cells: int, channels: int) -> np.ndarray:
  """A smooth random field f32[h, w, channels]: Gaussian cells, upsampled bicubically."""
  small = rng.normal(0.0, 1.0, (channels, max(2, cells * h // w), cells)).astype(np.float32)
  up = [Image.fromarray(c, 'F').resize((w, h), Image.BICUBIC) for c in small]
  return np.stack([np.asarray(u) for u in up], -1)


def jpeg(seed: int, split: str, k: int, label: int, scale: float = 1.0) -> bytes:
  """Image k of `split`: an ImageNet-sized, ImageNet-weight JPEG.

  Args:
    seed: the dataset's seed.
    split: 'train' or 'validation'.
    k: the image's index in its split.
    label: its class, which sets its tint.
    scale: its width and height times this (benchmarks: larger photos).

  Returns:
    The JPEG file's bytes.
  """
  rng = np.random.default_rng([seed, SPLITS[split], k])
  w, h = round(scale * int(rng.integers(300, 501))), round(scale * int(rng.integers(260, 441)))
  tint = np.random.default_rng([seed, 2, label]).uniform(-40.0, 40.0, 3).astype(np.float32)
  image = 128.0 + tint + sum(amp * _field(rng, h, w, cells, 1) for cells, amp in OCTAVES)
  image = image + 12.0 * _field(rng, h, w, 6, 3)  # some colour
  image = image + rng.normal(0.0, NOISE, (h, w, 3)).astype(np.float32)
  out = io.BytesIO()
  Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(out, 'JPEG', quality=QUALITY)
  return out.getvalue()


def example(args: tuple) -> tuple[str, dict]:
  """(key, example) of image k of a split, as the imagenet2012 builder yields them.

  Args:
    args: (seed, split, k).

  Returns:
    The file name (the key) and {'file_name', 'image': JPEG bytes, 'label': synset}.
  """
  seed, split, k = args
  if split == 'train':
    synset = SYNSETS[k % len(SYNSETS)]
    name = f'{synset}_{k}.JPEG'
  else:
    synset = VAL_LABELS[k]
    name = f'ILSVRC2012_val_{k + 1:08d}.JPEG'
  image = jpeg(seed, split, k, SYNSETS.index(synset))
  return name, {'file_name': name, 'image': image, 'label': synset}


with tfds.core.registered.skip_registration():  # another class must not take the name

  class ImagenetLike(imagenet.Builder):
    """TFDS's imagenet2012 builder with generated examples in place of the ILSVRC tar files."""

    name = 'imagenet2012'
    sizes = {'train': 20_000, 'validation': 1_000}
    seed = 0
    processes = 1

    @classmethod
    def _get_pkg_dir_path(cls):
      return imagenet.Builder._get_pkg_dir_path()  # imagenet2012's own metadata (README, ...)

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing is downloaded
      return {split: self._generate(split, n) for split, n in self.sizes.items() if n}

    def _generate(self, split: str, n: int):
      jobs = [(self.seed, split, k) for k in range(n)]
      if self.processes <= 1:
        yield from map(example, jobs)
        return
      with multiprocessing.get_context('spawn').Pool(self.processes) as pool:
        yield from pool.imap(example, jobs, chunksize=16)


def make(data_dir: str, n: int, n_val: int, seed: int = 0, processes: int = 1):
  """Writes the dataset into `data_dir` (TFDS's layout) unless it is there already.

  Args:
    data_dir: the TFDS data dir (what --config.data.tfds_dir takes).
    n: train images.
    n_val: validation images (at most 50,000, the names that have labels).
    seed: the seed of the images.
    processes: processes that encode the JPEGs.

  Returns:
    The prepared `tfds.core.DatasetBuilder`, as jaxvision's pipeline finds it.

  Raises:
    ValueError: n < 1, or n_val outside [0, 50000].
  """
  if n < 1 or not 0 <= n_val <= len(VAL_LABELS):
    raise ValueError(f'--n={n} must be >= 1 and --n_val={n_val} in [0, {len(VAL_LABELS)}]')
  # TFDS's shuffler writes splits of over MAX_MEM_BUFFER_SIZE to disk with tf.io.gfile.
  shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, 1 << 40)
  builder = ImagenetLike(data_dir=data_dir, file_format='array_record')
  builder.sizes = {'train': n, 'validation': n_val}
  builder.seed, builder.processes = seed, processes
  builder.download_and_prepare()
  return tfds.builder('imagenet2012', data_dir=data_dir, file_format='array_record')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--data_dir', required=True, help='TFDS data dir to write into')
  parser.add_argument('--n', type=int, default=20_000, help='train images')
  parser.add_argument('--n_val', type=int, default=1_000, help='validation images')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--processes', type=int, default=os.cpu_count(), help='JPEG encoders')
  args = parser.parse_args()
  start = time.perf_counter()
  b = make(
    os.path.abspath(os.path.expanduser(args.data_dir)),
    args.n,
    args.n_val,
    args.seed,
    args.processes,
  )
  splits = {s: i.num_examples for s, i in b.info.splits.items()}
  size = sum(i.num_bytes for i in b.info.splits.values())
  print(f'{b.data_dir}: {splits}, {size / 1e9:.2f} GB, {time.perf_counter() - start:.0f} s')


if __name__ == '__main__':
  main()
