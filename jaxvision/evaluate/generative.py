"""Fréchet distance, KID, precision and recall of generated images, on domain features.

The features are the hidden layer of a digit classifier that jaxvision trained
itself on the mnist10k train split (`jaxvision/assets/mnist10k_domain_cnn.*`,
made by `python run.py --config configs/cnn.py:domain --workdir WORKDIR` and
`python -m jaxvision.export WORKDIR`; its command, commit, test accuracy and
params sha256 are in the .json next to the weights, the sha256 is checked when
they are loaded and run.json records it). Every eval of a generator reports

  eval/fd          FD(features of eval.fd_samples generated images, features of the test split)
  eval/kid         unbiased KID (cubic polynomial kernel) between the same two sets
  eval/precision   improved precision and recall (k = 3; `precision_recall.py`) of the first
  eval/recall      min(fd_samples, test size) samples against as many test images
  eval/fd_half     FD(the first h samples, the odd half of the test split), h = min(fd_samples,
                   half the test split): the generator at the size of the reference below

and two real-data references, computed once:

  eval/fd_halves   FD(even half of the test split, odd half), h images each: two samples of the
                   true distribution that the feature network never saw, so `fd_half /
                   fd_halves` compares a generator with the data itself at the same size
  eval/fd_floor    FD(real train images, real test images) and their KID: what replaying the
  eval/kid_floor   training set scores. The feature network was trained on those train images,
                   so this is lower than what unseen real digits score (fd_halves)
  eval/precision_real, eval/recall_real: the train images scored as if generated

With `eval.inception_weights` = an .npz of Inception-v3 variables that the user
supplies (nothing can be downloaded here; see `models/inception.py`), every eval
also reports the usual FID on the 2048-d pool features, `eval/fid`, with its
real-train vs real-test `eval/fid_floor`; for any image size and 1 or 3 channels. The real
statistics are streamed (`fid.py`); with `eval.fid_stats` = a pytorch-fid .npz of mu/sigma
(`python -m jaxvision.evaluate.fid`, or pytorch-fid's --save-stats) `eval/fid` and the floor
are against those instead of the eval split. With pytorch-fid's weights, converted by
`python -m jaxvision.pretrained.inception`, eval/fid is pytorch-fid's FID (tests/test_fid.py).
It is 6 GFLOPs an image: a GPU's job for thousands of samples.
"""

import json
import os

import jax
import numpy as np
from flax import traverse_util
from jax.experimental import multihost_utils

