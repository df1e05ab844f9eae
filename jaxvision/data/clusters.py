"""Pseudo-labels without labels: data.clusters = K replaces every split's labels by cluster ids.

A self-conditioned GAN (Liu et al. 2020) is an unconditional generator that conditions G and D
on clusters of the training images instead of on classes: G learns K separate kinds of image
instead of one continuous map that passes through in-between shapes to reach every digit. The
clusters are balanced spectral clusters of the train split, found without its labels:

  1. shape features that ignore slant and brightness: each image (grey) deskewed by the shear
     that makes its second moments upright, then a histogram of oriented gradients (Dalal &
     Triggs 2005: 9 unsigned orientations, 20 degrees apart from 0, in every 4x4 cell,
     square-rooted, unit length);
  2. their first 50 principal components;
  3. a symmetric 10-nearest-neighbour graph there, Gaussian weights with per-image scales
     (Zelnik-Manor & Perona 2004), normalised D^-1/2 W D^-1/2;
  4. its 20 leading eigenvectors, each image's row scaled to unit length (Ng, Jordan & Weiss 2001);
  5. k-means there with balanced clusters: every cluster holds N / K images (within one), so
     drawing cluster ids uniformly -- what a conditional GAN's `sample` does -- reproduces the
     data's own distribution over them. Of 16 seeded starts, the one with the least squared
     distance to its centroids is kept.

On the mnist10k train split, 30 such clusters are 0.955 pure in the digits they never saw (0.90
with the pixels' principal components in step 1). Eval-split images take the majority cluster of
their 10 nearest train images (in the principal components). The fit is a function of the train
split and K alone (fixed seeds and ARPACK start vector; on another machine a different BLAS may
move an image at a border, which the ids hash in the split fingerprints of run.json shows),
computed once per process (about 14 s for 8,000 images here); it reads the whole train split
into memory.
"""

import dataclasses
import hashlib

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg

from jaxvision.errors import DataError

_CELL = 4
_ORIENTATIONS = 9
_COMPONENTS = 50
_NEIGHBOURS = 10
_EIGENVECTORS = 20
_ITERATIONS = 30
_STARTS = 16
_CHUNK = 1024
_FITS = {}  # (train split fingerprint, K) -> Fit


@dataclasses.dataclass(frozen=True)
class Fit:
  """The clusters of one train split: its projection and its ids, to label new images with."""

  mean: np.ndarray  # f32[F] the train split's mean features
  basis: np.ndarray  # f32[F, C] principal directions
  points: np.ndarray  # f32[N, C] the train images in them
  train_ids: np.ndarray  # i32[N] the train split's cluster ids
  k: int

  @property
  def tag(self) -> str:
    """K and a hash of the ids, for the split fingerprints in run.json: two runs (or machines,
    whose BLAS may move a border image) with the same tag trained on the same clusters."""
    return f'clusters={self.k},ids={hashlib.sha256(self.train_ids.tobytes()).hexdigest()[:12]}'

  def project(self, images: np.ndarray) -> np.ndarray:
    """Coordinates of images in the principal components of the train split's features.

    Args:
      images: [N, H, W, C], of the train split's image shape.

    Returns:
      f32[N, C], C = the number of components kept.
    """
    return (features(images) - self.mean) @ self.basis

  def nearest(self, images: np.ndarray) -> np.ndarray:
    """Cluster ids of new images: the majority id of their nearest train images.

    Args:
      images: [N, H, W, C], of the train split's image shape.

    Returns:
      i32[N] ids in [0, k).
    """
    x = self.project(images)
    votes = self.train_ids[_neighbours(x, self.points, _NEIGHBOURS)[0]]
    return np.array([np.bincount(v, minlength=self.k).argmax() for v in votes], np.int32)


