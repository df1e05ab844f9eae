"""Generative adversarial networks: a generator and a discriminator in one module.

Every GAN here has the same interface (the task in `jaxvision/tasks/gan.py`
relies on it); parameters live under two top-level names, `generator` and
`discriminator`, so the task can give each its own optimizer:

    images = model.apply(v, z, y, train=..., method='generate')  # f32[B, *image_shape] in [-1, 1]
    logits = model.apply(v, images, y, train=..., method='discriminate')  # f32[B]
    logits = model.apply(v, z, y, train=False)  # D(G(z)): for init

`y` (int labels i32[B]) is used by conditional models (`num_classes` > 0)
and must be None otherwise. `image_shape` is set by the task from the data.

* `MLPGAN`: a fully connected GAN (LeakyReLU 0.2, dropout in D).
* `DCGAN`: generator dense -> base x base x 4f -> stride-2 transposed convs
  with BatchNorm -> tanh (7x7 -> 28x28 for digits, 4x4 -> 32x32 for CIFAR,
  4x4 -> 64x64 for CelebA); discriminator strided convs with LeakyReLU.

With `num_classes` > 0 a model is conditional: G gets a label embedding
concatenated to z; D gets either the embedding concatenated to its input
features (`conditioning='concat'`) or a projection term <embed(y), h>
(`conditioning='projection'`, Miyato & Koyama 2018).

With `info_codes` = K > 0 (DCGAN, unconditional) the model is an InfoGAN (Chen et
al. 2016): G takes a K-way categorical code c in place of a label (embedded the
same way), and D has a second head Q(c | x) on its features,

    logits, code_logits = model.apply(v, images, train=..., method='discriminate_codes')
    # f32[B], f32[B, K]

so the task can reward G for codes that Q recovers from the image: G learns K
discrete kinds of image, which on digits are mostly the classes, and stops
making the in-between shapes a continuous latent alone gives.
"""

import math

import chex
import flax.linen as nn
import jax.numpy as jnp

from jaxvision import parallel
from jaxvision.models import layers

CONDITIONINGS = ('concat', 'projection')


class _Logits(nn.Module):
  """The discriminator's last step: logits from features h (and labels y); with
  `info_codes` > 0 also the code logits of an InfoGAN's Q head, (logits, code_logits). Computed
  in `dtype`; the logits are returned in float32, for the losses."""

  num_classes: int
  conditioning: str
  info_codes: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h, y):
    """Features [B, F] (in `dtype`) and labels i32[B] (or None) -> logits f32[B], or (logits,
    code logits f32[B, info_codes]) for an InfoGAN."""
    logits = nn.Dense(1, name='out', dtype=self.dtype)(h)[:, 0].astype(jnp.float32)
    if self.num_classes and self.conditioning == 'projection':
      embed = nn.Embed(self.num_classes, h.shape[-1], name='label_projection', dtype=self.dtype)(y)
      logits = logits + jnp.sum(embed * h, axis=-1, dtype=jnp.float32)
    if not self.info_codes:
      return logits
    q = nn.leaky_relu(nn.Dense(128, name='code_hidden', dtype=self.dtype)(h), 0.2)
    return logits, nn.Dense(self.info_codes, name='code', dtype=self.dtype)(q).astype(jnp.float32)


def _with_label_embedding(h, y, num_classes: int, dtype):
  """h [B, F] with a learned 50-feature embedding of the labels y appended (the calling module's
  submodule 'label_embed'), in `dtype`."""
  return jnp.concatenate([h, nn.Embed(num_classes, 50, name='label_embed', dtype=dtype)(y)], -1)


class MLPGenerator(nn.Module):
  """Fully connected G: [z; label embedding] -> `hidden` dense layers (LeakyReLU 0.2) -> tanh
  pixels of `image_shape`. `num_classes` > 0 embeds y (50 features). Computed in `dtype`."""

  hidden: tuple[int, ...]
  num_classes: int
  image_shape: tuple[int, ...]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z, y, *, train: bool):
    """Generates images.

    Args:
      z: latents f32[B, latents].
      y: labels i32[B] when `num_classes` > 0, else None.
      train: unused (no BatchNorm or dropout).

    Returns:
      Images f32[B, *image_shape] in [-1, 1].
    """
    del train
    h = z.astype(self.dtype)
    if self.num_classes:
      h = _with_label_embedding(h, y, self.num_classes, self.dtype)
    for i, width in enumerate(self.hidden):
      h = nn.leaky_relu(nn.Dense(width, name=f'dense{i}', dtype=self.dtype)(h), 0.2)
    out = nn.Dense(math.prod(self.image_shape), name='out', dtype=self.dtype)(h)
    return jnp.tanh(out).reshape(z.shape[0], *self.image_shape).astype(jnp.float32)


