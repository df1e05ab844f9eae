"""Image grids for generative models (numpy; no files: the loop writes them).

grid = make_grid(images, rows)        # float [N,H,W,C] in [0,1] -> uint8 [h,w,C]
z = interpolation_latents(a, b, n)    # [rows, d] x2 -> [rows*n, d], rows of a->b
"""

import chex
import numpy as np


def to_uint8(images) -> np.ndarray:
  """Floats in [0, 1] (clipped) -> uint8.

  Args:
    images: an array-like of floats, any shape.

  Returns:
    uint8 of the same shape, round(255 * x).
  """
  return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def make_grid(images, rows: int, pad: int = 2, pad_value: int = 128) -> np.ndarray:
  """Tiles N images row-major into `rows` rows of ceil(N/rows) columns.

  Args:
    images: float [N, H, W, C] in [0, 1] (or uint8).
    rows: rows of the grid.
    pad: the border between and around the images, in pixels.
    pad_value: the grey of the borders and of empty cells.

  Returns:
    uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C].

  Raises:
    ValueError: rows <= 0 or no images.
  """
  images = np.asarray(images)
  chex.assert_rank(images, 4)
  if images.dtype != np.uint8:
    images = to_uint8(images)
  n, h, w, c = images.shape
  if rows <= 0 or n == 0:
    raise ValueError(f'make_grid needs rows > 0 and images, got rows={rows}, n={n}')
  cols = -(-n // rows)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, k = divmod(i, cols)
    y, x = pad + r * (h + pad), pad + k * (w + pad)
    grid[y : y + h, x : x + w] = images[i]
  return grid


def interpolation_latents(start, end, steps: int) -> np.ndarray:
  """Row r goes linearly from start[r] to end[r] in `steps` points.

  Args:
    start: [rows, d] latents.
    end: [rows, d] latents.
    steps: points per row, both ends included.

  Returns:
    f32[rows*steps, d], row-major: the points of row 0, then of row 1, ...
  """
  start, end = np.asarray(start, np.float32), np.asarray(end, np.float32)
  chex.assert_equal_shape([start, end])
  chex.assert_rank(start, 2)
  t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
  return ((1.0 - t) * start[:, None] + t * end[:, None]).reshape(-1, start.shape[1])
