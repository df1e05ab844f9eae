"""Variational autoencoders: plain Flax modules, no losses or optimizers.

Every VAE here has the same interface (the task in `jaxvision/tasks/vae.py`
relies on it):

    mean, logvar = model.apply(v, x, y, method='encode')   # q(z|x[,y]), f32[B, latents] each
    out = model.apply(v, z, y, method='decode')            # f32[B, H, W, C * outputs]
    out, mean, logvar = model.apply(v, x, y)                # decode(mean): for init

`outputs` is the number of decoder outputs per pixel channel: 1 for Bernoulli
logits, 2 for a discretised logistic (means, then log-scales); the task sets it
from `loss.likelihood`.

`y` (int labels, i32[B]) is used by the conditional model and must be None for
the others (class attribute `conditional`). `image_shape` is the shape the
decoder produces; the task sets it from the data, so configs need not.

* `MLPVAE`: the flax examples/vae model: 784 -> 500 -> 20 (mean, logvar) and
  20 -> 500 -> 784 logits.
* `ConvVAE`: stride-2 3x3 convs down to H/4 x W/4, a dense layer to the
  latents; the decoder mirrors it with sub-pixel transposed convs (a 3x3 conv
  to 4x the channels at the low resolution, then depth-to-space), which run
  through `layers.Conv` (im2col is fast on CPU).
* `ConditionalVAE`: the MLP VAE with the label's one-hot concatenated to the
  encoder's input and to the input of both decoder layers (the latent code and
  the hidden layer), so the class reaches the pixels directly.
"""

import math
from typing import ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models import layers


def _check_labels(y, n: int, conditional: bool) -> None:
  """ValueError unless a conditional model gets labels i32[n] and another gets none."""
  if conditional:
    if y is None:
      raise ValueError('a conditional VAE needs labels y')
    chex.assert_shape(y, (n,))
  elif y is not None:
    raise ValueError('an unconditional VAE takes no labels')


class MLPVAE(nn.Module):
  """The fully connected VAE: pixels -> `hidden` (ReLU) -> (mean, logvar); z -> `hidden` (ReLU)
  -> the decoder's outputs per pixel.

  Attributes:
    latents: the size of z.
    hidden: the width of the encoder's and the decoder's hidden layer.
    image_shape: the (H, W, C) the decoder produces; the task sets it from the data.
    outputs: decoder outputs per pixel channel (1: Bernoulli logits; 2: a discretised logistic's
      means and log-scales); the task sets it from `loss.likelihood`.
    dtype: the computation dtype of the activations and matmuls (config.dtype, set by the task);
      the parameters are float32 either way, and so are the mean, logvar and decoder output
      returned.
  """

  latents: int = 20
  hidden: int = 500
  image_shape: tuple[int, ...] = (28, 28, 1)
  outputs: int = 1
  dtype: jnp.dtype = jnp.float32
  conditional: ClassVar[bool] = False

  def setup(self):
    dense = lambda features, name: nn.Dense(features, name=name, dtype=self.dtype)
    self.enc_hidden = dense(self.hidden, 'enc_hidden')
    self.enc_mean = dense(self.latents, 'enc_mean')
    self.enc_logvar = dense(self.latents, 'enc_logvar')
    self.dec_hidden = dense(self.hidden, 'dec_hidden')
    self.dec_out = dense(math.prod(self.image_shape) * self.outputs, 'dec_out')

  def _with_label(self, h, y):
    """h with the label appended (the conditional model); here h itself."""
    return h

  def encode(self, x, y=None):
    """q(z | x[, y]).

    Args:
      x: images f32[B, *image_shape].
      y: labels i32[B] for the conditional model, else None.

    Returns:
      (mean, logvar), each f32[B, latents].

    Raises:
      ValueError: labels missing for the conditional model, or given to another.
    """
    chex.assert_shape(x, (None, *self.image_shape))
    _check_labels(y, x.shape[0], self.conditional)
    h = nn.relu(self.enc_hidden(self._with_label(x.reshape(x.shape[0], -1).astype(self.dtype), y)))
    mean, logvar = self.enc_mean(h).astype(jnp.float32), self.enc_logvar(h).astype(jnp.float32)
    chex.assert_shape([mean, logvar], (x.shape[0], self.latents))
    return mean, logvar

  def decode(self, z, y=None):
    """The parameters of p(x | z[, y]).

    Args:
      z: latents f32[B, latents].
      y: labels i32[B] for the conditional model, else None.

    Returns:
      f32[B, H, W, C * outputs]: logits, or the logistic's means then log-scales.

    Raises:
      ValueError: labels missing for the conditional model, or given to another.
    """
    chex.assert_shape(z, (None, self.latents))
    _check_labels(y, z.shape[0], self.conditional)
    hidden = nn.relu(self.dec_hidden(self._with_label(z.astype(self.dtype), y)))
    height, width, channels = self.image_shape
    out = self.dec_out(self._with_label(hidden, y))
    return out.reshape(z.shape[0], height, width, channels * self.outputs).astype(jnp.float32)

  def __call__(self, x, y=None):
    """decode(mean of encode(x, y)), which creates every parameter: what `init` calls.

    Args:
      x: images f32[B, *image_shape].
      y: labels i32[B] for the conditional model, else None.

    Returns:
      (decoder output f32[B, H, W, C * outputs], mean f32[B, latents], logvar f32[B, latents]).
    """
    mean, logvar = self.encode(x, y)
    return self.decode(mean, y), mean, logvar


