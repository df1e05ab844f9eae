"""`digit_sequences`: sequences of T mnist10k digits labelled with the sum of the digits.

A sequence of split S is T images drawn (with replacement) from split S of
mnist10k only, so train sequences never show a test digit. The table of image
indices is a fixed function of (split, T, count) — not of `config.seed` — so
every run sees the same dataset; the training order over it still follows the
seed. Label = sum of the T digits (9T + 1 classes). Examples are
`image` uint8[T, 28, 28, 1], `label` int.

  data.name = 'digit_sequences', data.seq_len = T (4),
  data.seq_train_count (40,000), data.seq_test_count (2,000)
"""

import dataclasses
import hashlib

import numpy as np

from jaxvision.errors import DataError

NAME = 'digit_sequences'
BASE = 'mnist10k'
_TABLE_SEED = 20261124


def index_table(split: str, seq_len: int, count: int, base_size: int) -> np.ndarray:
  """Which base images make up each sequence; a pure function of its arguments.

  Args:
    split: the split's name (hashed into the table's seed).
    seq_len: images per sequence, T.
    count: sequences.
    base_size: images in mnist10k's split of the same name.

  Returns:
    int64[count, seq_len] indices into the base split.
  """
  split_id = int.from_bytes(hashlib.sha256(split.encode()).digest()[:4], 'little')
  rng = np.random.default_rng([_TABLE_SEED, split_id, seq_len, count])
  return rng.integers(0, base_size, size=(count, seq_len))


def config() -> dict:
  """The data keys digit_sequences needs; a config that reads it adds them to config.data."""
  return {
    'seq_len': 4,  # digits per sequence
    'seq_train_count': 40000,  # train sequences (an index table; cheap)
    'seq_test_count': 2000,
  }


def load_split(data_config, split: str, load_base):
  """The `Split` of sequences built on mnist10k.

  Args:
    data_config: config.data, with the keys of `config()`.
    split: 'train' or 'test'.
    load_base: `pipeline.load_split`, to read mnist10k's split (passed in: the pipeline
      dispatches to this module, so this module does not import it).

  Returns:
    The split of `seq_*_count` sequences.

  Raises:
    DataError: a key of `config()` is missing from config.data, or T or a count is below 1.
  """
  missing = [k for k in config() if k not in data_config]
  if missing:
    raise DataError(
      f'data.name={NAME} needs data.{missing[0]}; use configs/cnn_rnn.py or add the '
      f'keys of jaxvision.data.sequences.config() to the config'
    )
  seq_len = int(data_config.seq_len)
  count = int(
    data_config.seq_train_count if split == data_config.train_split else data_config.seq_test_count
  )
  if seq_len < 1 or count < 1:
    raise DataError(f'data.seq_len={seq_len} and the sequence counts must be >= 1')
  base_config = data_config.copy_and_resolve_references()
  base_config.name = BASE
  base = load_base(base_config, split)
  table = index_table(split, seq_len, count, base.size)
  arrays = base.read(np.arange(base.size))
  images, labels = arrays['image'], arrays['label'].astype(np.int64)

  def read(idx):
    rows = table[np.asarray(idx)]
    return {'image': images[rows], 'label': labels[rows].sum(axis=-1)}

  digest = hashlib.sha256(table.tobytes()).hexdigest()[:16]
  return dataclasses.replace(
    base,
    name=NAME,
    size=count,
    image_shape=(seq_len, *base.image_shape),
    num_classes=9 * seq_len + 1,
    read=read,
    fingerprint=f'{NAME}/T={seq_len}/n={count}/table={digest}/base={base.fingerprint}',
  )
