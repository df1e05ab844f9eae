"""Random augmentation as pure jax functions, run inside the jitted train step
with a key derived from the state (so a step is a function of state and batch)."""
import chex
import jax
import jax.numpy as jnp


def _random_crop(rng, images, pad: int, fill):
  """Pads by `pad` with `fill` and crops back at a random offset per image."""
  chex.assert_rank(images, 4)
  n, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
  offsets = jax.random.randint(rng, (n, 2), 0, 2 * pad + 1)
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def random_shift(rng, images, max_shift: int, fill):
  """Translates each image by up to ±max_shift pixels in x and y."""
  return _random_crop(rng, images, max_shift, fill)


def random_crop_flip(rng, images, pad: int, fill):
  """CIFAR-style: random crop from a padded image, then a random horizontal flip."""
  crop_rng, flip_rng = jax.random.split(rng)
  images = _random_crop(crop_rng, images, pad, fill)
  flip = jax.random.bernoulli(flip_rng, 0.5, (images.shape[0], 1, 1, 1))
  return jnp.where(flip, images[:, :, ::-1, :], images)


def apply(kind: str, rng, images, amount: int, fill):
  if kind == 'none':
    return images
  if kind == 'shift':
    return random_shift(rng, images, amount, fill)
  if kind == 'crop_flip':
    return random_crop_flip(rng, images, amount, fill)
  raise ValueError(f'data.augment={kind!r}; use none, shift or crop_flip')