def _deskew(image: np.ndarray) -> np.ndarray:
  """The image sheared along its rows so that its principal axis is vertical, centred."""
  h, w = image.shape
  r, c = np.mgrid[:h, :w]
  mass = image.sum() + 1e-9
  mr, mc = (r * image).sum() / mass, (c * image).sum() / mass
  var_r = ((r - mr) ** 2 * image).sum() / mass
  shear = ((r - mr) * (c - mc) * image).sum() / mass / (var_r + 1e-9)
  matrix = np.array([[1.0, 0.0], [shear, 1.0]])  # output (r, c) reads input (r, c + shear * r)
  centre = np.array([h / 2 - 0.5, w / 2 - 0.5])
  return scipy.ndimage.affine_transform(
    image, matrix, offset=np.array([mr, mc]) - matrix @ centre, order=1
  )


def features(images: np.ndarray) -> np.ndarray:
  """Histograms of oriented gradients of the deskewed grey images (step 1 above).

  Args:
    images: [N, H, W, C] (channels averaged to grey).

  Returns:
    f32[N, F], F = 9 orientations per 4x4 cell, each row of unit length.
  """
  grey = images.astype(np.float32).reshape(images.shape[:3] + (-1,)).mean(-1)
  n, h, w = grey.shape
  cells_r, cells_c = h // _CELL, w // _CELL
  grey = np.stack([_deskew(g) for g in grey])[:, : cells_r * _CELL, : cells_c * _CELL]
  dr, dc = np.zeros_like(grey), np.zeros_like(grey)
  dr[:, 1:-1] = grey[:, 2:] - grey[:, :-2]
  dc[:, :, 1:-1] = grey[:, :, 2:] - grey[:, :, :-2]
  magnitude = np.hypot(dr, dc)
  angle = np.mod(np.arctan2(dr, dc), np.pi)
  bins = (
    np.round(angle * (_ORIENTATIONS / np.pi)).astype(np.int32) % _ORIENTATIONS
  )  # 0 and pi: bin 0
  hist = magnitude[..., None] * (bins[..., None] == np.arange(_ORIENTATIONS))  # one-hot bins
  hist = hist.reshape(n, cells_r, _CELL, cells_c, _CELL, _ORIENTATIONS).sum((2, 4))
  hist = np.sqrt(hist.reshape(n, -1))
  return (hist / (np.linalg.norm(hist, axis=1, keepdims=True) + 1e-9)).astype(np.float32)


def _distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """Squared Euclidean distances [len(x), len(y)] between the rows of x and y."""
  return np.sum(x * x, 1)[:, None] - 2.0 * x @ y.T + np.sum(y * y, 1)[None]


def _neighbours(x: np.ndarray, points: np.ndarray, n: int, skip_self: bool = False):
  """Indices and squared distances of the n nearest `points` to each row of x, in chunks."""
  index, dist = [], []
  for start in range(0, len(x), _CHUNK):
    d = _distances(x[start : start + _CHUNK], points)
    if skip_self:
      d[np.arange(len(d)), np.arange(start, start + len(d))] = np.inf
    part = np.argpartition(d, n, axis=1)[:, :n]
    part_d = np.take_along_axis(d, part, 1)
    order = np.argsort(part_d, axis=1, kind='stable')
    index.append(np.take_along_axis(part, order, 1))
    dist.append(np.maximum(np.take_along_axis(part_d, order, 1), 0.0))
  return np.concatenate(index), np.concatenate(dist)


