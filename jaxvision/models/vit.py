"""Vision Transformer: patch embedding, learned position embeddings, pre-norm
multi-head self-attention blocks, class-token or mean pooling.

The patch embedding is a linear map of each flattened p x p patch (the same
function as a p x p conv with stride p, and its parameter count). Images
must divide into patches: a 28x28 image takes patch 4 or 7, 32x32 takes 4 or 8.
`dropout` acts after the attention and in the MLP (as in big_vision), not on the
attention weights.

`remat=True` wraps each encoder block in `flax.linen.remat`: its activations are recomputed in
the backward pass instead of stored; the parameter paths (and so `SHARDING_RULES`), the dropout
masks and the function are those of `remat=False`.

`SHARDING_RULES` say how the blocks split over a mesh's model axis (Megatron-style
tensor parallelism, applied from outside by jaxvision/parallel.py): each head's
query, key and value projections live on one shard, which computes that head's
attention, and the output projection's rows (input features) follow the heads; the
MLP's first layer splits its hidden units (output features), the second its rows,
so each block's matmuls need one sum over the model axis after each branch.
"""

import chex
import flax.linen as nn
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from jaxvision import parallel
from jaxvision.models import layers

POOLS = ('cls', 'mean')
GELUS = ('tanh', 'erf')

_M = parallel.MODEL_AXIS
_ATTENTION = r'(^|/)block\d+/MultiHeadDotProductAttention_0'
# (regex matched against the end of a state leaf's path, PartitionSpec over the model axis):
# params, their optimizer moments and EMA copies alike. Leaves not named here (embeddings,
# LayerNorms, the out and second MLP biases, the head) are not split over the model axis.
SHARDING_RULES = (
  (rf'{_ATTENTION}/(query|key|value)/kernel$', P(None, _M, None)),  # [dim, heads, head_dim]
  (rf'{_ATTENTION}/(query|key|value)/bias$', P(_M, None)),  # [heads, head_dim]
  (rf'{_ATTENTION}/out/kernel$', P(_M, None, None)),  # [heads, head_dim, dim]
  (r'(^|/)block\d+/Dense_0/kernel$', P(None, _M)),  # [dim, mlp_dim]
  (r'(^|/)block\d+/Dense_0/bias$', P(_M)),  # [mlp_dim]
  (r'(^|/)block\d+/Dense_1/kernel$', P(_M, None)),  # [mlp_dim, dim]
)


def patchify(x, patch: int):
  """Cuts images into flattened, non-overlapping patches.

  Args:
    x: images [B, H, W, C].
    patch: the patch side p; it must divide H and W.

  Returns:
    Patches [B, (H/p)*(W/p), p*p*C], row-major over patches, each flattened as (row, col, C).

  Raises:
    ValueError: `patch` does not divide H and W.
  """
  chex.assert_rank(x, 4)
  b, h, w, c = x.shape
  if h % patch or w % patch:
    raise ValueError(
      f'images of {h}x{w} do not divide into {patch}x{patch} patches; '
      f'set --config.model.patch to a divisor of both'
    )
  x = x.reshape(b, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


class PositionEmbedding(nn.Module):
  """Adds a learned embedding per position; its shape fixes the sequence length."""

  @nn.compact
  def __call__(self, x):
    """Adds the embedding.

    Args:
      x: [B, L, D], f32 or bf16.

    Returns:
      x + the learned embedding (a float32 parameter [L, D], initialised N(0, 0.02^2)), in the
      dtype of x.
    """
    pos = self.param('pos_embedding', nn.initializers.normal(0.02), x.shape[1:])
    return x + pos.astype(x.dtype)


class EncoderBlock(nn.Module):
  """A pre-norm Transformer block: LayerNorm -> multi-head self-attention -> residual, then
  LayerNorm -> MLP (`mlp_dim`, GELU) -> residual; dropout on both branches' outputs and in the
  MLP, none on the attention weights. `gelu` is 'tanh' (flax's approximation, big_vision's) or
  'erf' (the exact GELU of PyTorch and timm). `dtype` is the computation dtype (the LayerNorms'
  statistics are float32 either way; the softmax subtracts the maximum and sums in float32)."""

  heads: int
  mlp_dim: int
  dropout: float = 0.0
  batch_split: parallel.BatchSplit | None = None
  gelu: str = 'tanh'
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    """Applies the block.

    Args:
      x: tokens [B, L, D] in `dtype`.
      train: dropout on (a Python bool, positional so that `nn.remat` can take it as static).

    Returns:
      [B, L, D] in `dtype`.
    """
    drop = lambda: layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype)(
      y, y
    )  # no dropout on attention weights
    x = x + drop()(y)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype)(y)
    y = drop()(nn.gelu(y) if self.gelu == 'tanh' else nn.gelu(y, approximate=False))
    y = nn.Dense(x.shape[-1], dtype=self.dtype)(y)
    return x + drop()(y)


