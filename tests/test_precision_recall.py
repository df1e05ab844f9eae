"""Precision and recall of generators, the test-halves reference and the feature network's check."""

import json
import shutil

import jax
import numpy as np
import pytest

from jaxvision import config as config_lib
from jaxvision.data import pipeline
from jaxvision.evaluate import generative
from jaxvision.evaluate import precision_recall as pr


def test_knn_radii_and_coverage_match_brute_force():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(300, 5)), rng.normal(size=(200, 5))
  d = ((a[:, None] - a[None]) ** 2).sum(-1)
  radii = np.sort(d, axis=1)[:, 3]  # the 3rd neighbour after the point itself
  np.testing.assert_allclose(pr.knn_radii(a, 3, chunk=64), radii, rtol=1e-9, atol=1e-12)
  inside = (((b[:, None] - a[None]) ** 2).sum(-1) <= radii[None]).any(1).mean()
  assert pr.coverage(b, a, radii, chunk=50) == pytest.approx(inside, abs=1e-12)


def test_gaussians_real_vs_real_shifted_and_collapsed():
  """Two samples of one Gaussian: both near 1; a shifted one loses both; a generator collapsed
  onto one real point keeps its precision and has recall near 0; a narrower one (half the std)
  keeps precision and loses recall; a wider one the reverse."""
  rng = np.random.default_rng(1)
  real, same = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
  p, r = pr.precision_recall(real, same)
  assert p > 0.7 and r > 0.7, (p, r)
  p, r = pr.precision_recall(real, same + 3.0)
  assert p < 0.05 and r < 0.05, (p, r)
  p, r = pr.precision_recall(real, real[:1] + 1e-3 * rng.normal(size=(2000, 16)))
  assert p == 1.0 and r < 0.01, (p, r)
  p, r = pr.precision_recall(real, 0.5 * same)
  assert p > 0.95 and r < 0.3, (p, r)
  p, r = pr.precision_recall(real, 2.0 * same)
  assert p < 0.3 and r > 0.9, (p, r)


@pytest.fixture(scope='module')
def digits(tfds_dir):
  config = config_lib.from_file('configs/dcgan.py', '')
  config.data.tfds_dir = tfds_dir
  read = lambda s: s.read(np.arange(s.size))['image'].astype(np.float32) / 255.0
  splits = [pipeline.load_split(config.data, s) for s in ('train', 'test')]
  return config, splits, [read(s) for s in splits]


class _Bank:
  """A stand-in generator whose state is a bank of images: n distinct ones, drawn by the key."""

  @staticmethod
  def sample(state, rng, n, labels=None):
    del labels
    return state[jax.random.permutation(rng, state.shape[0])[:n]]


def test_metrics_of_real_digits_and_of_a_collapsed_generator(digits):
  """On the committed domain features: 500 real train digits as the "generator" score precision
  and recall like the train-vs-test references (2,000 each; reported with FD of the test halves
  every eval); a generator that draws one test digit over and over has precision 1, recall near
  0 and an FD far above the references; fd_half compares at the test-halves size (500 here)."""
  config, (train_split, test_split), (train_images, test_images) = digits
  config.eval.fd_samples = 500
  metrics = generative.GenerativeMetrics(config, _Bank.sample, train_split, test_split)
  real = metrics(jax.numpy.asarray(train_images[:2000]))
  assert metrics.half == 500
  for key in ('precision', 'recall'):
    assert real[f'eval/{key}_real'] > 0.75 and real[f'eval/{key}'] > 0.7, real
  # the test halves: two unseen samples of the digits at 1,000 each score above the floor (FD's
  # bias grows as the sample shrinks, and the network was trained on the floor's train images)
  assert real['eval/fd_halves'] > 2 * real['eval/fd_floor'] > 0
  assert 0.5 < real['eval/fd_half'] / real['eval/fd_halves'] < 1.5
  collapsed = metrics(jax.numpy.asarray(np.repeat(test_images[:1], 500, axis=0)))
  assert collapsed['eval/precision'] > 0.9 and collapsed['eval/recall'] < 0.01
  assert collapsed['eval/fd'] > 50 * real['eval/fd']
  assert collapsed['eval/fd_halves'] == real['eval/fd_halves']  # the references are fixed


def test_a_changed_feature_network_is_refused(tmp_path):
  """The domain network's params sha256 is checked against its .json when it is loaded."""
  weights = tmp_path / 'net.npz'
  with np.load(generative.DOMAIN_WEIGHTS) as f:
    arrays = dict(f)
  shutil.copy(generative.DOMAIN_WEIGHTS.replace('.npz', '.json'), tmp_path / 'net.json')
  np.savez(weights, **arrays)
  assert generative.DomainFeatures(str(weights)).info['step'] == 1250
  key = next(k for k in arrays if k.startswith('params/'))
  arrays[key] = arrays[key] + 1e-6
  np.savez(weights, **arrays)
  with pytest.raises(config_lib.ConfigError, match='feature network was changed'):
    generative.DomainFeatures(str(weights))
  info = json.loads((tmp_path / 'net.json').read_text())
  assert info['git_commit'] and not info['git_commit'].endswith('-dirty')
