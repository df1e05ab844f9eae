"""Balanced spectral clusters as pseudo-labels (data.clusters, the self-conditioned GAN)."""

import dataclasses
import json
import re

import numpy as np
import pytest
from PIL import Image

from jaxvision import config as config_lib
from jaxvision import modes, tasks, train
from jaxvision.data import clusters, pipeline


def _purity(ids, labels, k):
  return sum(np.bincount(labels[ids == c], minlength=10).max() for c in range(k)) / len(labels)


def test_balanced_assignment_fills_every_cluster_to_capacity():
  rng = np.random.default_rng(0)
  d = rng.uniform(size=(103, 4))
  d[:, 0] -= 1.0  # every row prefers column 0: unconstrained, column 0 would take all 103
  ids = clusters.balanced_assignment(d)
  assert sorted(np.bincount(ids, minlength=4)) == [25, 26, 26, 26]
  # the rows that lose least by going elsewhere are the ones moved out of column 0
  regret = np.sort(d, 1)[:, 1] - d[:, 0]
  assert regret[ids == 0].min() >= np.median(regret)


def _bar(shear: float, size: int = 28) -> np.ndarray:
  """An anti-aliased stroke 3 px wide from top to bottom whose column moves by `shear` per row."""
  r, c = np.mgrid[:size, :size]
  distance = np.abs(c - (size / 2 + shear * (r - size / 2))) / np.sqrt(1 + shear**2)
  return np.clip(2.0 - distance, 0, 1).astype(np.float32) * 255


def _tilt(image: np.ndarray) -> float:
  r, c = np.mgrid[: image.shape[0], : image.shape[1]]
  m = image.sum()
  mr, mc = (r * image).sum() / m, (c * image).sum() / m
  return ((r - mr) * (c - mc) * image).sum() / ((r - mr) ** 2 * image).sum()


def test_deskew_makes_a_slanted_stroke_upright_so_slant_is_not_a_feature(monkeypatch):
  slanted = _bar(0.4)
  assert _tilt(slanted) == pytest.approx(0.4, abs=0.05)
  assert abs(_tilt(clusters._deskew(slanted))) < 0.03
  images = np.stack([_bar(0), slanted, _bar(0).T])[..., None]
  upright, slanted_f, lying = clusters.features(images)
  monkeypatch.setattr(clusters, '_deskew', lambda image: image)
  upright_raw, slanted_raw, _ = clusters.features(images)
  # measured: 0.97 deskewed, 0.34 without (the slanted stroke's gradients point 22 degrees off)
  assert np.dot(upright, slanted_f) > 0.9 > 0.5 > np.dot(upright_raw, slanted_raw)
  assert np.dot(upright, lying) < 0.1  # orientation is a feature


def test_features_are_unit_gradient_histograms_of_every_4x4_cell_in_grey_or_colour():
  rng = np.random.default_rng(0)
  grey = clusters.features(rng.uniform(0, 255, (3, 28, 28, 1)))
  colour = clusters.features(rng.uniform(0, 255, (2, 34, 32, 3)))  # 34 rows: the last 2 are cropped
  assert grey.shape == (3, 7 * 7 * 9) and colour.shape == (2, 8 * 8 * 9)
  np.testing.assert_allclose(np.linalg.norm(colour, axis=1), 1.0, rtol=1e-5)
  assert (grey >= 0).all()


def test_clusters_of_the_train_digits_are_mostly_one_digit_each(make_config):
  config = make_config('dcgan', '')  # 30 clusters
  train = pipeline.load_split(config.data, config.data.train_split)
  test = pipeline.load_split(config.data, config.data.eval_split)
  assert train.num_classes == test.num_classes == 30
  assert re.search(r'\[clusters=30,ids=[0-9a-f]{12}\]$', train.fingerprint)
  assert test.fingerprint.endswith(train.fingerprint[train.fingerprint.rindex('[') :])  # same fit
  plain = config.copy_and_resolve_references()
  plain.data.clusters = 0
  labels = {
    s: np.asarray(pipeline.load_split(plain.data, s).read(np.arange(n))['label'])
    for s, n in ((config.data.train_split, train.size), (config.data.eval_split, test.size))
  }
  train_ids = np.asarray(train.read(np.arange(train.size))['label'])
  test_ids = np.asarray(test.read(np.arange(test.size))['label'])
  sizes = np.bincount(train_ids, minlength=30)
  assert sizes.min() == train.size // 30 and sizes.max() == sizes.min() + 1  # balanced: 266 or 267
  assert test_ids.min() >= 0 and test_ids.max() < 30
  # found without the labels, yet each cluster is mostly one digit: 0.955 and 0.981 measured
  # (with the pixels' principal components in place of the gradient histograms: 0.90 and 0.92)
  assert _purity(train_ids, labels[config.data.train_split], 30) > 0.93
  assert _purity(test_ids, labels[config.data.eval_split], 30) > 0.93
  # a batch read by index gets those ids
  idx = np.array([5, 0, 7])
  np.testing.assert_array_equal(train.read(idx)['label'], train_ids[idx])


