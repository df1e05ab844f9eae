"""FID's Inception features and the Gaussian statistics of a split, as pytorch-fid has them.

`InceptionFeatures` is Inception-v3's 2048-d pool features (`models/inception.py`) from an .npz
of its variables; with pytorch-fid's weights, converted by

  python -m jaxvision.pretrained.inception pt_inception-2015-12-05-6726825d.pth inception_fid.npz

they equal pytorch-fid's features of the same uint8 images (tests/test_fid.py). `RunningStats`
accumulates mu and sigma over batches of features in float64 (Chan et al.'s pairwise update),
never holding a split's features; `save_stats` / `load_stats` read and write pytorch-fid's .npz
(keys 'mu', 'sigma': `python -m pytorch_fid --save-stats`, and what its
`compute_statistics_of_path` loads). The statistics of a split:

  python -m jaxvision.evaluate.fid --config configs/dcgan.py --weights inception_fid.npz \
    --out cifar10_test_stats.npz [--split test] [--batch 50] [--config.data.tfds_dir=DIR ...]

(the split defaults to the config's data.eval_split; the images as the config's data reads them).
The file serves `--config.eval.fid_stats` (eval/fid against these statistics) and pytorch-fid:
`python -m pytorch_fid generated_images/ cifar10_test_stats.npz`.
"""

import functools
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from etils import epath
from flax import traverse_util
from ml_collections import config_flags

from jaxvision import paths, writers
from jaxvision.data import pipeline
from jaxvision.errors import BadInput, ConfigError
from jaxvision.models import inception


class RunningStats:
  """The mean and covariance of features seen in batches: float64, exact to rounding, O(d^2)
  memory whatever the number of rows (batches merged by Chan, Golub and LeVeque's update)."""

  def __init__(self):
    self.n, self._mean, self._scatter = 0, None, None

  def update(self, features) -> None:
    """Adds a batch of rows.

    Args:
      features: [k, d] features of k more images (any float dtype; k may be 0).
    """
    x = np.asarray(features, np.float64)
    if x.ndim != 2:
      raise ValueError(f'features must be [k, d], not of shape {x.shape}')
    k = len(x)
    if k == 0:
      return
    mean = x.mean(0)
    centred = x - mean
    scatter = centred.T @ centred
    if self.n == 0:
      self.n, self._mean, self._scatter = k, mean, scatter
      return
    n = self.n + k
    delta = mean - self._mean
    self._scatter += scatter + np.outer(delta, delta) * (self.n * k / n)
    self._mean += delta * (k / n)
    self.n = n

  def stats(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu f64[d], sigma f64[d, d]): the mean and the unbiased covariance, as np.cov(rowvar=False).

    Raises:
      ValueError: fewer than 2 rows were seen (no covariance).
    """
    if self.n < 2:
      raise ValueError(f'a covariance needs at least 2 rows, {self.n} seen')
    return self._mean.copy(), self._scatter / (self.n - 1)


def statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of one [n, d] array of features, float64 (as `RunningStats` of one batch)."""
  running = RunningStats()
  running.update(features)
  return running.stats()


def save_stats(path: str, mu, sigma) -> None:
  """Writes mu and sigma as pytorch-fid's --save-stats does (np.savez_compressed, 'mu', 'sigma').

  Args:
    path: the .npz to write.
    mu: the mean [d].
    sigma: the covariance [d, d].
  """
  mu, sigma = np.asarray(mu), np.asarray(sigma)
  if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
    raise ValueError(f'mu [d] and sigma [d, d] needed, not {mu.shape} and {sigma.shape}')
  with epath.Path(paths.resolve(path)).open('wb') as f:  # local or gs://
    np.savez_compressed(f, mu=mu, sigma=sigma)


def load_stats(path: str, dims: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Reads mu and sigma from a pytorch-fid statistics file (or one of `save_stats`).

  Args:
    path: an .npz with 'mu' [d] and 'sigma' [d, d].
    dims: the d the statistics must have (2048: Inception's pool features), or None: any.

  Returns:
    (mu f64[d], sigma f64[d, d]).

  Raises:
    ConfigError: `path` is not a file or not such an .npz, or its d is not `dims`.
  """
  if not epath.Path(paths.resolve(path)).is_file():
    raise ConfigError(f'eval.fid_stats={path!r} is not a file; give a pytorch-fid .npz of mu/sigma')
  try:
    f = writers.load_npz(path)
    mu, sigma = np.asarray(f['mu'], np.float64), np.asarray(f['sigma'], np.float64)
  except (KeyError, ValueError, OSError) as e:
    raise ConfigError(f'eval.fid_stats={path}: not an .npz of mu and sigma ({e})') from None
  if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
    raise ConfigError(
      f'eval.fid_stats={path}: mu {mu.shape} and sigma {sigma.shape} are not [d] and [d, d]'
    )
  if dims is not None and len(mu) != dims:
    raise ConfigError(
      f'eval.fid_stats={path}: statistics of {len(mu)}-d features, FID needs {dims} (pytorch-fid '
      f'--dims 2048)'
    )
  return mu, sigma


def unflatten_variables(flat: dict) -> dict:
  """{'params/Conv_0/kernel': x} -> {'params': {'Conv_0': {'kernel': x}}} as jax arrays: the
  variables of a feature network's .npz (the inverse of `generative.flatten_variables`)."""
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(flat, sep='/'))


class BatchedFeatures:
  """A jitted feature map `self._fn` applied in fixed-size batches of `self._batch` images, the
  last batch zero-padded (one compiled shape); `self.dims` features per image."""

  dims: int

  def __call__(self, images) -> np.ndarray:
    """Images [n, ...] in [0, 1] -> features f32[n, dims]."""
    images = np.asarray(images, np.float32)
    out = [np.zeros((0, self.dims), np.float32)]
    for start in range(0, len(images), self._batch):
      chunk = images[start : start + self._batch]
      pad = self._batch - len(chunk)
      chunk = (
        np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)]) if pad else chunk
      )
      out.append(np.asarray(self._fn(chunk))[: self._batch - pad])
    return np.concatenate(out)


