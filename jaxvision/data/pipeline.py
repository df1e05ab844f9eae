"""Deterministic input pipeline: TFDS data source -> grain -> numpy batches.

The order of training examples is a function of (seed, step) alone: grain
shuffles the indices of the split with the seed, a new permutation each
epoch, and batch `s` is elements `s*B ... (s+1)*B-1` of that stream. Each
process reads only its own rows of every global batch (`jax.process_index()`).
The iterator's position is saved with every checkpoint (grain state) and
restored on resume. Random augmentation is not done here: it runs inside the
jitted train step with the state's key (see `jaxvision/data/augment.py`).
"""

import hashlib
import os

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from PIL import Image

from jaxvision import paths
from jaxvision.data import clusters, mnist10k, sequences, subset, synthetic, text
from jaxvision.data.split import Split
from jaxvision.errors import DataError

OFFLINE = 'mnist10k'
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _data_dir(data_config) -> str | None:
  """data.tfds_dir resolved (`paths.resolve`), or None for TFDS's default; DataError for a URL:
  TFDS finds a dataset there through etils.epath, but array_record opens its files with its own
  local file I/O (without TensorFlow: measured, preparing fails and reading a copied dataset
  hangs)."""
  data_dir = paths.resolve(data_config.tfds_dir)
  if paths.is_remote(data_dir):
    raise DataError(
      f'data.tfds_dir={data_config.tfds_dir!r}: TFDS array_record files are read with local '
      f'file I/O; copy the prepared dataset to a local directory (or mount the bucket, e.g. '
      f'with gcsfuse) and give that path'
    )
  return data_dir or None


def builder(data_config):
  """The TFDS builder for `data.name`, prepared.

  mnist10k prepares itself from the package's files; another dataset that is not prepared is
  downloaded only with data.download.

  Args:
    data_config: config.data (name, tfds_dir, download).

  Returns:
    The prepared `tfds.core.DatasetBuilder` (array_record files).

  Raises:
    DataError: (with the fix) `data.name` is not a TFDS dataset, or it is not prepared and
      data.download is off, or it could not be downloaded and prepared.
  """
  name = data_config.name
  if name not in tfds.list_builders(with_community_datasets=False):
    raise DataError(
      f'data.name={name!r} is not a TFDS dataset; '
      f'use data.name={OFFLINE} (offline, ships with jaxvision) or a TFDS name'
    )
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS warns about every missing folder
  try:
    b = tfds.builder(name, data_dir=_data_dir(data_config), file_format='array_record')
    prepared = b.is_prepared()
  finally:
    absl_logging.set_verbosity(verbosity)
  if prepared:
    return b
  if name != OFFLINE and not data_config.download:
    raise DataError(
      f'dataset {name!r} is not prepared in {b.data_dir_root}: prepare it with '
      f'`tfds build {name} --data_dir {b.data_dir_root} --file_format array_record` '
      f'(manual files go in {_manual_dir(b)}), or pass --config.data.download=True, '
      f'or use --config.data.name={OFFLINE} (offline)'
    )
  try:
    b.download_and_prepare(file_format='array_record')
  except Exception as e:  # network, missing TensorFlow, manual data ... all end the same way
    reason = f'{type(e).__name__}: {(str(e).splitlines() or [""])[0][:200]}'
    raise DataError(
      f'dataset {name!r} is not prepared in {b.data_dir_root} and could not be '
      f'downloaded ({reason}); put its files in {_manual_dir(b)} and run '
      f'`tfds build {name} --manual_dir {_manual_dir(b)}`, '
      f'or use --config.data.name={OFFLINE} (offline)'
    ) from e
  return b


def _manual_dir(b) -> str:
  """Where TFDS looks for a dataset's manually downloaded files."""
  return os.path.join(b.data_dir_root, 'downloads', 'manual')


def _fingerprint(b, split: str) -> str:
  """A split's identity for run.json: name, version, split, size and a hash of its files."""
  if b.name == OFFLINE:
    files = ','.join(md5 for _, md5 in mnist10k.FILES.values())
    return f'{OFFLINE}/{b.version}/{split}/n={b.info.splits[split].num_examples}/md5={files}'
  if split not in b.info.splits:  # a slice, or a mocked dataset
    return f'{b.name}/{b.version}/{split}'
  info = b.info.splits[split]
  files = hashlib.sha256(str(info.file_instructions).encode()).hexdigest()[:16]
  return f'{b.name}/{b.version}/{split}/n={info.num_examples}/files={files}'