class ViT(nn.Module):
  """Vision Transformer classifier over `patch` x `patch` patches.

  Attributes:
    num_classes: logits per example.
    patch: the patch side; it must divide the image sides.
    dim: the token width.
    depth: encoder blocks.
    heads: attention heads per block (`dim` must divide by it).
    mlp_dim: the hidden width of each block's MLP.
    dropout: rate after the attention, in the MLP and after it.
    pool: 'cls' (a learned class token, read by the head) or 'mean' (mean over the tokens).
    gelu: the MLP's GELU: 'tanh' (flax's approximation, as big_vision) or 'erf' (exact, as
      PyTorch and timm; for their weights, see jaxvision/pretrained).
    remat: recompute each encoder block's activations in the backward pass instead of storing
      them (`flax.linen.remat`); the same parameters, dropout masks and function.
    batch_split: the pmap path's batch layout (train steps); None under jit.
    dtype: the computation dtype of the activations and matmuls (config.dtype, set by the task);
      the parameters are float32 either way.
  """

  num_classes: int = 10
  patch: int = 4
  dim: int = 128
  depth: int = 6
  heads: int = 4
  mlp_dim: int = 256
  dropout: float = 0.0
  pool: str = 'cls'
  gelu: str = 'tanh'
  remat: bool = False
  batch_split: parallel.BatchSplit | None = None  # the pmap path's batch layout (train steps)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Classifies a batch of images.

    Args:
      x: images f32[B, H, W, C].
      train: dropout on.

    Returns:
      Logits f32[B, num_classes].

    Raises:
      ValueError: `pool` is not one of `POOLS`, `gelu` not one of `GELUS`, or `patch` does not
        divide H and W.
    """
    if self.pool not in POOLS:
      raise ValueError(f'model.pool={self.pool!r}; use one of {POOLS}')
    if self.gelu not in GELUS:
      raise ValueError(f'model.gelu={self.gelu!r}; use one of {GELUS}')
    tokens = nn.Dense(self.dim, name='patch_embedding', dtype=self.dtype)(patchify(x, self.patch))
    if self.pool == 'cls':
      cls = self.param('cls_token', nn.initializers.zeros_init(), (1, 1, self.dim)).astype(
        self.dtype
      )
      tokens = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)), tokens], axis=1)
    tokens = PositionEmbedding()(tokens)
    # `train` is a Python bool: static for remat (argument 2 of __call__, counting self).
    block = nn.remat(EncoderBlock, static_argnums=(2,)) if self.remat else EncoderBlock
    for i in range(self.depth):
      tokens = block(
        self.heads,
        self.mlp_dim,
        self.dropout,
        self.batch_split,
        self.gelu,
        self.dtype,
        name=f'block{i + 1}',
      )(tokens, train)
    tokens = nn.LayerNorm(name='norm', dtype=self.dtype)(tokens)
    pooled = tokens[:, 0] if self.pool == 'cls' else jnp.mean(tokens, axis=1)
    logits = nn.Dense(
      self.num_classes, name='head', kernel_init=nn.initializers.zeros_init(), dtype=self.dtype
    )(pooled)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