class ConditionalVAE(MLPVAE):
  """`MLPVAE` with the label's one-hot (of `num_classes`) appended to the encoder's input, to z
  and to the decoder's hidden layer."""

  num_classes: int = 10
  conditional: ClassVar[bool] = True

  def _with_label(self, h, y):
    """[h; one_hot(y)]."""
    return jnp.concatenate([h, jax.nn.one_hot(y, self.num_classes, dtype=h.dtype)], axis=-1)


class ConvVAE(nn.Module):
  """Encoder: stride-2 convs `features`, then `hidden` dense (0 = none).
  Decoder: `hidden` dense, dense to (H/4, W/4, features[-1]), then one sub-pixel
  upsampling conv per stride-2 encoder conv, the last one to the pixels' outputs,
  plus a learned per-pixel output bias.

  Attributes:
    latents: the size of z.
    features: output channels of the stride-2 encoder convs; H and W must divide by
      2^len(features).
    hidden: a dense layer of this width between the convs and z, both ways (0 = none).
    image_shape: the (H, W, C) the decoder produces; the task sets it from the data.
    outputs: decoder outputs per pixel channel (see `MLPVAE`).
    conv_impl: the `layers.Conv` implementation, 'xla', 'xla_subpixel' or 'im2col'.
    dtype: the computation dtype (see `MLPVAE`).
  """

  latents: int = 32
  features: tuple[int, ...] = (32, 64)
  hidden: int = 0
  image_shape: tuple[int, ...] = (28, 28, 1)
  outputs: int = 1
  conv_impl: str = 'im2col'
  dtype: jnp.dtype = jnp.float32
  conditional: ClassVar[bool] = False

  def setup(self):
    h, w, c = self.image_shape
    down = 2 ** len(self.features)
    if h % down or w % down:
      raise ValueError(
        f'ConvVAE with {len(self.features)} stride-2 convs needs image sides '
        f'divisible by {down}, got {self.image_shape}'
      )
    conv = lambda f, s, name: layers.Conv(
      f, (3, 3), strides=(s, s), padding='SAME', impl=self.conv_impl, name=name, dtype=self.dtype
    )
    dense = lambda features, name: nn.Dense(features, name=name, dtype=self.dtype)
    self.enc_convs = [conv(f, 2, f'enc_conv{i}') for i, f in enumerate(self.features)]
    self.enc_hidden = dense(self.hidden, 'enc_hidden') if self.hidden else None
    self.enc_mean = dense(self.latents, 'enc_mean')
    self.enc_logvar = dense(self.latents, 'enc_logvar')
    self.dec_hidden = dense(self.hidden, 'dec_hidden') if self.hidden else None
    self.dec_in = dense((h // down) * (w // down) * self.features[-1], 'dec_in')
    outs = list(self.features[:-1][::-1]) + [c * self.outputs]
    self.dec_convs = [conv(4 * f, 1, f'dec_conv{i}') for i, f in enumerate(outs)]
    self.pixel_bias = self.param(
      'pixel_bias', nn.initializers.zeros_init(), (h, w, c * self.outputs)
    )

  def encode(self, x, y=None):
    """q(z | x).

    Args:
      x: images f32[B, *image_shape].
      y: must be None (ValueError otherwise): the model is unconditional.

    Returns:
      (mean, logvar), each f32[B, latents].
    """
    chex.assert_shape(x, (None, *self.image_shape))
    _check_labels(y, x.shape[0], False)
    for conv in self.enc_convs:
      x = nn.relu(conv(x))
    x = x.reshape(x.shape[0], -1)
    if self.enc_hidden is not None:
      x = nn.relu(self.enc_hidden(x))
    mean, logvar = self.enc_mean(x).astype(jnp.float32), self.enc_logvar(x).astype(jnp.float32)
    chex.assert_shape([mean, logvar], (x.shape[0], self.latents))
    return mean, logvar

  def decode(self, z, y=None):
    """The parameters of p(x | z).

    Args:
      z: latents f32[B, latents].
      y: must be None (ValueError otherwise): the model is unconditional.

    Returns:
      f32[B, H, W, C * outputs]: logits, or the logistic's means then log-scales, with the
      learned per-pixel bias.
    """
    chex.assert_shape(z, (None, self.latents))
    _check_labels(y, z.shape[0], False)
    h, w, c = self.image_shape
    down = 2 ** len(self.features)
    x = nn.relu(self.dec_hidden(z)) if self.dec_hidden is not None else z
    x = nn.relu(self.dec_in(x)).reshape(z.shape[0], h // down, w // down, self.features[-1])
    for i, conv in enumerate(self.dec_convs):
      x = layers.depth_to_space(conv(x))
      if i < len(self.dec_convs) - 1:
        x = nn.relu(x)
    chex.assert_shape(x, (z.shape[0], h, w, c * self.outputs))
    return x.astype(jnp.float32) + self.pixel_bias

  def __call__(self, x, y=None):
    """decode(mean of encode(x)), which creates every parameter: what `init` calls.

    Args:
      x: images f32[B, *image_shape].
      y: must be None.

    Returns:
      (decoder output f32[B, H, W, C * outputs], mean f32[B, latents], logvar f32[B, latents]).
    """
    mean, logvar = self.encode(x, y)
    return self.decode(mean, y), mean, logvar