class MLPDiscriminator(nn.Module):
  """Fully connected D: flattened pixels [; label embedding] -> `hidden` dense layers
  (LeakyReLU 0.2, dropout `dropout`) -> `_Logits`. Computed in `dtype`."""

  hidden: tuple[int, ...]
  dropout: float
  num_classes: int
  conditioning: str
  batch_split: parallel.BatchSplit | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, y, *, train: bool):
    """Scores images.

    Args:
      x: images f32[B, ...].
      y: labels i32[B] when `num_classes` > 0, else None.
      train: dropout on.

    Returns:
      Logits f32[B].
    """
    h = x.reshape(x.shape[0], -1).astype(self.dtype)
    if self.num_classes and self.conditioning == 'concat':
      h = _with_label_embedding(h, y, self.num_classes, self.dtype)
    for i, width in enumerate(self.hidden):
      h = nn.leaky_relu(nn.Dense(width, name=f'dense{i}', dtype=self.dtype)(h), 0.2)
      h = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(h)
    return _Logits(self.num_classes, self.conditioning, dtype=self.dtype, name='head')(h, y)


def dcgan_geometry(image_shape) -> tuple[int, int]:
  """The DCGAN's resolutions for an image shape.

  Args:
    image_shape: (H, W, ...) of the images.

  Returns:
    (base, ups): G starts at base x base and doubles `ups` times; 28 -> 7 x 2^2, 32 -> 4 x 2^3,
    64 -> 4 x 2^4.

  Raises:
    ValueError: the images are not square, or not 7 * 2^n or 4 * 2^n pixels on a side (n >= 1).
  """
  h, w = image_shape[:2]
  base = 7 if h % 7 == 0 else 4
  ups = round(math.log2(max(h // base, 1)))
  if h != w or ups < 1 or base * 2**ups != h:
    raise ValueError(
      f'DCGAN makes square images of 7 * 2^n or 4 * 2^n pixels (28, 32, 64, ...), '
      f'not {h}x{w}; resize the data with --config.data.image_size'
    )
  return base, ups


def _upsample_2x(
  features: int, upsample: str, conv_impl: str, name: str, dtype, use_bias: bool = False
):
  """A stride-2 upsampling conv, computed in `dtype`: a 4x4 transposed conv, or the sub-pixel
  form (a 3x3 conv to 4x the channels at the low resolution, then depth-to-space), which covers
  every 4x4 stride-2 transposed conv and runs several times faster on CPU."""
  if upsample == 'transpose':
    return nn.ConvTranspose(
      features, (4, 4), strides=(2, 2), use_bias=use_bias, name=name, dtype=dtype
    )
  conv = layers.Conv(
    4 * features, (3, 3), padding='SAME', use_bias=use_bias, impl=conv_impl, name=name, dtype=dtype
  )
  return lambda x: layers.depth_to_space(conv(x), 2)


class DCGANGenerator(nn.Module):
  """DCGAN G: [z; label embedding] -> dense to base x base x `features` * 2^ups -> upsampling
  convs (BatchNorm, ReLU) halving the channels at each doubling -> tanh pixels. Computed in
  `dtype`; the BatchNorm statistics are float32 either way."""

  features: int
  num_classes: int
  bn_momentum: float
  image_shape: tuple[int, ...]
  upsample: str = 'subpixel'
  conv_impl: str = 'im2col'
  batch_split: parallel.BatchSplit | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z, y, *, train: bool):
    """Generates images.

    Args:
      z: latents f32[B, latents].
      y: labels or codes i32[B] when `num_classes` > 0, else None.
      train: BatchNorm on batch statistics (True) or on its running averages.

    Returns:
      Images f32[B, *image_shape] in [-1, 1].

    Raises:
      ValueError: `image_shape` is not one the DCGAN can make (see `dcgan_geometry`).
    """
    base, ups = dcgan_geometry(self.image_shape)
    norm = lambda name: layers.batch_norm(
      self.batch_split,
      use_running_average=not train,
      momentum=self.bn_momentum,
      name=name,
      dtype=self.dtype,
    )
    up = lambda features, name, use_bias=False: _upsample_2x(
      features, self.upsample, self.conv_impl, name, self.dtype, use_bias
    )
    h = z.astype(self.dtype)
    if self.num_classes:
      h = _with_label_embedding(h, y, self.num_classes, self.dtype)
    h = nn.Dense(
      base * base * self.features * 2**ups, use_bias=False, name='dense', dtype=self.dtype
    )(h)
    h = nn.relu(norm('norm0')(h.reshape(z.shape[0], base, base, -1)))
    for i in range(ups - 1):
      h = up(self.features * 2 ** (ups - 1 - i), f'deconv{i}')(h)
      h = nn.relu(norm(f'norm{i + 1}')(h))
    return jnp.tanh(up(self.image_shape[-1], 'out', use_bias=True)(h)).astype(jnp.float32)


class DCGANDiscriminator(nn.Module):
  """DCGAN D: stride-2 4x4 convs (LeakyReLU 0.2, dropout) doubling the channels from `features`,
  one per doubling of the generator, then `_Logits` on the flattened features."""

  features: int
  dropout: float
  num_classes: int
  conditioning: str
  conv_impl: str = 'im2col'
  info_codes: int = 0
  batch_split: parallel.BatchSplit | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, y, *, train: bool):
    """Scores images.

    Args:
      x: images f32[B, H, W, C].
      y: labels i32[B] when `num_classes` > 0, else None.
      train: dropout on.

    Returns:
      Logits f32[B]; with `info_codes` > 0, (logits, code logits f32[B, info_codes]).
    """
    _, ups = dcgan_geometry(x.shape[1:])
    h = x.astype(self.dtype)
    if self.num_classes and self.conditioning == 'concat':  # one label plane, learned per class
      plane = nn.Embed(self.num_classes, 1, name='label_embed', dtype=self.dtype)(y)
      plane = plane[:, None, None, :]
      h = jnp.concatenate([h, jnp.broadcast_to(plane, (*x.shape[:3], 1))], -1)
    for i in range(ups):
      conv = layers.Conv(
        self.features * 2**i,
        (4, 4),
        strides=(2, 2),
        padding='SAME',
        impl=self.conv_impl,
        name=f'conv{i}',
        dtype=self.dtype,
      )
      h = nn.leaky_relu(conv(h), 0.2)
      h = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(h)
    return _Logits(self.num_classes, self.conditioning, self.info_codes, self.dtype, name='head')(
      h.reshape(x.shape[0], -1), y
    )


class _GAN(nn.Module):
  """Shared interface; subclasses build `self.generator` and `self.discriminator` in setup."""

  info_codes = 0  # InfoGAN's categorical code (DCGAN only)

  @property
  def generator_classes(self) -> int:
    """How many values G's second input takes: labels (conditional), codes (InfoGAN) or 0."""
    return self.num_classes or self.info_codes

  def _check(self, y, n: int, classes: int, what: str) -> None:
    """ValueError for a bad `conditioning`, info_codes on a conditional model, or a `y` that
    this model must (classes > 0) or must not get."""
    if self.conditioning not in CONDITIONINGS:
      raise ValueError(f'model.conditioning={self.conditioning!r}; use one of {CONDITIONINGS}')
    if self.num_classes and self.info_codes:
      raise ValueError('model.info_codes is for unconditional GANs; set model.num_classes=0')
    if classes:
      if y is None:
        raise ValueError(
          f'this GAN (model.num_classes={self.num_classes}, model.info_codes='
          f'{self.info_codes}) needs {what} y'
        )
      chex.assert_shape(y, (n,))
    elif y is not None:
      raise ValueError(f'an unconditional GAN (model.num_classes = 0) takes no {what}')

  def generate(self, z, y=None, *, train: bool):
    """G: images from latents and labels (conditional) or codes (InfoGAN).

    Args:
      z: latents f32[B, latents].
      y: labels or codes i32[B] for a conditional model or an InfoGAN, else None.
      train: BatchNorm on batch statistics (a DCGAN's; its running averages are updated when
        `batch_stats` is mutable).

    Returns:
      Images f32[B, *image_shape] in [-1, 1].

    Raises:
      ValueError: `y` is missing for a model that needs it or given to one that does not, or a
        field is out of its allowed values.
    """
    chex.assert_shape(z, (None, self.latents))
    self._check(y, z.shape[0], self.generator_classes, 'labels or codes')
    images = self.generator(z, y, train=train)
    chex.assert_shape(images, (z.shape[0], *self.image_shape))
    return images

  def discriminate(self, x, y=None, *, train: bool):
    """D: the logits that images are real.

    Args:
      x: images f32[B, *image_shape] in [-1, 1].
      y: labels i32[B] for a conditional model, else None.
      train: dropout on.

    Returns:
      Logits f32[B] (an InfoGAN's code logits are dropped; see `discriminate_codes`).
    """
    logits = self.discriminate_codes(x, y, train=train)
    return logits[0] if self.info_codes else logits

  def discriminate_codes(self, x, y=None, *, train: bool):
    """D with an InfoGAN's Q head.

    Args:
      x: images f32[B, *image_shape] in [-1, 1].
      y: labels i32[B] for a conditional model, else None.
      train: dropout on.

    Returns:
      D's logits f32[B]; for an InfoGAN (logits, code logits f32[B, info_codes]).
    """
    chex.assert_shape(x, (None, *self.image_shape))
    self._check(y, x.shape[0], self.num_classes, 'labels')
    out = self.discriminator(x, y, train=train)
    chex.assert_shape(
      out, [(x.shape[0],), (x.shape[0], self.info_codes)] if self.info_codes else (x.shape[0],)
    )
    return out

  def __call__(self, z, y=None, *, train: bool = False):
    """D(G(z, y)), which creates every parameter: what `init` calls.

    Args:
      z: latents f32[B, latents].
      y: labels (conditional) or codes (InfoGAN) i32[B], else None.
      train: as in `generate` and `discriminate`.

    Returns:
      As `discriminate_codes`, on the generated images.
    """
    return self.discriminate_codes(
      self.generate(z, y, train=train), None if self.info_codes else y, train=train
    )


class MLPGAN(_GAN):
  """The fully connected GAN.

  Attributes:
    latents: the size of z.
    g_hidden: widths of G's hidden layers.
    d_hidden: widths of D's hidden layers.
    d_dropout: D's dropout rate.
    num_classes: > 0: conditional on labels of this many classes; 0: unconditional.
    conditioning: how D takes the label: 'concat' or 'projection' (see the module docstring).
    image_shape: the images' (H, W, C); the task sets it from the data.
    batch_split: the pmap path's batch layout (train steps); None under jit.
    dtype: the computation dtype of both networks' activations and matmuls (config.dtype, set by
      the task); the parameters are float32 either way, and so are the images and logits they
      return.
  """

  latents: int = 100
  g_hidden: tuple[int, ...] = (256, 512, 1024)
  d_hidden: tuple[int, ...] = (1024, 512, 256)
  d_dropout: float = 0.3
  num_classes: int = 0
  conditioning: str = 'concat'
  image_shape: tuple[int, ...] = (28, 28, 1)
  batch_split: parallel.BatchSplit | None = None  # the pmap path's batch layout (train steps)
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    self.generator = MLPGenerator(self.g_hidden, self.num_classes, self.image_shape, self.dtype)
    self.discriminator = MLPDiscriminator(
      self.d_hidden,
      self.d_dropout,
      self.num_classes,
      self.conditioning,
      self.batch_split,
      self.dtype,
    )


class DCGAN(_GAN):
  """The convolutional GAN (see the module docstring for its layers and InfoGAN mode).

  Attributes:
    latents: the size of z.
    g_features: G's channel unit: its layer at 1/2^k of the output resolution has
      g_features * 2^k channels.
    d_features: channels of D's first conv, doubled at each stride.
    d_dropout: D's dropout rate.
    num_classes: > 0: conditional on labels of this many classes; 0: unconditional.
    conditioning: how D takes the label: 'concat' or 'projection'.
    bn_momentum: momentum of G's BatchNorm running averages.
    upsample: 'subpixel' (3x3 conv to 4x the channels, then depth-to-space) or 'transpose'.
    conv_impl: the `layers.Conv` implementation, 'xla', 'xla_subpixel' or 'im2col'.
    info_codes: > 0: an InfoGAN with a categorical code of this many values (num_classes = 0).
    image_shape: the images' (H, W, C); the task sets it from the data.
    batch_split: the pmap path's batch layout (train steps); None under jit.
    dtype: the computation dtype of both networks' activations and matmuls (config.dtype, set by
      the task); the parameters and G's BatchNorm statistics are float32 either way, and so are
      the images and logits they return.
  """

  latents: int = 100
  g_features: int = 64  # G's layer at 1/2^k of the output resolution has g_features * 2^k
  d_features: int = 64  # channels of the first conv, doubled at each stride
  d_dropout: float = 0.0
  num_classes: int = 0
  conditioning: str = 'projection'
  bn_momentum: float = 0.9
  upsample: str = 'subpixel'  # or 'transpose' (nn.ConvTranspose 4x4, stride 2)
  conv_impl: str = 'im2col'
  info_codes: int = 0  # > 0: an InfoGAN with a categorical code of this many values
  image_shape: tuple[int, ...] = (28, 28, 1)
  batch_split: parallel.BatchSplit | None = None  # the pmap path's batch layout (train steps)
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    if self.upsample not in ('subpixel', 'transpose'):
      raise ValueError(f'model.upsample={self.upsample!r}; use subpixel or transpose')
    self.generator = DCGANGenerator(
      self.g_features,
      self.generator_classes,
      self.bn_momentum,
      self.image_shape,
      self.upsample,
      self.conv_impl,
      self.batch_split,
      self.dtype,
    )
    self.discriminator = DCGANDiscriminator(
      self.d_features,
      self.d_dropout,
      self.num_classes,
      self.conditioning,
      self.conv_impl,
      self.info_codes,
      self.batch_split,
      self.dtype,
    )
