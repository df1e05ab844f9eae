"""Fréchet distance and KID between generated and real images, on domain features.

The features are the hidden layer of a digit classifier that jaxvision trained
itself on the mnist10k train split (`jaxvision/assets/mnist10k_domain_cnn.*`,
made by `python run.py --config configs/cnn.py:domain`; its command, test
accuracy and params sha256 are in the .json next to the weights). Every eval of
a generator reports

  eval/fd        FD(features of eval.fd_samples generated images, features of the test split)
  eval/kid       unbiased KID (cubic polynomial kernel) between the same two sets
  eval/fd_floor  FD(real train images, real test images): what a perfect generator would score,
  eval/kid_floor with the same sample sizes, so `fd / fd_floor` is the honest figure.

An Inception-v3 FID is out of scope here (no weights can be downloaded); the
distances below take any feature matrices.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxvision.models import cnn

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'assets')
DOMAIN_WEIGHTS = os.path.join(ASSETS, 'mnist10k_domain_cnn.npz')


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) of two feature sets [n, d] (float64)."""
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  mu1, mu2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  return gaussian_frechet_distance(mu1, s1, mu2, s2)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
  w, v = np.linalg.eigh((m + m.T) / 2.0)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def gaussian_frechet_distance(mu1, s1, mu2, s2) -> float:
  """The Fréchet (2-Wasserstein) distance between N(mu1, s1) and N(mu2, s2).

  tr((S1 S2)^1/2) is computed as the sum of the square roots of the eigenvalues of the
  symmetric PSD matrix S1^1/2 S2 S1^1/2 (same spectrum), which stays exact when the
  covariances are singular (ReLU features that are always 0)."""
  r = _sqrt_psd(np.asarray(s1, np.float64))
  w = np.linalg.eigvalsh(r @ np.asarray(s2, np.float64) @ r)
  tr_covmean = np.sum(np.sqrt(np.clip(w, 0.0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, subsets: int = 50,
                              subset_size: int = 1000, seed: int = 0) -> float:
  """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, averaged over random subsets."""
  f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
  m = min(subset_size, len(f1), len(f2))
  d = f1.shape[1]
  rng = np.random.default_rng(seed)
  total = 0.0
  for _ in range(subsets):
    x = f1[rng.choice(len(f1), m, replace=False)]
    y = f2[rng.choice(len(f2), m, replace=False)]
    kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
    total += ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
              - 2.0 * kxy.mean())
  return float(total / subsets)


class DomainFeatures:
  """The committed digit classifier as a feature map: images in [0, 1], f32[n, 28, 28, 1] -> [n, d]."""

  def __init__(self, path: str = DOMAIN_WEIGHTS, batch: int = 500):
    with np.load(path) as f:
      flat = {k: np.asarray(v) for k, v in f.items()}
    with open(os.path.splitext(path)[0] + '.json', encoding='utf-8') as f:
      self.info = json.load(f)
    variables = _unflatten(flat)
    model = cnn.CNN(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.info['model'].items()})
    self._batch = batch
    self._fn = jax.jit(lambda x: model.apply(variables, x, train=False, features=True))

  def __call__(self, images) -> np.ndarray:
    images = np.asarray(images, np.float32)
    out = []
    for start in range(0, len(images), self._batch):
      chunk = images[start:start + self._batch]
      pad = self._batch - len(chunk)  # one compiled shape
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)]) if pad else chunk
      out.append(np.asarray(self._fn(chunk))[:self._batch - pad])
    return np.concatenate(out)


def flatten_variables(variables) -> dict:
  """{'params': {'Conv_0': {'kernel': ...}}} -> {'params/Conv_0/kernel': ...} for np.savez."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]:
    flat['/'.join(p.key for p in path)] = np.asarray(leaf)
  return flat


def _unflatten(flat: dict) -> dict:
  out = {}
  for key, value in flat.items():
    node = out
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = jnp.asarray(value)
  return out


class GenerativeMetrics:
  """FD/KID of a task's `sample(state, rng, n)` against the eval split, with the real floor."""

  def __init__(self, config, task, train_split, eval_split, features: DomainFeatures | None = None):
    from jaxvision.config import ConfigError  # pylint: disable=g-import-not-at-top
    if tuple(train_split.image_shape) != (28, 28, 1):
      raise ConfigError(f'eval.fd_samples={config.eval.fd_samples} needs 28x28x1 digits (the domain '
                        f'features are a digit classifier), not {config.data.name} images of '
                        f'{train_split.image_shape}; set --config.eval.fd_samples=0')
    if features is None and not os.path.exists(DOMAIN_WEIGHTS):
      raise ConfigError(f'eval.fd_samples needs the domain feature network {DOMAIN_WEIGHTS}, which is '
                        f'missing; reinstall jaxvision or set --config.eval.fd_samples=0')
    self.features = features or DomainFeatures()
    self.task, self.n, self.seed = task, int(config.eval.fd_samples), int(config.seed)
    read_all = lambda split: split.read(np.arange(split.size))['image'].astype(np.float32) / 255.0
    self.real_eval = self.features(read_all(eval_split))
    real_train = self.features(read_all(train_split))
    self.floor = {'eval/fd_floor': frechet_distance(real_train, self.real_eval),
                  'eval/kid_floor': kernel_inception_distance(real_train, self.real_eval)}
    self._sample = jax.jit(task.sample, static_argnums=2)

  def __call__(self, state) -> dict:
    key = jax.random.fold_in(jax.random.PRNGKey(self.seed), 0xFD)
    chunk = 500
    images = [np.asarray(self._sample(state, jax.random.fold_in(key, i), chunk))
              for i in range(-(-self.n // chunk))]
    fake = self.features(np.concatenate(images)[:self.n])
    return {'eval/fd': frechet_distance(fake, self.real_eval),
            'eval/kid': kernel_inception_distance(fake, self.real_eval), **self.floor}


def export_domain_features(workdir: str, path: str = DOMAIN_WEIGHTS) -> dict:
  """Writes the latest checkpoint of a `configs/cnn.py:domain` run as the feature network."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from jaxvision import checkpoint, train, writers  # pylint: disable=g-import-not-at-top
  info = writers.read_json(os.path.join(workdir, 'run.json'))
  config = ml_collections.ConfigDict(info['config'])
  exp = train.setup(config, workdir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), config.train.keep_ckpts)
  try:
    step, state = ckpt.restore(exp.state)
  finally:
    ckpt.close()
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.savez(path, **flatten_variables(variables))
  model = {k: v for k, v in config.model.to_dict().items() if k not in ('name', 'conv_impl')}
  model = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
  meta = {'made_by': 'python run.py --config configs/cnn.py:domain --workdir WORKDIR; '
                     'python -m jaxvision.evaluate.generative WORKDIR',
          'model': model, 'step': step, 'params_sha256': train.params_sha256(state.params),
          'test_metrics': info.get('final_metrics'), 'data': info['data'], 'git_commit': info['git_commit']}
  with open(os.path.splitext(path)[0] + '.json', 'w', encoding='utf-8') as f:
    json.dump(meta, f, indent=1)
  return meta


if __name__ == '__main__':
  import sys  # pylint: disable=g-import-not-at-top
  print(json.dumps(export_domain_features(sys.argv[1]), indent=1))