def balanced_assignment(d: np.ndarray) -> np.ndarray:
  """Each row to a column, every column taking floor or ceil of N / K rows: rows claim their
  nearest column with room left, those with most to lose (second choice worst) first.

  Args:
    d: distances [N, K] of N points to K centroids.

  Returns:
    i32[N] column of each row.
  """
  n, k = d.shape
  capacity = np.full(k, n // k) + (np.arange(k) < n % k)
  ranked = np.argsort(d, axis=1, kind='stable')
  rows = np.arange(n)
  regret = d[rows, ranked[:, 1]] - d[rows, ranked[:, 0]] if k > 1 else np.zeros(n)
  out = np.empty(n, np.int32)
  for i in np.argsort(-regret, kind='stable'):
    for c in ranked[i]:
      if capacity[c]:
        capacity[c] -= 1
        out[i] = c
        break
  return out


def _embedding(points: np.ndarray) -> np.ndarray:
  """Rows of the normalised k-NN graph's leading eigenvectors, unit length (steps 3 and 4)."""
  n = len(points)
  index, dist = _neighbours(points, points, _NEIGHBOURS, skip_self=True)
  scale = np.sqrt(dist[:, -1]) + 1e-12
  rows = np.repeat(np.arange(n), _NEIGHBOURS)
  weights = np.exp(-dist.ravel() / (scale[rows] * scale[index.ravel()]))
  w = scipy.sparse.csr_matrix((weights, (rows, index.ravel())), shape=(n, n))
  w = w.maximum(w.T)
  inv_sqrt_degree = scipy.sparse.diags(1.0 / np.sqrt(np.asarray(w.sum(1)).ravel()))
  _, vectors = scipy.sparse.linalg.eigsh(
    inv_sqrt_degree @ w @ inv_sqrt_degree, k=min(_EIGENVECTORS, n - 2), which='LA', v0=np.ones(n)
  )
  return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _balanced_kmeans(e: np.ndarray, k: int, seed: int):
  """(ids, sum of squared distances to their centroids) from k random rows of e as centroids."""
  centroids = e[np.random.default_rng(seed).choice(len(e), k, replace=False)]
  for _ in range(_ITERATIONS):
    ids = balanced_assignment(_distances(e, centroids))
    centroids = np.stack([e[ids == c].mean(0) for c in range(k)])
  return ids, float(_distances(e, centroids)[np.arange(len(e)), ids].sum())


def fit(images: np.ndarray, k: int) -> Fit:
  """Balanced spectral clusters of the images (steps 1-5 of the module docstring).

  Args:
    images: the train split's images [N, H, W, C].
    k: the number of clusters.

  Returns:
    The Fit: the projection, the train images in it and their ids.
  """
  f = features(images)
  mean = f.mean(0)
  centred = f - mean
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  basis = vt[:_COMPONENTS].T
  points = centred @ basis
  e = _embedding(points)
  ids, _ = min((_balanced_kmeans(e, k, seed) for seed in range(_STARTS)), key=lambda r: r[1])
  return Fit(mean, basis, points, ids, k)


def _fit_of(train, k: int) -> Fit:
  """The fit of K clusters to the train split's images, computed once per process; DataError
  unless 2 <= K <= half the train images."""
  if not 2 <= k <= train.size // 2:
    raise DataError(
      f'data.clusters={k} must be between 2 and half the {train.size} train images; '
      f'set --config.data.clusters=0 to use the labels'
    )
  key = (train.fingerprint, k)
  if key not in _FITS:
    _FITS[key] = fit(np.asarray(train.read(np.arange(train.size))['image']), k)
  return _FITS[key]


def relabel(split, data_config, is_train: bool, train_split):
  """The `Split` with cluster ids as labels and num_classes = data.clusters (0: unchanged).

  Args:
    split: the split to relabel.
    data_config: config.data (`clusters`).
    is_train: `split` is the train split: its ids come from the fit itself.
    train_split: () -> the train split as the clusters are fit on it (not relabelled); called
      when an eval split needs the fit, whose ids are those of its nearest train images.

  Returns:
    The relabelled split; its fingerprint gains the fit's `tag`.

  Raises:
    DataError: data.clusters is not between 2 and half the train images.
  """
  k = int(data_config.clusters)
  if not k:
    return split
  if is_train:
    found = _fit_of(split, k)
    ids = found.train_ids
  else:
    found = _fit_of(train_split(), k)
    ids = found.nearest(np.asarray(split.read(np.arange(split.size))['image']))
  read = split.read

  def read_relabelled(idx):
    batch = dict(read(idx))
    batch['label'] = ids[np.asarray(idx)]
    return batch

  return dataclasses.replace(
    split, num_classes=k, read=read_relabelled, fingerprint=f'{split.fingerprint}[{found.tag}]'
  )
