"""mnist10k, the TFDS-name path and the deterministic input pipeline."""

import hashlib
from importlib import resources

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxvision.data import mnist10k, pipeline


def test_shipped_files_match_their_md5():
  for fname, md5 in mnist10k.FILES.values():
    raw = resources.files('jaxvision.data').joinpath('mnist10k_files', fname).read_bytes()
    assert hashlib.md5(raw).hexdigest() == md5
  readme = resources.files('jaxvision.data').joinpath('mnist10k_files', 'README.md').read_text()
  assert 'CC BY-SA 3.0' in readme and 'LeCun' in readme


def test_mnist10k_splits_sizes_and_labels(make_config):
  config = make_config('cnn')
  train = pipeline.load_split(config.data, 'train')
  test = pipeline.load_split(config.data, 'test')
  assert (train.size, test.size) == (8000, 2000)
  assert train.image_shape == (28, 28, 1) and train.num_classes == 10
  all_labels = np.concatenate(
    [train.read(np.arange(8000))['label'], test.read(np.arange(2000))['label']]
  )
  # Label counts of the whole official MNIST test split.
  assert np.bincount(all_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
  # index % 5 == 0 is test, in file order; the images are the shipped ones.
  images, labels = mnist10k.load_arrays()
  np.testing.assert_array_equal(test.read(np.arange(2000))['image'], images[::5])
  np.testing.assert_array_equal(test.read(np.arange(2000))['label'], labels[::5])
  b = tfds.builder('mnist10k', data_dir=config.data.tfds_dir)
  assert b.is_prepared()
  index = b.as_data_source('train')[0]['index']
  assert index % 5 != 0


def test_mnist10k_is_decoded_once_per_process(make_config, monkeypatch):
  monkeypatch.setattr(pipeline, '_OFFLINE_SPLITS', {})
  decoded, stack = [], pipeline._stack
  monkeypatch.setattr(
    pipeline, '_stack', lambda examples: decoded.append(len(examples)) or stack(examples)
  )
  config = make_config('cnn')
  first, again = pipeline.load_split(config.data, 'test'), pipeline.load_split(config.data, 'test')
  assert decoded == [2000]
  batch = again.read(np.arange(5))
  np.testing.assert_array_equal(batch['image'], first.read(np.arange(5))['image'])
  batch['image'][:] = 0  # a batch is the caller's own copy
  assert first.read(np.arange(5))['image'].any()
  small = pipeline.load_split(make_config('cnn', data__image_size=14).data, 'test')  # another key
  assert decoded == [2000, 2000] and small.image_shape == (14, 14, 1)


def _batches(config, split, n):
  it = iter(pipeline.train_dataset(config, split))
  return [next(it) for _ in range(n)], it


def test_train_order_is_a_function_of_seed_and_step(make_config):
  config = make_config('cnn', data__batch_size=64)
  split = pipeline.load_split(config.data, 'train')
  a, _ = _batches(config, split, 3)
  b, _ = _batches(config, split, 3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['image'], y['image'])
  other = make_config('cnn', data__batch_size=64, seed=1)
  c, _ = _batches(other, split, 1)
  assert not np.array_equal(a[0]['label'], c[0]['label'])
  assert (
    a[0]['image'].dtype == np.float32 and a[0]['image'].max() <= 1.0 and a[0]['image'].min() >= 0.0
  )


def test_every_epoch_is_a_new_permutation_of_the_split(make_config):
  config = make_config('cnn', data__batch_size=1000)
  split = pipeline.load_split(config.data, 'train')
  it = iter(pipeline.train_dataset(config, split))
  epochs = [np.concatenate([next(it)['label'] for _ in range(8)]) for _ in range(2)]
  for e in epochs:  # each epoch holds every example once
    assert np.bincount(e).tolist() == np.bincount(split.read(np.arange(8000))['label']).tolist()
  assert not np.array_equal(epochs[0], epochs[1])


def test_iterator_state_resumes_at_the_next_batch(make_config):
  config = make_config('cnn')
  split = pipeline.load_split(config.data, 'train')
  batches, it = _batches(config, split, 4)
  state = it.get_state()
  expected = next(it)
  fresh = iter(pipeline.train_dataset(config, split))
  fresh.set_state(state)
  np.testing.assert_array_equal(next(fresh)['image'], expected['image'])
  assert not np.array_equal(batches[-1]['image'], expected['image'])


def test_minus_one_one_scaling(make_config):
  config = make_config('cnn', data__scale='minus_one_one')
  split = pipeline.load_split(config.data, 'test')
  batch = next(pipeline.eval_batches(config, split))
  assert batch['image'].min() == -1.0 and batch['image'].max() == 1.0


def test_eval_batches_cover_the_split_once_with_padding(make_config):
  config = make_config('cnn', data__eval_batch_size=768)
  split = pipeline.load_split(config.data, 'test')
  batches = list(pipeline.eval_batches(config, split))
  assert [len(b['label']) for b in batches] == [768, 768, 768]
  assert sum(b['mask'].sum() for b in batches) == 2000
  labels = np.concatenate([b['label'][b['mask'] > 0] for b in batches])
  np.testing.assert_array_equal(labels, split.read(np.arange(2000))['label'])


def test_a_tfds_name_reads_through_the_same_path(make_config, tmp_path):
  """Any TFDS name works through data.name; checked with TFDS mock data."""
  config = make_config('cnn', data__name='mnist', data__tfds_dir=str(tmp_path), data__download=True)
  with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
    split = pipeline.load_split(config.data, 'train')
    it = iter(pipeline.train_dataset(config, split))
    batch = next(it)
  assert split.size == 64 and split.image_shape == (28, 28, 1) and split.num_classes == 10
  assert batch['image'].shape == (32, 28, 28, 1) and batch['label'].shape == (32,)
  assert split.fingerprint.startswith('mnist/')


def test_unprepared_tfds_dataset_error_names_the_fix(make_config, tmp_path):
  config = make_config('cnn', data__name='mnist', data__tfds_dir=str(tmp_path))
  with pytest.raises(pipeline.DataError) as e:
    pipeline.load_split(config.data, 'train')
  msg = str(e.value)
  assert '\n' not in msg and 'data.name=mnist10k' in msg and 'downloads/manual' in msg


def test_unknown_dataset_error_names_the_offline_set(make_config):
  config = make_config('cnn', data__name='no_such_set')
  with pytest.raises(pipeline.DataError, match='data.name=mnist10k'):
    pipeline.load_split(config.data, 'train')
  with pytest.raises(pipeline.DataError, match='no split'):
    pipeline.load_split(make_config('cnn').data, 'validation')
