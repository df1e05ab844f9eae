"""A self-attention classifier over image rows or patches.

Each position (a row of pixels, or a p x p patch) is projected to features
(plus a learned position embedding); `layers` rounds of single-head
dot-product self-attention let positions exchange information; then
attention pooling: a softmax over positions of learned scores weights the
features into one context vector, which the classifier head reads.
`attention_weights` (sown into the 'intermediates' collection) are the
softmax weights over positions, for inspection.
"""

import math

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
    dtype: the computation dtype of the activations and matmuls (config.dtype, set by the task);
      the parameters and both softmaxes are float32 either way.
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
  dtype: jnp.dtype = jnp.float32

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
    dense = lambda features, name=None: nn.Dense(features, name=name, dtype=self.dtype)
    norm = lambda: nn.LayerNorm(dtype=self.dtype)
    # softmax in float32, its weights back in the computation dtype for the matmul
    softmax = lambda s, axis: jax.nn.softmax(s.astype(jnp.float32), axis=axis)
    h = dense(self.dim, 'project')(self._positions(x))
    h = norm()(PositionEmbedding()(nn.gelu(h)))
    for i in range(self.layers):
      q, k, v = (dense(self.dim, f'attn{i + 1}_{n}')(h) for n in 'qkv')
      weights = softmax(jnp.einsum('bqd,bkd->bqk', q, k) / math.sqrt(self.dim), -1)
      h = norm()(h + dense(self.dim, f'attn{i + 1}_out')(weights.astype(self.dtype) @ v))
      h = norm()(h + dense(self.dim)(nn.gelu(dense(2 * self.dim)(h))))
    # Attention pooling: `pool_heads` softmax distributions over positions.
    scores = dense(self.pool_heads, 'pool_scores')(jnp.tanh(dense(self.dim)(h)))
    weights = softmax(scores, 1)  # [B, positions, heads]
    self.sow('intermediates', 'attention_weights', weights)
    context = jnp.einsum('bph,bpd->bhd', weights.astype(self.dtype), h).reshape(x.shape[0], -1)
    context = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(context)
    y = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(
      nn.gelu(dense(self.hidden)(context))
    )
    logits = dense(self.num_classes, 'head')(y)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
