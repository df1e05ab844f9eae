"""A UNet for diffusion and flow matching (Ho et al. 2020; Nichol & Dhariwal 2021's layout).

    out = model.apply(variables, x, t, y, train=...)   # x f32[B, H, W, C], t f32[B] in [0, 1]

The output has the input's shape: the noise, the velocity or the flow's velocity that the task
regresses. Time is continuous, t in [0, 1], embedded with sinusoids (of 1000 t) and an MLP.
Every resolution has `blocks` residual blocks (GroupNorm, SiLU, 3x3 convs, the time (and class)
embedding added in between); self-attention follows the blocks at the sides listed in
`attention`; the decoder mirrors the encoder with the encoder's activations concatenated (the
skip connections). With `num_classes` = K > 0 the model is conditional: a learned embedding of
the label is added to the time embedding, and the label K means "no label" (classifier-free
guidance trains the unconditional model on the same network by dropping labels).

For 28x28 digits the default is three resolutions, 28, 14 and 7, with attention at 7x7.
"""

import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision import parallel
from jaxvision.models import layers


def timestep_embedding(t, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of t in [0, 1] (scaled to 0 ... 1000, as the discrete DDPM's steps).

  Args:
    t: f32[B].
    dim: the embedding's width (even).
    max_period: the longest wavelength.

  Returns:
    f32[B, dim]: cosines then sines of 1000 t at `dim` / 2 geometric frequencies.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = 1000.0 * t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def _conv(features: int, name: str, dtype, zero: bool = False, strides: int = 1):
  """A 3x3 SAME conv computed in `dtype`, zero-initialised when `zero`."""
  init = nn.initializers.zeros_init() if zero else nn.initializers.lecun_normal()
  return layers.Conv(
    features,
    (3, 3),
    strides=(strides, strides),
    padding='SAME',
    impl='xla',
    kernel_init=init,
    name=name,
    dtype=dtype,
  )


class ResBlock(nn.Module):
  """GroupNorm, SiLU, conv; + the embedding's projection; GroupNorm, SiLU, dropout, conv (zero-
  initialised, so a block starts as the identity); a 1x1 conv on the skip when widths differ.
  Computed in `dtype` (GroupNorm's statistics in float32)."""

  features: int
  groups: int
  dropout: float = 0.0
  batch_split: parallel.BatchSplit | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, emb, *, train: bool):
    norm = lambda name: nn.GroupNorm(self.groups, name=name, dtype=self.dtype)
    h = _conv(self.features, 'conv1', self.dtype)(nn.silu(norm('norm1')(x)))
    h = h + nn.Dense(self.features, name='emb', dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
    h = nn.silu(norm('norm2')(h))
    h = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(h)
    h = _conv(self.features, 'conv2', self.dtype, zero=True)(h)
    if x.shape[-1] != self.features:
      x = layers.Conv(self.features, (1, 1), impl='xla', name='skip', dtype=self.dtype)(x)
    return x + h


class Attention(nn.Module):
  """Self-attention over the H x W positions (GroupNorm first, the output projection
  zero-initialised), computed in `dtype`."""

  heads: int
  groups: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    y = nn.GroupNorm(self.groups, name='norm', dtype=self.dtype)(x).reshape(b, h * w, c)
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.heads,
      out_kernel_init=nn.initializers.zeros_init(),
      name='attention',
      dtype=self.dtype,
    )(y, y)
    return x + y.reshape(b, h, w, c)


class UNet(nn.Module):
  """The diffusion task's network.

  Attributes:
    channels: the width at the full resolution.
    channel_mults: the width of each resolution, as multiples of `channels`; one fewer
      downsampling than entries (28 -> 14 -> 7 for three).
    blocks: residual blocks per resolution (the decoder has one more, for the extra skip).
    attention: the sides (e.g. 7 for 7x7) after whose blocks self-attention runs.
    heads: attention heads.
    groups: GroupNorm groups (must divide every width).
    dropout: the rate inside residual blocks.
    num_classes: > 0 for a conditional model (labels 0 ... K-1; K means no label).
    image_shape: (H, W, C) of the data; the task sets it.
    batch_split: the pmap path's batch layout (dropout rows), set by the task in train steps.
    dtype: the computation dtype of the activations and matmuls (config.dtype, set by the task);
      the parameters, the time embedding's sinusoids and the prediction returned are float32
      either way.
  """

  channels: int = 32
  channel_mults: tuple[int, ...] = (1, 2, 2)
  blocks: int = 2
  attention: tuple[int, ...] = (7,)
  heads: int = 4
  groups: int = 8
  dropout: float = 0.0
  num_classes: int = 0
  image_shape: tuple[int, ...] = (28, 28, 1)
  batch_split: parallel.BatchSplit | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, t, y=None, *, train: bool):
    """The network's prediction for noisy images x at times t.

    Args:
      x: f32[B, H, W, C], the noisy images.
      t: f32[B], their times in [0, 1].
      y: i32[B] labels of a conditional model (K = num_classes: no label); None otherwise.
      train: dropout on.

    Returns:
      f32[B, H, W, C].
    """
    chex.assert_shape(x, (None, *self.image_shape))
    chex.assert_shape(t, (x.shape[0],))
    if self.num_classes:
      if y is None:
        raise ValueError('a conditional UNet (model.num_classes > 0) needs labels y')
      chex.assert_shape(y, (x.shape[0],))
    elif y is not None:
      raise ValueError('an unconditional UNet (model.num_classes = 0) takes no labels')
    side = x.shape[1]
    if side % 2 ** (len(self.channel_mults) - 1) or x.shape[2] != side:
      raise ValueError(
        f'model.channel_mults={tuple(self.channel_mults)} halves the image '
        f'{len(self.channel_mults) - 1} times; {x.shape[1]}x{x.shape[2]} images do not allow it'
      )
    dim = 4 * self.channels
    emb = timestep_embedding(t, self.channels)
    emb = nn.Dense(dim, name='time_mlp_1', dtype=self.dtype)(emb)
    emb = nn.Dense(dim, name='time_mlp_2', dtype=self.dtype)(nn.silu(emb))
    if self.num_classes:  # row K is the "no label" of classifier-free guidance
      emb = emb + nn.Embed(self.num_classes + 1, dim, name='label_embed', dtype=self.dtype)(y)

    block = lambda f, name: ResBlock(
      f, self.groups, self.dropout, self.batch_split, self.dtype, name=name
    )
    attention = lambda name: Attention(self.heads, self.groups, self.dtype, name=name)
    h = _conv(self.channels, 'conv_in', self.dtype)(x)
    skips = [h]
    for i, mult in enumerate(self.channel_mults):
      for j in range(self.blocks):
        h = block(self.channels * mult, f'down{i}_block{j}')(h, emb, train=train)
        if h.shape[1] in self.attention:
          h = attention(f'down{i}_attention{j}')(h)
        skips.append(h)
      if i + 1 < len(self.channel_mults):
        h = _conv(h.shape[-1], f'down{i}_downsample', self.dtype, strides=2)(h)
        skips.append(h)
    h = block(h.shape[-1], 'middle_block0')(h, emb, train=train)
    h = attention('middle_attention')(h)
    h = block(h.shape[-1], 'middle_block1')(h, emb, train=train)
    for i, mult in reversed(list(enumerate(self.channel_mults))):
      for j in range(self.blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = block(self.channels * mult, f'up{i}_block{j}')(h, emb, train=train)
        if h.shape[1] in self.attention:
          h = attention(f'up{i}_attention{j}')(h)
      if i > 0:
        b, hh, ww, c = h.shape
        h = jax.image.resize(h, (b, 2 * hh, 2 * ww, c), method='nearest')
        h = _conv(c, f'up{i}_upsample', self.dtype)(h)
    h = nn.silu(nn.GroupNorm(self.groups, name='norm_out', dtype=self.dtype)(h))
    return _conv(self.image_shape[-1], 'conv_out', self.dtype, zero=True)(h).astype(jnp.float32)
