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


def inception_crop(rng, images, size: int, min_area: float = 0.08):
  """Random-resized crop (area in [min_area, 1], aspect in [3/4, 4/3]) to size x size, then a
  random horizontal flip: the ImageNet training augmentation, on fixed-size input images."""
  chex.assert_rank(images, 4)
  n, h, w, c = images.shape
  area_rng, ratio_rng, y_rng, x_rng, flip_rng = jax.random.split(rng, 5)
  area = jax.random.uniform(area_rng, (n,), minval=min_area, maxval=1.0) * h * w
  ratio = jnp.exp(jax.random.uniform(ratio_rng, (n,), minval=jnp.log(3 / 4), maxval=jnp.log(4 / 3)))
  ch = jnp.clip(jnp.sqrt(area / ratio), 8.0, h)
  cw = jnp.clip(jnp.sqrt(area * ratio), 8.0, w)
  y0 = jax.random.uniform(y_rng, (n,)) * (h - ch)
  x0 = jax.random.uniform(x_rng, (n,)) * (w - cw)

  def crop(img, y0, x0, ch, cw):
    scale = jnp.stack([size / ch, size / cw])
    return jax.image.scale_and_translate(img, (size, size, c), (0, 1), scale,
                                         -jnp.stack([y0, x0]) * scale, method='linear')

  out = jax.vmap(crop)(images, y0, x0, ch, cw)
  flip = jax.random.bernoulli(flip_rng, 0.5, (n, 1, 1, 1))
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