from jaxvision import checkpoint
from jaxvision.errors import ConfigError
from jaxvision.evaluate import fid as fid_lib
from jaxvision.evaluate.fid import InceptionFeatures
from jaxvision.evaluate.precision_recall import precision_recall
from jaxvision.models import cnn

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets')
DOMAIN_WEIGHTS = os.path.join(ASSETS, 'mnist10k_domain_cnn.npz')


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) of two feature sets [n, d] (float64).

  Args:
    f1: features [n1, d] of one set of images.
    f2: features [n2, d] of the other.

  Returns:
    The Fréchet distance between Gaussians fit to the two sets.
  """
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  mu1, mu2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  return gaussian_frechet_distance(mu1, s1, mu2, s2)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
  """The symmetric square root of a PSD matrix (negative eigenvalues from rounding clipped)."""
  w, v = np.linalg.eigh((m + m.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(mu1, s1, mu2, s2) -> float:
  """The Fréchet (2-Wasserstein) distance between N(mu1, s1) and N(mu2, s2).

  tr((S1 S2)^1/2) is computed as the sum of the square roots of the eigenvalues of the
  symmetric PSD matrix S1^1/2 S2 S1^1/2 (same spectrum), which stays exact when the
  covariances are singular (ReLU features that are always 0).

  Args:
    mu1: mean [d] of the first Gaussian.
    s1: covariance [d, d] of the first Gaussian.
    mu2: mean [d] of the second Gaussian.
    s2: covariance [d, d] of the second Gaussian.

  Returns:
    ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2).
  """
  r = _sqrt_psd(np.asarray(s1, np.float64))
  w = np.linalg.eigvalsh(r @ np.asarray(s2, np.float64) @ r)
  tr_covmean = np.sum(np.sqrt(np.clip(w, 0.0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def _cubed(a: np.ndarray) -> np.ndarray:
  return a * a * a  # two multiplications: numpy computes a ** 3 with the slower pow()


def kernel_inception_distance(
  f1: np.ndarray, f2: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0
) -> float:
  """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

  Args:
    f1: features [n1, d] of one set of images.
    f2: features [n2, d] of the other.
    subsets: random subsets averaged over.
    subset_size: images per subset and set (at most the smaller set's size).
    seed: the subsets' seed.

  Returns:
    The kernel inception distance (an unbiased estimate; may be slightly negative).
  """
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  m = min(subset_size, len(f1), len(f2))
  d = f1.shape[1]
  rng = np.random.default_rng(seed)
  total = 0.0
  for _ in range(subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]
    y = f2[rng.choice(len(f2), m, replace=False)]
    kxx, kyy, kxy = (_cubed(x @ x.T / d + 1), _cubed(y @ y.T / d + 1), _cubed(x @ y.T / d + 1))
    total += (
      (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
      + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
      - 2.0 * kxy.mean()
    )
  return float(total / subsets)


class DomainFeatures(fid_lib.BatchedFeatures):
  """The committed digit classifier as a feature map: images in [0, 1], f32[n, 28, 28, 1] -> [n,
  d]."""

  def __init__(self, path: str = DOMAIN_WEIGHTS, batch: int = 500):
    """Loads the weights.

    Args:
      path: the .npz of the classifier's variables; its model fields are in the .json beside it.
      batch: images per jitted call.
    """
    with np.load(path) as f:
      flat = {k: np.asarray(v) for k, v in f.items()}
    with open(os.path.splitext(path)[0] + '.json', encoding='utf-8') as f:
      self.info = json.load(f)
    variables = fid_lib.unflatten_variables(flat)
    sha = checkpoint.params_sha256(variables['params'])
    if sha != self.info['params_sha256']:
      raise ConfigError(
        f'{path} holds params of sha256 {sha[:12]}..., its .json says '
        f'{self.info["params_sha256"][:12]}...: the feature network was changed; reinstall '
        f'jaxvision or rebuild it with {self.info["made_by"]!r}'
      )
    model = cnn.CNN(
      **{k: tuple(v) if isinstance(v, list) else v for k, v in self.info['model'].items()}
    )
    self._batch, self.dims = batch, int(model.hidden)  # the features: the hidden layer
    self._fn = jax.jit(lambda x: model.apply(variables, x, train=False, features=True))


def flatten_variables(variables) -> dict:
  """{'params': {'Conv_0': {'kernel': ...}}} -> {'params/Conv_0/kernel': ...} for np.savez
  (arrays fetched to numpy; ShapeDtypeStructs kept).

  Args:
    variables: a nested dict of arrays or ShapeDtypeStructs.

  Returns:
    {'/'-joined path: numpy array or ShapeDtypeStruct}.
  """
  flat = traverse_util.flatten_dict(variables, sep='/')
  return {
    k: v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(jax.device_get(v))
    for k, v in flat.items()
  }


def _precision_recall(real: np.ndarray, fake: np.ndarray, suffix: str = '') -> dict:
  """{'eval/precision[_suffix]', 'eval/recall[_suffix]'} of the first m of each set, m the
  smaller size (equal sizes: a larger set has smaller k-NN balls); {} below 5 images."""
  m = min(len(real), len(fake))
  if m < 5:
    return {}
  precision, recall = precision_recall(real[:m], fake[:m])
  tail = f'_{suffix}' if suffix else ''
  return {f'eval/precision{tail}': precision, f'eval/recall{tail}': recall}


class ChunkedSampler:
  """A task's `sample(state, rng, n, labels)`, jitted once for chunks of a fixed size (500 rounded
  up to a multiple of the mesh's batch shards) whose rows are spread over the mesh like a train
  batch; any n is drawn chunk by chunk, chunk i with `fold_in(key, i)`, the last one trimmed."""

  def __init__(
    self, sample, sharding=None, shards: int = 1, chunk: int = 500, compiler_options=None
  ):
    """Jits `sample` for one chunk size.

    Args:
      sample: the task's sample function.
      sharding: where the images go (the mesh's batch sharding), or None: one device.
      shards: how many ways `sharding` splits a batch.
      chunk: the samples drawn per call, before rounding up to `shards`.
      compiler_options: XLA's options, as the train steps compile with them
        (`parallel.compiler_options`).
    """
    self.chunk = -(-chunk // shards) * shards
    self._fn = jax.jit(
      sample, static_argnums=2, out_shardings=sharding, compiler_options=compiler_options
    )

  def __call__(self, state, key, n: int, labels=None, interrupted=lambda: False):
    """n images in [0, 1] (numpy); None if `interrupted()` turned true between chunks.

    Args:
      state: the task's state.
      key: the draw's key.
      n: how many images.
      labels: i32[n] of a conditional generator, or None.
      interrupted: () -> bool, asked before each chunk.
    """
    out = []
    for i, start in enumerate(range(0, n, self.chunk)):
      if interrupted():
        return None
      y = None
      if labels is not None:  # the chunk's labels, the last chunk's padded with its first ones
        y = np.resize(np.asarray(labels[start : start + self.chunk]), self.chunk)
      images = self._fn(state, jax.random.fold_in(key, i), self.chunk, y)
      if not images.is_fully_addressable:  # rows on other hosts: every process gets them all
        images = multihost_utils.process_allgather(images, tiled=True)
      out.append(np.asarray(images)[: n - start])
    return np.concatenate(out)


class GenerativeMetrics:
  """FD/KID of a generator's samples against the eval split, with the real floor."""

  def __init__(
    self,
    config,
    sample,
    train_split,
    eval_split,
    features: DomainFeatures | None = None,
    sharding=None,
    shards: int = 1,
    compiler_options=None,
  ):
    """Reads the real images and computes their features and the floors once.

    Args:
      config: the experiment config (eval.fd_samples, eval.inception_weights, seed).
      sample: the task's `sample(state, rng, n)`: images in [0, 1].
      train_split: the real train split (the floor's "generator").
      eval_split: the real images the samples are compared with.
      features: the feature network (default: the committed domain classifier).
      sharding: the mesh's batch sharding, over which the samples are drawn (None: one device).
      shards: how many ways `sharding` splits a batch.
      compiler_options: XLA's options for the sampler (`parallel.compiler_options`).

    Raises:
      ConfigError: the images are not 28x28x1 digits and no eval.inception_weights are given,
        the domain feature network is missing, or the Inception weights cannot be used.
    """
    self.inception_path = config.eval.inception_weights
    self.inception = InceptionFeatures(self.inception_path) if self.inception_path else None
    digits = tuple(train_split.image_shape) == (28, 28, 1)
    if not digits and self.inception is None:
      raise ConfigError(
        f'eval.fd_samples={config.eval.fd_samples} needs 28x28x1 digits (the domain '
        f'features are a digit classifier), not {config.data.name} images of '
        f'{train_split.image_shape}; set --config.eval.fd_samples=0 or give '
        f'--config.eval.inception_weights'
      )
    if digits and features is None and not os.path.exists(DOMAIN_WEIGHTS):
      raise ConfigError(
        f'eval.fd_samples needs the domain feature network {DOMAIN_WEIGHTS}, which is '
        f'missing; reinstall jaxvision or set --config.eval.fd_samples=0'
      )
    self.features = (features or DomainFeatures()) if digits else None
    self.n, self.seed = int(config.eval.fd_samples), int(config.seed)
    read_all = lambda split: split.read(np.arange(split.size))['image'].astype(np.float32) / 255.0
    real_eval, real_train = read_all(eval_split), read_all(train_split)
    self.real, self.floor = {}, {}
    if self.features is not None:
      real = self.real['domain'] = self.features(real_eval)
      train_features = self.features(real_train)
      self.floor = {
        'eval/fd_floor': frechet_distance(train_features, real),
        'eval/kid_floor': kernel_inception_distance(train_features, real),
      }
      self.half = min(self.n, len(real) // 2)  # the size of the test-halves comparison
      if self.half >= 2:
        self.floor['eval/fd_halves'] = frechet_distance(
          real[0::2][: self.half], real[1::2][: self.half]
        )
      self.floor.update(_precision_recall(real, train_features, 'real'))
    self.fid_stats = config.eval.fid_stats
    if self.inception is not None:  # mu/sigma, streamed over the splits; or pytorch-fid's file
      self.real['inception'] = (
        fid_lib.load_stats(self.fid_stats, dims=2048)
        if self.fid_stats
        else fid_lib.split_statistics(self.inception, eval_split)
      )
      self.floor['eval/fid_floor'] = gaussian_frechet_distance(
        *fid_lib.split_statistics(self.inception, train_split), *self.real['inception']
      )
    self._sample = ChunkedSampler(sample, sharding, shards, compiler_options=compiler_options)

  def provenance(self) -> dict:
    """What run.json records of the feature networks: the domain network's params sha256 (checked
    when loaded), the command and commit that made it; the Inception weights' and reference
    statistics' paths."""
    out = {}
    if self.features is not None:
      info = getattr(self.features, 'info', {})
      keys = ('params_sha256', 'made_by', 'git_commit', 'step', 'test_metrics')
      out['domain_features'] = {k: info.get(k) for k in keys}
    if self.inception is not None:
      out['inception_weights'] = self.inception_path
      out['fid_stats'] = self.fid_stats or None  # None: the eval split's, streamed
    return out

  def __call__(self, state, interrupted=lambda: False) -> dict | None:
    """The metrics of `state`'s generator; None if `interrupted()` turned true (asked between
    chunks of samples: a stop signal).

    Args:
      state: the task's state, as `sample` takes it.
      interrupted: () -> bool, asked before each chunk of samples.

    Returns:
      {'eval/fd', 'eval/kid', 'eval/fd_half', 'eval/precision', 'eval/recall' (digits),
      'eval/fid' (with Inception weights) and the real references}, or None when interrupted.
    """
    key = jax.random.fold_in(jax.random.PRNGKey(self.seed), 0xFD)
    images = self._sample(state, key, self.n, interrupted=interrupted)
    if images is None:
      return None
    out = dict(self.floor)
    if self.features is not None:
      real, fake = self.real['domain'], self.features(images)
      out['eval/fd'] = frechet_distance(fake, real)
      out['eval/kid'] = kernel_inception_distance(fake, real)
      if self.half >= 2:
        out['eval/fd_half'] = frechet_distance(fake[: self.half], real[1::2][: self.half])
      out.update(_precision_recall(real, fake))
    if self.inception is not None:
      fake = fid_lib.statistics(self.inception(images))
      out['eval/fid'] = gaussian_frechet_distance(*fake, *self.real['inception'])
    return out