class InceptionFeatures(BatchedFeatures):
  """Inception-v3 pool features of images in [0, 1] (any size, 1 or 3 channels) -> f32[n, 2048],
  from a user-supplied .npz of its variables ('params/Mixed_5b/branch1x1/conv/kernel', ...,
  'batch_stats/.../bn/mean'), checked against the model before any compute."""

  def __init__(self, path: str, batch: int = 50, resize: int = 299):
    """Loads and checks the weights.

    Args:
      path: the user's .npz of Inception-v3 variables, named as in models/inception.py (e.g.
        pytorch-fid's, converted by `python -m jaxvision.pretrained.inception`).
      batch: images per jitted call.
      resize: the side images are resized to.

    Raises:
      ConfigError: `path` is not a file, or lacks a variable of the model or has one of another
        shape.
    """
    if not epath.Path(paths.resolve(path)).is_file():
      raise ConfigError(
        f'eval.inception_weights={path!r} is not a file; give an .npz of Inception-v3 '
        f'variables or leave eval.inception_weights empty'
      )
    self.model = inception.InceptionV3(resize=resize)
    want = traverse_util.flatten_dict(
      jax.eval_shape(self.model.init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3))), sep='/'
    )
    flat = writers.load_npz(path)
    for key, spec in want.items():
      if key not in flat or flat[key].shape != spec.shape:
        got = 'missing' if key not in flat else f'of shape {flat[key].shape}'
        raise ConfigError(
          f'eval.inception_weights={path}: {key} is {got}, Inception-v3 needs '
          f'{spec.shape}; convert the weights with the names of models/inception.py'
        )
    variables = unflatten_variables({k: flat[k].astype(np.float32) for k in want})
    self._batch, self.dims = batch, 2048
    prepare = jax.jit(functools.partial(inception.preprocess, size=resize))  # per input shape
    network = jax.jit(lambda x: self.model.apply(variables, x, method='pool_features'))  # once
    self._fn = lambda x: network(prepare(x))


def split_statistics(features, split, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of a split's features, read and featurised `batch` images at a time.

  Args:
    features: images [k, ...] in [0, 1] -> features [k, d], e.g. `InceptionFeatures`.
    split: a `data.split.Split` of uint8 images.
    batch: images read at a time.

  Returns:
    (mu f64[d], sigma f64[d, d]) of all the split's images.
  """
  running = RunningStats()
  for start in range(0, split.size, batch):
    idx = np.arange(start, min(start + batch, split.size))
    running.update(features(split.read(idx)['image'].astype(np.float32) / 255.0))
  return running.stats()


def write_split_statistics(config, weights: str, out: str, split: str | None = None) -> str:
  """Writes the Inception statistics of a split of `config`'s data as pytorch-fid's .npz.

  Args:
    config: an experiment config (its data: name, tfds_dir, scale, ...).
    weights: the converted Inception-v3 .npz.
    out: the .npz to write (keys mu, sigma).
    split: the split; default: the config's data.eval_split.

  Returns:
    One line saying what was written.

  Raises:
    ConfigError: the weights cannot be used; DataError: the split cannot be read.
  """
  data = pipeline.load_split(config.data, split or config.data.eval_split)
  mu, sigma = split_statistics(InceptionFeatures(weights), data, batch=500)
  save_stats(out, mu, sigma)
  return f'{out}: mu/sigma of {data.size} {data.name} {data.split} images (d={len(mu)})'


def _main():
  """`python -m jaxvision.evaluate.fid --config C[:preset] --weights W --out OUT [--split S]
  [--config.KEY=VALUE ...]`: absl flags and ml_collections' config overrides, as run.py."""
  config = config_flags.DEFINE_config_file('config', None, 'a config file, path.py[:preset]')
  weights = flags.DEFINE_string('weights', None, 'the converted Inception-v3 .npz')
  out = flags.DEFINE_string('out', None, 'the .npz to write (keys mu, sigma)')
  split = flags.DEFINE_string('split', None, "default: the config's data.eval_split")
  flags.mark_flags_as_required(['config', 'weights', 'out'])

  def main(argv):
    del argv
    try:
      print(write_split_statistics(config.value, weights.value, out.value, split.value))
    except BadInput as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)

  app.run(main)


if __name__ == '__main__':
  _main()