@pytest.mark.parametrize(
  'overrides,match',
  [
    (
      dict(data__clusters=20, model__num_classes=10),
      'data.clusters=20 .* needs model.num_classes=20, not 10',
    ),
    (dict(data__clusters=-1), 'data.clusters=-1 must be >= 0'),
    (
      dict(data__clusters=10, model__num_classes=10, data__synthetic__path='x.npz'),
      'cannot be combined with data.synthetic.path',
    ),
  ],
)
def test_cluster_settings_that_cannot_work_are_refused_in_one_line(make_config, overrides, match):
  config = make_config('dcgan', 'smoke', **overrides)
  with pytest.raises(config_lib.ConfigError, match=match) as e:
    tasks.validate(config)
  assert '\n' not in str(e.value)


def test_more_clusters_than_half_the_images_is_a_data_error(make_config):
  config = make_config('dcgan', 'smoke', data__clusters=5000, model__num_classes=5000)
  with pytest.raises(
    pipeline.DataError, match='data.clusters=5000 must be between 2 and half the 8000'
  ):
    pipeline.load_split(config.data, config.data.train_split)


def test_self_conditioned_dcgan_end_to_end(make_config, tmp_path):
  """data.clusters with a conditional DCGAN: trains, evaluates, grids a row per cluster, and
  `--mode sample` saves the cluster ids apart from class labels."""
  overrides = dict(data__clusters=10, model__num_classes=10, data__per_class=50)  # 500 to cluster
  final = train.train_and_evaluate(make_config('dcgan', **overrides), str(tmp_path))
  assert np.isfinite(final['eval/d_loss'])
  with open(tmp_path / 'run.json') as f:
    assert '[clusters=10,ids=' in json.load(f)['data']['train']
  grid = np.asarray(Image.open(tmp_path / 'samples' / 'samples_step_6.png'))
  assert grid.shape[:2] == (10 * 30 + 2, 8 * 30 + 2)  # a row of 8 per cluster, 28 px + 2 px borders
  modes.sample(make_config('dcgan', sample__n=12, **overrides), str(tmp_path))
  with np.load(tmp_path / 'samples' / 'step_6.npz') as f:
    assert 'labels' not in f
    np.testing.assert_array_equal(f['clusters'], np.arange(12) % 10)


def test_a_conditional_gan_with_the_wrong_number_of_classes_is_refused_before_training(
  make_config, tmp_path
):
  # e.g. configs/dcgan.py with only --config.data.clusters=0: 30 embeddings for 10 digits
  config = make_config('dcgan', model__num_classes=30)
  with pytest.raises(
    config_lib.ConfigError, match='model.num_classes=30 but mnist10k has 10 classes'
  ) as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert '\n' not in str(e.value) and not list(tmp_path.iterdir())


def test_the_default_dcgan_is_self_conditioned_and_plain_is_a_preset(make_config):
  default, plain = make_config('dcgan', ''), make_config('dcgan', 'plain')
  for config in (default, plain):
    tasks.validate(config)
  assert default.data.clusters == default.model.num_classes == 30
  assert plain.data.clusters == plain.model.num_classes == 0
  assert (plain.data.batch_size, plain.train.steps) == (
    64,
    8000,
  )  # the earlier default, as measured


def test_the_clusters_read_no_label(make_config):
  """The claim behind a self-conditioned GAN: the clusters are found without the labels. The same
  500 train images with their labels shuffled (and another fingerprint, so nothing is reused from
  a cache) get the same cluster ids, and so do the test images placed by their nearest ones."""
  config = make_config(
    'dcgan', 'smoke', data__clusters=10, model__num_classes=10, data__per_class=50
  )
  train = pipeline.load_split(config.data, config.data.train_split, relabel=False)
  test = pipeline.load_split(config.data, config.data.eval_split, relabel=False)
  permutation = np.random.default_rng(0).permutation(train.size)
  labels = np.asarray(train.read(np.arange(train.size))['label'])
  read = train.read
  shuffled = dataclasses.replace(
    train,
    read=lambda idx: {**read(idx), 'label': labels[permutation][np.asarray(idx)]},
    fingerprint=train.fingerprint + '[labels shuffled]',
  )
  assert not np.array_equal(shuffled.read(np.arange(50))['label'], labels[:50])
  ids = {}
  for name, split in (('labels', train), ('shuffled', shuffled)):
    relabelled = clusters.relabel(split, config.data, True, lambda split=split: split)
    placed = clusters.relabel(test, config.data, False, lambda split=split: split)
    ids[name] = (
      np.asarray(relabelled.read(np.arange(split.size))['label']),
      np.asarray(placed.read(np.arange(test.size))['label']),
    )
  np.testing.assert_array_equal(ids['shuffled'][0], ids['labels'][0])
  np.testing.assert_array_equal(ids['shuffled'][1], ids['labels'][1])
