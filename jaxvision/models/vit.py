"""Vision Transformer: patch embedding, learned position embeddings, pre-norm
multi-head self-attention blocks, class-token or mean pooling.

The patch embedding is a linear map of each flattened p x p patch (the same
function as a p x p conv with stride p, and its parameter count). Images
must divide into patches: a 28x28 image takes patch 4 or 7, 32x32 takes 4 or 8.
`dropout` acts after the attention and in the MLP (as in big_vision), not on the
attention weights.
"""
import chex
import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models import layers

POOLS = ('cls', 'mean')


def patchify(x, patch: int):
  """[B, H, W, C] -> [B, (H/p)*(W/p), p*p*C], row-major over patches."""
  chex.assert_rank(x, 4)
  b, h, w, c = x.shape
  if h % patch or w % patch:
    raise ValueError(f'images of {h}x{w} do not divide into {patch}x{patch} patches; '
                     f'set --config.model.patch to a divisor of both')
  x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class PositionEmbedding(nn.Module):
  """Adds a learned embedding per position; its shape fixes the sequence length."""

  @nn.compact
  def __call__(self, x):
    pos = self.param('pos_embedding', nn.initializers.normal(0.02), x.shape[1:])
    return x + pos


class EncoderBlock(nn.Module):
  heads: int
  mlp_dim: int
  dropout: float = 0.0

  @nn.compact
  def __call__(self, x, *, train: bool):
    y = nn.LayerNorm()(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads)(y, y)  # no dropout on attention weights
    x = x + layers.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm()(x)
    y = nn.Dense(self.mlp_dim)(y)
    y = layers.Dropout(self.dropout, deterministic=not train)(nn.gelu(y))
    y = nn.Dense(x.shape[-1])(y)
    return x + layers.Dropout(self.dropout, deterministic=not train)(y)


class ViT(nn.Module):
  num_classes: int = 10
  patch: int = 4
  dim: int = 128
  depth: int = 6
  heads: int = 4
  mlp_dim: int = 256
  dropout: float = 0.0
  pool: str = 'cls'

  @nn.compact
  def __call__(self, x, *, train: bool):
    if self.pool not in POOLS:
      raise ValueError(f'model.pool={self.pool!r}; use one of {POOLS}')
    tokens = nn.Dense(self.dim, name='patch_embedding')(patchify(x, self.patch))
    if self.pool == 'cls':
      cls = self.param('cls_token', nn.initializers.zeros_init(), (1, 1, self.dim))
      tokens = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), tokens], axis=1)
    tokens = PositionEmbedding()(tokens)
    for i in range(self.depth):
      tokens = EncoderBlock(self.heads, self.mlp_dim, self.dropout, name=f'block{i + 1}')(tokens, train=train)
    tokens = nn.LayerNorm(name='norm')(tokens)
    pooled = tokens[:, 0] if self.pool == 'cls' else jnp.mean(tokens, axis=1)
    logits = nn.Dense(self.num_classes, name='head', kernel_init=nn.initializers.zeros_init())(pooled)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