def _select(example: dict) -> dict:
  return {'image': example['image'], 'label': example['label']}


def _resizer(data_config, split: str):
  """Fixed-size images from a dataset of any sizes (`data.image_size` > 0), else None.

  Shorter side to image_size, then a centred image_size square. With
  data.augment='inception_crop' (ImageNet-style), the shorter side goes to
  image_size * 8/7 (256 for 224) instead; training keeps that whole square (the
  train step takes its random crop from it, see augment.inception_crop) and
  evaluation crops its centre."""
  size = data_config.image_size
  if not size:
    return None
  inception = data_config.augment == 'inception_crop'
  short = round(size * 8 / 7) if inception else size
  crop = short if inception and split == data_config.train_split else size
  return lambda example: {**example, 'image': resize_center_crop(example['image'], short, crop)}


def resize_center_crop(image: np.ndarray, short: int, crop: int) -> np.ndarray:
  """Resizes the shorter side to `short` (bicubic), then takes the centred crop x crop square.

  Args:
    image: uint8[H, W, C], C 1 or 3.
    short: the shorter side after resizing.
    crop: the side of the centred square (<= short).

  Returns:
    uint8[crop, crop, C].
  """
  h, w = image.shape[:2]
  scale = short / min(h, w)
  size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
  squeeze = image.shape[-1] == 1
  img = Image.fromarray(image[..., 0] if squeeze else image).resize(size, Image.BICUBIC)
  top, left = (size[1] - crop) // 2, (size[0] - crop) // 2
  out = np.asarray(img)[top : top + crop, left : left + crop]
  return out[..., None] if squeeze else out


def load_split(data_config, split: str, relabel: bool = True) -> Split:
  """The split as the loop reads it.

  Images are resized by data.image_size, restricted by data.classes / data.per_class, relabelled
  by data.clusters and (train split) mixed with data.synthetic; text datasets are tokenised and
  digit_sequences built on mnist10k.

  Args:
    data_config: config.data.
    split: a TFDS split name; slices such as 'train[:90%]' work.
    relabel: False stops before data.clusters' pseudo-labels and data.synthetic's samples (the
      train images the clusters are fit on).

  Returns:
    The `Split`.

  Raises:
    DataError: the dataset cannot be had (see `builder`), has no such split, lacks image/label
      (or text/label) features, has images of no fixed size without data.image_size, or a
      subset, clustering or synthetic file that cannot work.
  """
  if data_config.name == sequences.NAME:  # derived from mnist10k, see data/sequences.py
    return sequences.load_split(data_config, split, load_split)
  b = builder(data_config)
  if b.info.splits and split.split('[')[0] not in b.info.splits:  # 'train[:90%]' slices work
    raise DataError(
      f'{data_config.name} has no split {split!r}; it has: {", ".join(b.info.splits)}'
    )
  features = b.info.features
  if 'text' in features and 'label' in features:
    return text.load_split(data_config, split, b)
  if 'image' not in features or 'label' not in features:
    raise DataError(
      f'{data_config.name} has no image/label (or text/label) features; classification needs both'
    )
  source = b.as_data_source(split)
  size = len(source)
  resize = _resizer(data_config, split)
  select = _select if resize is None else lambda example: resize(_select(example))
  image_shape = tuple(features['image'].shape)
  if resize is not None:
    crop = resize(_select(source[0]))['image'].shape[0]
    image_shape = (crop, crop, image_shape[-1])
  elif None in image_shape:
    raise DataError(
      f'{data_config.name} images have no fixed size {image_shape}; '
      f'set --config.data.image_size (e.g. 224) to resize them'
    )
  if data_config.cache:  # read the whole split once; then a batch is a numpy gather
    arrays = _read_whole(b, split, source, select, data_config)
    read = lambda idx: {k: v[idx] for k, v in arrays.items()}
  else:
    read = lambda idx: _stack([select(source[int(i)]) for i in idx])
  out = Split(
    data_config.name,
    split,
    size,
    image_shape,
    features['label'].num_classes,
    _fingerprint(b, split),
    read,
  )
  out = subset.select(out, data_config, is_train=split == data_config.train_split)
  if not relabel:
    return out
  out = clusters.relabel(
    out,
    data_config,
    split == data_config.train_split,
    lambda: load_split(data_config, data_config.train_split, relabel=False),
  )
  if data_config.synthetic.path and split == data_config.train_split:
    out = synthetic.mix(out, data_config.synthetic)
  return out


