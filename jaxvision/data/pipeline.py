"""Deterministic input pipeline: TFDS data source -> grain -> numpy batches.

The order of training examples is a function of (seed, step) alone: grain
shuffles the indices of the split with the seed, a new permutation each
epoch, and batch `s` is elements `s*B ... (s+1)*B-1` of that stream. Each
process reads only its own rows of every global batch (`jax.process_index()`).
The iterator's position is saved with every checkpoint (grain state) and
restored on resume.

Random augmentation of pixels that are already in memory (shift, crop_flip)
runs inside the jitted train step with the state's key (see
`jaxvision/data/augment.py`). ImageNet's inception crop runs here, on the
host, where it can decide how much of each JPEG to decode
(`jaxvision/data/images.py`): the random draws of the record at position `g`
of the stream come from a numpy generator seeded with (seed, g), so they too
are a function of (seed, step), the same for any number of processes or
workers. With data.workers > 0 the batches are made in that many grain
worker processes (`mp_prefetch`), in the same order.
"""

import functools
import hashlib
import os

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import flags
from absl import logging as absl_logging
from grain.multiprocessing import SharedMemoryArray

from jaxvision import paths
from jaxvision.data import clusters, images, mnist10k, sequences, subset, synthetic, text
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


def _image_path(data_config, split: str, features):
  """How a split's images are read: (TFDS decoders, per-example select, host augmentation, shape).

  Without data.image_size, images are taken as TFDS decodes them. With it, an encoded image
  (a TFDS Image feature) is read undecoded and decoded by `images` (JPEGs at reduced scale):
  the shorter side goes to image_size, then the centred square is kept. With
  data.augment='inception_crop' (ImageNet-style), the train split's images stay as read until
  `train_dataset` draws each one's random crop (`images.inception_crop`), and the other splits
  take the centred image_size square of the image resized to image_size * 8/7 (224 of 256).
  """
  size = data_config.image_size
  shape = tuple(features['image'].shape)
  if not size:
    return None, _select, None, shape
  channels = shape[-1] or 3
  decoders = None
  if isinstance(features['image'], tfds.features.Image):
    decoders = {'image': tfds.decode.SkipDecoding()}
  inception = data_config.augment == 'inception_crop'
  if inception and split == data_config.train_split:
    augment = functools.partial(images.inception_crop, size=size, channels=channels)
    return decoders, _select, augment, (size, size, channels)
  short = round(size * 8 / 7) if inception else size
  resize = lambda example: {
    'image': images.resize_center_crop(example['image'], short, size, channels),
    'label': example['label'],
  }
  return decoders, resize, None, (size, size, channels)


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
  decoders, select, augment, image_shape = _image_path(data_config, split, features)
  source = b.as_data_source(split, decoders=decoders)
  size = len(source)
  if None in image_shape:
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
    augment=augment,
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
  """[{key: array}] -> {key: stacked array}; encoded images (bytes) and arrays of several shapes
  go into an object array, one entry each."""
  return {k: _column([e[k] for e in examples]) for k in examples[0]}


def _column(values: list) -> np.ndarray:
  """The values stacked, or as an object array when they are bytes or of several shapes."""
  if not isinstance(values[0], bytes) and len({np.shape(v) for v in values}) == 1:
    return np.stack([np.asarray(v) for v in values])
  out = np.empty(len(values), object)
  for i, v in enumerate(values):
    out[i] = v
  return out


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
  return {'image': scale_pixels(batch['image'], scale), 'label': batch['label'].astype(np.int32)}


_IMAGENET_SHIFT = (255 * IMAGENET_MEAN).astype(np.float32)
_IMAGENET_FACTOR = (1 / (255 * IMAGENET_STD)).astype(np.float32)


def scale_pixels(image: np.ndarray, scale: str, out: np.ndarray | None = None) -> np.ndarray:
  """Pixels as the steps take them (see `preprocess`).

  Args:
    image: uint8 pixels, any shape with the channels last.
    scale: data.scale.
    out: float32 of the shape of `image` to write into (a batch's row), or None.

  Returns:
    float32 pixels, `out` if given.
  """
  image = image if image.dtype == np.uint8 else image.astype(np.float32)
  if scale == 'imagenet':  # per-channel standardisation with the ImageNet train statistics
    out = np.subtract(image, _IMAGENET_SHIFT, out=out, dtype=np.float32)
    out *= _IMAGENET_FACTOR
    return out
  out = np.divide(image, np.float32(255), out=out, dtype=np.float32)
  if scale == 'minus_one_one':
    out *= 2
    out -= 1
  return out


def _per_process(global_batch: int) -> int:
  """This process's share of a global batch; DataError unless the processes divide it."""
  n = jax.process_count()
  if global_batch % n:
    raise DataError(f'data.batch_size={global_batch} must be divisible by the {n} processes')
  return global_batch // n


