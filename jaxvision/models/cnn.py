"""The classic small CNN: conv32 -> conv64 -> maxpool -> fc128 -> fc10.

`variant='plain'` is the seed model with ReLUs only; `variant='bn_dropout'`
adds BatchNorm after every hidden layer, dropout after the pooling (0.25) and
after fc128 (0.5). Any input size works (28x28x1, 32x32x3, ...). The convs
run through `layers.Conv`, whose `impl` picks XLA's convolution or the
patches + matmul form that is faster on CPU; parameters are the same either way.
"""
import chex
import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models import layers

VARIANTS = ('plain', 'bn_dropout')


class CNN(nn.Module):
  num_classes: int = 10
  variant: str = 'bn_dropout'
  conv_impl: str = 'im2col'
  features: tuple[int, ...] = (32, 64)
  hidden: int = 128
  dropout: tuple[float, float] = (0.25, 0.5)
  bn_momentum: float = 0.9

  @nn.compact
  def __call__(self, x, *, train: bool, features: bool = False):
    """Logits f32[B, num_classes]; with `features=True` the fc hidden layer f32[B, hidden]
    (after its ReLU), the embedding that generative metrics compare."""
    chex.assert_rank(x, 4)
    if self.variant not in VARIANTS:
      raise ValueError(f'model.variant={self.variant!r}; use one of {VARIANTS}')
    bn = self.variant == 'bn_dropout'
    norm = lambda: layers.batch_norm(use_running_average=not train, momentum=self.bn_momentum)
    for f in self.features:
      x = layers.Conv(f, (3, 3), padding='VALID', impl=self.conv_impl, use_bias=not bn)(x)
      x = nn.relu(norm()(x) if bn else x)
    x = layers.max_pool_2x2(x)
    if bn:
      x = layers.Dropout(self.dropout[0], deterministic=not train)(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(self.hidden, use_bias=not bn)(x)
    x = nn.relu(norm()(x) if bn else x)
    if features:
      return x
    if bn:
      x = layers.Dropout(self.dropout[1], deterministic=not train)(x)
    logits = nn.Dense(self.num_classes)(x)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
