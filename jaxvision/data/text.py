"""Text classification datasets (TFDS features `text` + `label`, e.g. imdb_reviews) as tokens.

The tokenizer works offline and is deterministic: lowercase, words are runs of
letters, digits and apostrophes; the vocabulary is the `data.vocab_size - 2`
most frequent words of the TRAIN split (ties broken alphabetically); id 0 pads,
id 1 is any other word. Each text becomes `tokens` int32[data.max_len]
(truncated, or padded with 0 at the end).
"""

import collections
import hashlib
import re

import numpy as np

from jaxvision.data.split import Split
from jaxvision.errors import DataError

PAD, UNKNOWN = 0, 1
_WORD = re.compile(r"[a-z0-9']+")
_VOCABS: dict = {}  # (dataset, data dir, train split, size) -> vocabulary, built once per process


def words(text) -> list[str]:
  """The words of a text.

  Args:
    text: a str, or UTF-8 bytes (undecodable bytes replaced).

  Returns:
    The lowercase words: runs of letters, digits and apostrophes.
  """
  if isinstance(text, bytes):
    text = text.decode('utf-8', errors='replace')
  return _WORD.findall(str(text).lower())


def build_vocab(texts, size: int) -> dict[str, int]:
  """The vocabulary of a corpus.

  Args:
    texts: an iterable of str or bytes.
    size: the vocabulary size, pad and unknown included.

  Returns:
    word -> id (2 ... size-1) for the size-2 most frequent words (ties alphabetical).
  """
  counts = collections.Counter(w for t in texts for w in words(t))
  top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: max(size - 2, 0)]
  return {w: i + 2 for i, (w, _) in enumerate(top)}


def encode(text, vocab: dict[str, int], max_len: int) -> np.ndarray:
  """A text as token ids.

  Args:
    text: a str or UTF-8 bytes.
    vocab: word -> id (`build_vocab`).
    max_len: the number of ids.

  Returns:
    int32[max_len] ids of the text's words (1 if not in `vocab`), truncated or padded with 0.
  """
  ids = [vocab.get(w, UNKNOWN) for w in words(text)][:max_len]
  return np.asarray(ids + [PAD] * (max_len - len(ids)), np.int32)


def config() -> dict:
  """The data keys a text dataset needs; a config that reads one adds them to config.data."""
  return {
    'max_len': 256,  # tokens per example
    'vocab_size': 20000,
  }  # words of the train split kept (+ pad and unknown)


def load_split(data_config, split: str, b) -> Split:
  """The `Split` of `split` with batches {'tokens': int32[k, max_len], 'label': [k]}.

  Args:
    data_config: config.data, with the keys of `config()`.
    split: the split's TFDS name.
    b: the dataset's prepared TFDS builder.

  Returns:
    The split, tokenised with the vocabulary of the train split.

  Raises:
    DataError: a key of `config()` is missing, or max_len < 1 or vocab_size < 3.
  """
  missing = [k for k in config() if k not in data_config]
  if missing:
    raise DataError(
      f'data.name={data_config.name} (text) needs data.{missing[0]}; use a config with '
      f'text keys, e.g. configs/lstm.py:imdb'
    )
  if data_config.max_len < 1 or data_config.vocab_size < 3:
    raise DataError(
      f'data.max_len={data_config.max_len} must be >= 1 and '
      f'data.vocab_size={data_config.vocab_size} >= 3 (pad, unknown and a word)'
    )
  key = (b.name, str(b.data_dir), data_config.train_split, int(data_config.vocab_size))
  if key not in _VOCABS:
    train = b.as_data_source(data_config.train_split)
    _VOCABS[key] = build_vocab(
      (train[i]['text'] for i in range(len(train))), data_config.vocab_size
    )
  vocab = _VOCABS[key]
  source = b.as_data_source(split)
  tokens = np.stack(
    [encode(source[i]['text'], vocab, data_config.max_len) for i in range(len(source))]
  )
  labels = np.asarray([source[i]['label'] for i in range(len(source))])
  digest = hashlib.sha256(tokens.tobytes()).hexdigest()[:16]
  return Split(
    name=data_config.name,
    split=split,
    size=len(labels),
    image_shape=(data_config.max_len,),
    num_classes=b.info.features['label'].num_classes,
    fingerprint=f'{b.name}/{b.version}/{split}/tokens={digest}',
    read=lambda idx: {'tokens': tokens[idx], 'label': labels[idx]},
    input_key='tokens',
  )
