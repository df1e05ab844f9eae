"""Random augmentation as pure jax functions, run inside the jitted train step
with a key derived from the state (so a step is a function of state and batch).
Every per-image draw goes through `parallel.batch_rows`, so the pmap path
augments each image as the jit path does."""
import chex
import jax
import jax.numpy as jnp

from jaxvision import parallel


def _random_crop(rng, images, pad: int, fill):
  """Pads by `pad` with `fill` and crops back at a random offset per image."""
  chex.assert_rank(images, 4)
  n, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
  offsets = parallel.batch_rows(lambda s: jax.random.randint(rng, s, 0, 2 * pad + 1), (n, 2))
  crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, img.shape[-1]))
  return jax.vmap(crop)(padded, offsets)


def _flip(rng, n: int):
  return parallel.batch_rows(lambda s: jax.random.bernoulli(rng, 0.5, s), (n, 1, 1, 1))


def random_shift(rng, images, max_shift: int, fill):
  """Translates each image by up to ±max_shift pixels in x and y."""
  return _random_crop(rng, images, max_shift, fill)


def random_crop_flip(rng, images, pad: int, fill):
  """CIFAR-style: random crop from a padded image, then a random horizontal flip."""
  crop_rng, flip_rng = jax.random.split(rng)
  images = _random_crop(crop_rng, images, pad, fill)
  flip = _flip(flip_rng, images.shape[0])
  return jnp.where(flip, images[:, :, ::-1, :], images)


def inception_crop(rng, images, size: int, min_area: float = 0.08):
  """Random-resized crop (area in [min_area, 1], aspect in [3/4, 4/3]) to size x size, then a
  random horizontal flip: the ImageNet training augmentation, on fixed-size input images."""
  chex.assert_rank(images, 4)
  n, h, w, c = images.shape
  area_rng, ratio_rng, y_rng, x_rng, flip_rng = jax.random.split(rng, 5)
  uniform = lambda rng, lo=0.0, hi=1.0: parallel.batch_rows(
      lambda s: jax.random.uniform(rng, s, minval=lo, maxval=hi), (n,))
  area = uniform(area_rng, min_area, 1.0) * h * w
  ratio = jnp.exp(uniform(ratio_rng, jnp.log(3 / 4), jnp.log(4 / 3)))
  ch = jnp.clip(jnp.sqrt(area / ratio), 8.0, h)
  cw = jnp.clip(jnp.sqrt(area * ratio), 8.0, w)
  y0 = uniform(y_rng) * (h - ch)
  x0 = uniform(x_rng) * (w - cw)

  def crop(img, y0, x0, ch, cw):
    scale = jnp.stack([size / ch, size / cw])
    return jax.image.scale_and_translate(img, (size, size, c), (0, 1), scale,
                                         -jnp.stack([y0, x0]) * scale, method='linear')

  out = jax.vmap(crop)(images, y0, x0, ch, cw)
  flip = _flip(flip_rng, n)
  return jnp.where(flip, out[:, :, ::-1, :], out)


def apply(kind: str, rng, images, amount: int, fill, size: int = 0):
  """`amount` is the shift or padding in pixels; `size` the output of inception_crop."""
  if images.ndim == 5:  # sequences of frames [B, T, H, W, C]: every frame on its own
    out = apply(kind, rng, images.reshape(-1, *images.shape[2:]), amount, fill, size)
    return out.reshape(*images.shape[:2], *out.shape[1:])
  if kind == 'none':
    return images
  if kind == 'shift':
    return random_shift(rng, images, amount, fill)
  if kind == 'crop_flip':
    return random_crop_flip(rng, images, amount, fill)
  if kind == 'inception_crop':
    return inception_crop(rng, images, size)
  raise ValueError(f'data.augment={kind!r}; use none, shift, crop_flip or inception_crop')
