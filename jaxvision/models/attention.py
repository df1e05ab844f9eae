"""A self-attention classifier over image rows or patches.

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

from jaxvision import parallel
from jaxvision.models import layers
from jaxvision.models.vit import PositionEmbedding, patchify

TOKENS = ('rows', 'patches')


class AttentionClassifier(nn.Module):
  """Self-attention over positions, then attention pooling into `pool_heads` context vectors.

  Attributes:
    num_classes: logits per example.
    tokens: what a position is: 'rows' (one row of pixels) or 'patches' (a `patch` x `patch`
      patch).
    patch: the patch side, for tokens='patches'; it must divide the image sides.
    dim: the features of every position.
    layers: rounds of single-head self-attention (each with a residual MLP).
    pool_heads: softmax distributions over positions in the pooling, each giving one context
      vector.
    hidden: width of the dense layer between the pooled context and the head.
    dropout: rate on the pooled context and on the hidden layer.
    batch_split: the pmap path's batch layout (train steps); None under jit.
  """

  num_classes: int = 10
  tokens: str = 'patches'
  patch: int = 4
  dim: int = 128
  layers: int = 1
  pool_heads: int = 4
  hidden: int = 256
  dropout: float = 0.1
  batch_split: parallel.BatchSplit | None = None  # the pmap path's batch layout (train steps)

  def _positions(self, x):
    """[B, H, W, C] -> [B, positions, features] rows or patches."""
    chex.assert_rank(x, 4)
    if self.tokens == 'rows':
      return x.reshape(x.shape[0], x.shape[1], -1)
    if self.tokens == 'patches':
      return patchify(x, self.patch)
    raise ValueError(f'model.tokens={self.tokens!r}; use one of {TOKENS}')

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Classifies a batch of images; sows the pooling weights as `attention_weights`.

    Args:
      x: images f32[B, H, W, C].
      train: dropout on.

    Returns:
      Logits f32[B, num_classes]. The 'intermediates' collection gets `attention_weights`
      f32[B, positions, pool_heads].

    Raises:
      ValueError: `tokens` is not one of `TOKENS`, or the patches do not divide the image.
    """
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
    context = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(context)
    y = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(
      nn.gelu(nn.Dense(self.hidden)(context))
    )
    logits = nn.Dense(self.num_classes, name='head')(y)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
