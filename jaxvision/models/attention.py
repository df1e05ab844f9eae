"""The seed's self-attention classifier over image rows or patches.

Each position (a row of pixels, or a p x p patch) is projected to features
(plus a learned position embedding); `layers` rounds of single-head
dot-product self-attention let positions exchange information; then
attention pooling: a softmax over positions of learned scores weights the
features into one context vector, which the classifier head reads.
`attention_weights` (sown into the 'intermediates' collection) are the
softmax weights over positions, for inspection.
"""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxvision.models import layers
from jaxvision.models.vit import PositionEmbedding, patchify

TOKENS = ('rows', 'patches')


class AttentionClassifier(nn.Module):
  num_classes: int = 10
  tokens: str = 'patches'
  patch: int = 4
  dim: int = 128
  layers: int = 1
  pool_heads: int = 4
  hidden: int = 256
  dropout: float = 0.1

  def _positions(self, x):
    chex.assert_rank(x, 4)
    if self.tokens == 'rows':
      return x.reshape(x.shape[0], x.shape[1], -1)
    if self.tokens == 'patches':
      return patchify(x, self.patch)
    raise ValueError(f'model.tokens={self.tokens!r}; use one of {TOKENS}')

  @nn.compact
  def __call__(self, x, *, train: bool):
    h = nn.Dense(self.dim, name='project')(self._positions(x))
    h = nn.LayerNorm()(PositionEmbedding()(nn.gelu(h)))
    for i in range(self.layers):
      q, k, v = (nn.Dense(self.dim, name=f'attn{i + 1}_{n}')(h) for n in 'qkv')
      weights = jax.nn.softmax(jnp.einsum('bqd,bkd->bqk', q, k) / jnp.sqrt(self.dim), axis=-1)
      h = nn.LayerNorm()(h + nn.Dense(self.dim, name=f'attn{i + 1}_out')(weights @ v))
      h = nn.LayerNorm()(h + nn.Dense(self.dim)(nn.gelu(nn.Dense(2 * self.dim)(h))))
    # Attention pooling: `pool_heads` softmax distributions over positions.
    scores = nn.Dense(self.pool_heads, name='pool_scores')(jnp.tanh(nn.Dense(self.dim)(h)))
    weights = jax.nn.softmax(scores, axis=1)  # [B, positions, heads]
    self.sow('intermediates', 'attention_weights', weights)
    context = jnp.einsum('bph,bpd->bhd', weights, h).reshape(x.shape[0], -1)
    context = layers.Dropout(self.dropout, deterministic=not train)(context)
    y = layers.Dropout(self.dropout, deterministic=not train)(nn.gelu(nn.Dense(self.hidden)(context)))
    logits = nn.Dense(self.num_classes, name='head')(y)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