_OFFLINE_SPLITS = {}  # the shipped mnist10k's decoded splits, read once per process


def _read_whole(b, split: str, source, select, data_config) -> dict:
  """All examples of a split as stacked arrays. mnist10k's are kept for the process (read-only):
  its content is fixed by the shipped files, and decoding its 10,000 records takes ~2 s, which a
  process that runs several experiments (a sweep, a notebook, the tests) would pay each time."""
  decode = lambda: _stack([select(source[i]) for i in range(len(source))])
  if b.name != OFFLINE:
    return decode()
  key = (
    _fingerprint(b, split),
    str(b.data_dir),
    data_config.image_size,
    data_config.augment == 'inception_crop',
    split == data_config.train_split,
  )
  if key not in _OFFLINE_SPLITS:
    arrays = decode()
    for v in arrays.values():
      v.setflags(write=False)
    _OFFLINE_SPLITS[key] = arrays
  return _OFFLINE_SPLITS[key]


def _stack(examples: list[dict]) -> dict:
  """[{key: array}] -> {key: stacked array}."""
  return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


def preprocess(batch: dict, scale: str) -> dict:
  """A read batch as the steps take it.

  Args:
    batch: {'image': uint8[k, ...] or 'tokens': int[k, L], 'label': int[k]}.
    scale: data.scale for images: 'zero_one' ([0, 1]), 'minus_one_one' ([-1, 1]) or 'imagenet'
      (standardised per channel with the ImageNet statistics).

  Returns:
    {'image': f32[k, ...] or 'tokens': i32[k, L], 'label': i32[k]}.
  """
  if 'tokens' in batch:
    return {'tokens': batch['tokens'].astype(np.int32), 'label': batch['label'].astype(np.int32)}
  image = batch['image'].astype(np.float32) / 255.0
  if scale == 'minus_one_one':
    image = image * 2.0 - 1.0
  elif scale == 'imagenet':  # per-channel standardisation with the ImageNet train statistics
    image = (image - IMAGENET_MEAN) / IMAGENET_STD
  return {'image': image, 'label': batch['label'].astype(np.int32)}


def _per_process(global_batch: int) -> int:
  """This process's share of a global batch; DataError unless the processes divide it."""
  n = jax.process_count()
  if global_batch % n:
    raise DataError(f'data.batch_size={global_batch} must be divisible by the {n} processes')
  return global_batch // n


def train_dataset(config, split: Split) -> grain.IterDataset:
  """Infinite, reshuffled-every-epoch stream of this process's training batches.

  Args:
    config: the experiment config (seed, data.batch_size, data.scale, data.read_threads).
    split: the train split.

  Returns:
    A grain dataset of `preprocess`ed batches, data.batch_size / processes rows each; its
    iterator's position is what checkpoints save.

  Raises:
    DataError: the processes do not divide data.batch_size.
  """
  local = _per_process(config.data.batch_size)
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  # Global batch s is the s-th slice of the stream, whatever the process count; this process
  # reads its contiguous block of rows, the block its devices hold in the global array.
  ds = (
    grain.MapDataset.range(split.size)
    .shuffle(seed=config.seed)
    .repeat()
    .batch(config.data.batch_size, drop_remainder=True)
    .map(lambda idx: preprocess(split.read(np.asarray(idx)[rows]), config.data.scale))
  )
  return ds.to_iter_dataset(
    grain.ReadOptions(num_threads=config.data.read_threads, prefetch_buffer_size=8)
  )


def eval_batches(config, split: Split, batch_size: int | None = None):
  """This process's rows of every eval batch, in file order, the last padded.

  Args:
    config: the experiment config (data.scale; data.eval_batch_size unless `batch_size`).
    split: the eval split.
    batch_size: the global eval batch; the loop rounds data.eval_batch_size up to a multiple of
      the mesh's batch shards, so that no eval batch size stops a run from starting.

  Yields:
    Batches that carry `mask` (1 real, 0 padding) so that sums stay exact.

  Raises:
    DataError: the processes do not divide the eval batch.
  """
  global_batch = batch_size or config.data.eval_batch_size
  local = _per_process(global_batch)
  p = jax.process_index()
  for start in range(0, split.size, global_batch):
    idx = np.arange(start, start + global_batch)[p * local : (p + 1) * local]
    mask = idx < split.size
    batch = preprocess(split.read(np.where(mask, idx, 0)), config.data.scale)
    batch['mask'] = mask.astype(np.float32)
    yield batch