def train_dataset(config, split: Split) -> grain.IterDataset:
  """Infinite, reshuffled-every-epoch stream of this process's training batches.

  Args:
    config: the experiment config (seed, data.batch_size, data.scale, data.read_threads,
      data.workers).
    split: the train split.

  Returns:
    A grain dataset of `preprocess`ed batches, data.batch_size / processes rows each. Its
    iterator's state, what checkpoints save, is the index of the next batch. With
    data.workers > 0, that many processes make the batches (each with data.read_threads
    threads), started at the first batch; close the iterator to end them.

  Raises:
    DataError: the processes do not divide data.batch_size.
  """
  local = _per_process(config.data.batch_size)
  # Global batch s is the s-th slice of the stream, whatever the process count; this process
  # reads its contiguous block of rows, the block its devices hold in the global array.
  rows = np.arange(jax.process_index() * local, (jax.process_index() + 1) * local)
  workers = _workers(config.data.workers)
  read = functools.partial(
    _train_batch,
    split=split,
    rows=rows,
    batch_size=config.data.batch_size,
    seed=config.seed,
    scale=config.data.scale,
    shared=workers > 0,
  )
  batches = (
    grain.MapDataset.range(split.size)
    .shuffle(seed=config.seed)
    .repeat()
    .batch(config.data.batch_size, drop_remainder=True)
    .map_with_index(read)
  )
  return _TrainBatches(batches, config.data.read_threads, workers)


def _workers(workers: int) -> int:
  """data.workers as a count: -1 is one per CPU core this process may run on."""
  return len(os.sched_getaffinity(0)) if workers == -1 else workers


class _TrainBatches(grain.IterDataset):
  """The batches of a `MapDataset`, read by `threads` threads in this process or in each of
  `workers` grain worker processes, in order either way."""

  def __init__(self, batches: grain.MapDataset, threads: int, workers: int):
    super().__init__()
    self._batches, self._threads, self._workers = batches, threads, workers

  def from_batch(self, start: int) -> grain.IterDataset:
    """The grain pipeline of the batches from index `start` on."""
    # A batch buffered in a worker is one more batch in memory per worker: enough to keep its
    # threads busy there; in this process, a deeper buffer smooths the steps.
    ds = self._batches[start:].to_iter_dataset(
      grain.ReadOptions(
        num_threads=self._threads,
        prefetch_buffer_size=self._threads if self._workers else 8,
      )
    )
    if not self._workers:
      return ds
    if not flags.FLAGS.is_parsed():  # grain 0.2.18 reads an absl flag in mp_prefetch (grain#1355)
      flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(num_workers=self._workers, per_worker_buffer_size=2)
    return ds.mp_prefetch(options)

  def __iter__(self) -> grain.DatasetIterator:
    return _TrainIterator(self)


class _TrainIterator(grain.DatasetIterator):
  """Iterates `_TrainBatches`. Its state is {'next_index': the next batch}, the state of grain's
  own iterator over a MapDataset: grain's multiprocess iterator keeps one state per worker, which
  would tie a checkpoint to data.workers; this one resumes under any number of workers."""

  def __init__(self, batches: _TrainBatches):
    super().__init__()
    self._batches, self._next, self._it = batches, 0, None

  def start_prefetch(self) -> None:
    if self._it is None:
      self._it = iter(self._batches.from_batch(self._next))
    self._it.start_prefetch()

  def __next__(self):
    self._assert_not_closed()
    if self._it is None:
      self._it = iter(self._batches.from_batch(self._next))
    batch = next(self._it)
    self._next += 1
    return batch

  def get_state(self) -> dict:
    return {'next_index': self._next}

  def set_state(self, state: dict) -> None:
    self._stop()
    self._next = int(state['next_index'])

  def _stop(self) -> None:
    if self._it is not None:
      self._it.close()
      self._it = None

  def close(self) -> None:
    self._stop()
    super().close()


def _train_batch(
  step: int, idx, *, split: Split, rows, batch_size: int, seed: int, scale: str, shared: bool
):
  """Global batch `step` (stream indices `idx`): this process's `rows` of it, read, augmented on
  the host if the split says so (the record at stream position g with the generator of
  (seed, g)), and preprocessed. With `shared` (in a grain worker) the host-augmented images are
  written straight into shared memory, which grain then hands over without another copy."""
  batch = split.read(np.asarray(idx)[rows])
  if split.augment is None:
    return preprocess(batch, scale)
  shape = (len(rows), *split.image_shape)
  out = SharedMemoryArray(shape, np.float32) if shared else np.empty(shape, np.float32)
  for i, (image, g) in enumerate(zip(batch['image'], step * batch_size + rows)):
    scale_pixels(split.augment(image, np.random.default_rng((seed, int(g)))), scale, out[i])
  return {'image': out, 'label': batch['label'].astype(np.int32)}


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
