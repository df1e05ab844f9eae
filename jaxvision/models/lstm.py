"""LSTM sequence classifier: token ids or images read row by row.

One module, two inputs:
* int tokens [B, L] (id 0 = padding, at the end): embedded, then read up to each
  sequence's length (`nn.RNN(seq_lengths=...)`), so padding never changes the result;
* images [B, H, W, C]: H time steps of W*C pixels (rows as time).

`layers` LSTMs are stacked (each optionally bidirectional); the classifier
head reads the last layer's final state (both directions' when bidirectional).
`input_shape` is the shape of one example the model is built for; any other
shape is refused with one line before compute.
"""

import chex
import flax.linen as nn
import jax.numpy as jnp

from jaxvision import parallel
from jaxvision.models import layers


class LSTMClassifier(nn.Module):
  """Stacked (optionally bidirectional) LSTMs over token ids or image rows, a head on the end.

  Attributes:
    num_classes: logits per example.
    input_shape: the shape of one example, (L,) for tokens or (H, W, C) for images; checked
      against the data before compute.
    hidden: the hidden size of every LSTM (per direction).
    layers: LSTMs stacked.
    bidirectional: each layer also reads the sequence backwards; the outputs are concatenated.
    vocab_size: > 0: the input is token ids below this, embedded; 0: images.
    embed_dim: the token embedding's size.
    dropout: rate between stacked layers and on the final state.
    batch_split: the pmap path's batch layout (train steps); None under jit.
    dtype: the computation dtype of the embedding, the LSTMs' matmuls and the head (config.dtype,
      set by the task); the parameters and the LSTM cells' state are float32 either way.
  """

  num_classes: int = 10
  input_shape: tuple[int, ...] = (28, 28, 1)
  hidden: int = 128
  layers: int = 1
  bidirectional: bool = False
  vocab_size: int = 0  # > 0: the input is token ids
  embed_dim: int = 128
  dropout: float = 0.0
  batch_split: parallel.BatchSplit | None = None  # the pmap path's batch layout (train steps)
  dtype: jnp.dtype = jnp.float32

  def _check(self, x):
    """ValueError unless one example of `x` has the shape `input_shape`."""
    if tuple(x.shape[1:]) != tuple(self.input_shape):
      raise ValueError(
        f'model.input_shape={tuple(self.input_shape)} but the data gives examples of '
        f'shape {tuple(x.shape[1:])}; set --config.model.input_shape to match the data'
      )

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Classifies a batch of token sequences or images.

    Args:
      x: token ids i32[B, L] (0 = padding, at the end) when `vocab_size` > 0, else images
        f32[B, H, W, C] read as H steps of W*C pixels.
      train: dropout on.

    Returns:
      Logits f32[B, num_classes].

    Raises:
      ValueError: one example's shape is not `input_shape`.
    """
    self._check(x)
    lengths = None
    if self.vocab_size:
      chex.assert_rank(x, 2)
      lengths = jnp.sum(x != 0, axis=1).astype(jnp.int32)
      h = nn.Embed(self.vocab_size, self.embed_dim, name='embed', dtype=self.dtype)(x)
    else:
      chex.assert_rank(x, 4)
      h = x.reshape(x.shape[0], x.shape[1], -1)  # rows as time steps
    # The cells' matmuls run in `dtype`; their state (c, h) stays float32 (f * c + i * g promotes).
    cell = lambda name: nn.OptimizedLSTMCell(self.hidden, name=name, dtype=self.dtype)
    final = None
    for i in range(self.layers):
      fwd = nn.RNN(cell(f'lstm{i}'), return_carry=True)
      if self.bidirectional:
        bwd = nn.RNN(
          cell(f'lstm{i}_reverse'),
          return_carry=True,
          reverse=True,
          keep_order=True,
        )
        (c_f, out_f), (c_b, out_b) = (fwd(h, seq_lengths=lengths), bwd(h, seq_lengths=lengths))
        h = jnp.concatenate([out_f, out_b], axis=-1)
        final = jnp.concatenate([c_f[1], c_b[1]], axis=-1)
      else:
        (carry, h) = fwd(h, seq_lengths=lengths)
        final = carry[1]
      if i + 1 < self.layers:
        h = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(h)
    final = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(final)
    logits = nn.Dense(self.num_classes, name='head', dtype=self.dtype)(final)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
