"""Random augmentation as pure jax functions, run inside the jitted train step
with a key derived from the state (so a step is a function of state and batch).
Every per-image draw goes through `parallel.batch_rows` with the step's `split`
(None under jit), so the pmap path augments each image as the jit path does."""

import chex
import jax
import jax.numpy as jnp

from jaxvision import parallel


def _random_crop(rng, images, pad: int, fill, split=None):
  """Pads by `pad` with `fill` and crops back at a random offset per image."""
  chex.assert_rank(images, 4)
  n, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
  offsets = parallel.batch_rows(split, lambda s: jax.random.randint(rng, s, 0, 2 * pad + 1), (n, 2))
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def _flip(rng, n: int, split=None):
  """bool[n, 1, 1, 1]: which of n images to flip (probability 1/2 each)."""
  return parallel.batch_rows(split, lambda s: jax.random.bernoulli(rng, 0.5, s), (n, 1, 1, 1))


def random_shift(rng, images, max_shift: int, fill, split=None):
  """Translates each image by up to ±max_shift pixels in x and y.

  Args:
    rng: the key of the draw.
    images: f32[B, H, W, C].
    max_shift: the largest shift in pixels.
    fill: the value of the pixels shifted in.
    split: the pmap path's `parallel.BatchSplit` (None under jit).

  Returns:
    The shifted images f32[B, H, W, C].
  """
  return _random_crop(rng, images, max_shift, fill, split)


def random_crop_flip(rng, images, pad: int, fill, split=None):
  """CIFAR-style: random crop from a padded image, then a random horizontal flip.

  Args:
    rng: the key of the draws.
    images: f32[B, H, W, C].
    pad: the padding on every side, in pixels.
    fill: the value of the padded pixels.
    split: the pmap path's `parallel.BatchSplit` (None under jit).

  Returns:
    The augmented images f32[B, H, W, C].
  """
  crop_rng, flip_rng = jax.random.split(rng)
  images = _random_crop(crop_rng, images, pad, fill, split)
  flip = _flip(flip_rng, images.shape[0], split)
  return jnp.where(flip, images[:, :, ::-1, :], images)


def apply(kind: str, rng, images, amount: int, fill, split=None):
  """Augments a batch of images inside a train step.

  Args:
    kind: 'none', 'shift', 'crop_flip' or 'inception_crop' (config.data.augment); the input
      pipeline has done inception_crop already, on the host (`jaxvision/data/images.py`), so it
      leaves the batch as it is here.
    rng: the step's augmentation key.
    images: f32[B, H, W, C], or frame sequences f32[B, T, H, W, C] (every frame on its own).
    amount: the shift or padding in pixels (config.data.shift).
    fill: the value of padded pixels, the data's background.
    split: the pmap path's `parallel.BatchSplit` (None under jit).

  Returns:
    The augmented batch, of the shape of `images`.

  Raises:
    ValueError: `kind` is not one of the four.
  """
  if images.ndim == 5:
    out = apply(kind, rng, images.reshape(-1, *images.shape[2:]), amount, fill, split)
    return out.reshape(*images.shape[:2], *out.shape[1:])
  if kind in ('none', 'inception_crop'):
    return images
  if kind == 'shift':
    return random_shift(rng, images, amount, fill, split)
  if kind == 'crop_flip':
    return random_crop_flip(rng, images, amount, fill, split)
  raise ValueError(f'data.augment={kind!r}; use none, shift, crop_flip or inception_crop')
