"""The classic small CNN: conv32 -> conv64 -> maxpool -> fc128 -> fc10.

`variant='plain'` has ReLUs only; `variant='bn_dropout'`
adds BatchNorm after every hidden layer, dropout after the pooling (0.25) and
after fc128 (0.5). Any input size works (28x28x1, 32x32x3, ...). The convs
run through `layers.Conv`, whose `impl` picks XLA's convolution or the
patches + matmul form that is faster on CPU; parameters are the same either way.
"""

import chex
import flax.linen as nn
import jax.numpy as jnp

from jaxvision import parallel
from jaxvision.models import layers

VARIANTS = ('plain', 'bn_dropout')


class CNN(nn.Module):
  """The small CNN classifier: 3x3 VALID convs, a 2x2 max-pool, one hidden dense layer, the head.

  Attributes:
    num_classes: logits per example.
    variant: 'plain' (ReLUs only) or 'bn_dropout' (BatchNorm after every hidden layer, dropout
      after the pool and after the hidden layer).
    conv_impl: the `layers.Conv` implementation, 'xla', 'xla_subpixel' or 'im2col'.
    features: output channels of the convs, in order.
    hidden: width of the hidden dense layer (the `features=True` embedding).
    dropout: (rate after the pool, rate after the hidden layer), for 'bn_dropout' only.
    bn_momentum: momentum of BatchNorm's running averages.
    batch_split: the pmap path's batch layout (train steps); None under jit.
    dtype: the computation dtype of the activations and matmuls (config.dtype, set by the task);
      the parameters and BatchNorm statistics are float32 either way.
  """

  num_classes: int = 10
  variant: str = 'bn_dropout'
  conv_impl: str = 'im2col'
  features: tuple[int, ...] = (32, 64)
  hidden: int = 128
  dropout: tuple[float, float] = (0.25, 0.5)
  bn_momentum: float = 0.9
  batch_split: parallel.BatchSplit | None = None  # the pmap path's batch layout (train steps)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool, features: bool = False):
    """Classifies a batch of images.

    Args:
      x: images f32[B, H, W, C] (any size the convs and the pool leave non-empty); the first conv
        casts them to `dtype`.
      train: batch statistics and dropout (True), or running averages and no dropout.
      features: return the hidden layer instead of the logits.

    Returns:
      Logits f32[B, num_classes]; with `features=True` the fc hidden layer f32[B, hidden]
      (after its ReLU), the embedding that generative metrics compare.

    Raises:
      ValueError: `variant` is not one of `VARIANTS`.
    """
    chex.assert_rank(x, 4)
    if self.variant not in VARIANTS:
      raise ValueError(f'model.variant={self.variant!r}; use one of {VARIANTS}')
    bn = self.variant == 'bn_dropout'
    norm = lambda: layers.batch_norm(
      self.batch_split, use_running_average=not train, momentum=self.bn_momentum, dtype=self.dtype
    )
    for f in self.features:
      x = layers.Conv(
        f, (3, 3), padding='VALID', impl=self.conv_impl, use_bias=not bn, dtype=self.dtype
      )(x)
      x = nn.relu(norm()(x) if bn else x)
    x = layers.max_pool_2x2(x)
    if bn:
      x = layers.Dropout(self.dropout[0], deterministic=not train, split=self.batch_split)(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.hidden, use_bias=not bn, dtype=self.dtype)(x)
    x = nn.relu(norm()(x) if bn else x)
    if features:
      return x.astype(jnp.float32)
    if bn:
      x = layers.Dropout(self.dropout[1], deterministic=not train, split=self.batch_split)(x)
    logits = nn.Dense(self.num_classes, dtype=self.dtype)(x)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
