"""Improved precision and recall of a generator (Kynkäänniemi et al. 2019).

Each set of features approximates its manifold by the union of balls around its points, a
point's radius being the distance to its k-th nearest neighbour within the set (k = 3, as in the
paper). Precision is the fraction of generated points that fall inside the real manifold (are
the samples realistic?); recall is the fraction of real points inside the generated manifold
(does the generator cover the data?). A generator that collapses onto a few images keeps its
precision and loses its recall. Both sets should be of the same size: a larger set has smaller
balls.
"""

import numpy as np


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """||a_i - b_j||^2 [len(a), len(b)] (float64, clipped at 0)."""
  d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
  return np.maximum(d, 0.0)


def knn_radii(features: np.ndarray, k: int = 3, chunk: int = 1000) -> np.ndarray:
  """The squared distance of every point to its k-th nearest other point of the same set.

  Args:
    features: [n, d], n > k.
    k: which neighbour.
    chunk: rows of the distance matrix computed at once.

  Returns:
    float64[n] squared radii.
  """
  f = np.asarray(features, np.float64)
  out = []
  for start in range(0, len(f), chunk):
    d = _squared_distances(f[start : start + chunk], f)
    out.append(np.partition(d, k, axis=1)[:, k])  # column 0 of the sorted row is the point itself
  return np.concatenate(out)


def coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1000):
  """The fraction of `points` inside at least one ball (centres[j], radii[j]).

  Args:
    points: [m, d].
    centres: [n, d].
    radii: squared radii [n] of the balls.
    chunk: rows of the distance matrix computed at once.

  Returns:
    The fraction in [0, 1].
  """
  p, c = np.asarray(points, np.float64), np.asarray(centres, np.float64)
  inside = 0
  for start in range(0, len(p), chunk):
    inside += int((_squared_distances(p[start : start + chunk], c) <= radii[None]).any(1).sum())
  return inside / len(p)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
  """Improved precision and recall of `fake` with respect to `real`.

  Args:
    real: features [n, d] of real images.
    fake: features [m, d] of generated images (ideally m == n).
    k: the neighbour that sets each ball's radius.

  Returns:
    (precision, recall), each in [0, 1].
  """
  precision = coverage(fake, real, knn_radii(real, k))
  recall = coverage(real, fake, knn_radii(fake, k))
  return precision, recall
