"""LSTM sequence classifier: token ids or images read row by row.

One module, two inputs:
* int tokens [B, L] (id 0 = padding, at the end): embedded, then read up to each
  sequence's length (`nn.RNN(seq_lengths=...)`'s semantics), so padding never changes the result;
* images [B, H, W, C]: H time steps of W*C pixels (rows as time).

`layers` LSTMs are stacked (each optionally bidirectional); the classifier
head reads the last layer's final state (both directions' when bidirectional).
`input_shape` is the shape of one example the model is built for; any other
shape is refused with one line before compute.

Each LSTM computes what `nn.RNN(nn.OptimizedLSTMCell(hidden))` computes, with that cell's
parameters (names, shapes, initializers, so checkpoints of either load in the other), in a
time loop of its own (`lstm`) with a hand-written backward pass. Autodiff of nn.RNN's scan keeps
13 [B, h] arrays per step for the backward pass, and XLA:CPU allocates, zeroes and page-faults
that scratch memory (115 MiB at batch 128) anew every train step; `lstm` keeps the gates, the
cell and hidden states (69 MiB), and sums the weight gradients inside its backward loop. Each
step is one matmul [x_t, h] @ [W_i; W_h] (one more backwards); sequences stay time-major
[T, B, F] from the embedding (or the image rows) to the last layer. Reverse mode only (no
jax.jvp through the LSTMs).
"""

import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import dtypes, recurrent

from jaxvision import parallel
from jaxvision.models import layers


class _Gate(nn.Module):
  """One gate's kernel (and bias) under the name OptimizedLSTMCell gives it (`ii`, `hf`, ...).

  Attributes:
    features: the hidden size.
    use_bias: a bias (zeros) too.
    kernel_init: the kernel's initializer.
  """

  features: int
  use_bias: bool
  kernel_init: nn.initializers.Initializer

  @nn.compact
  def __call__(self, in_features: int):
    """Returns the kernel f32[in_features, features] and the bias f32[features] (or None)."""
    shape = (in_features, self.features)
    kernel = self.param('kernel', self.kernel_init, shape, jnp.float32)
    if not self.use_bias:
      return kernel, None
    return kernel, self.param('bias', nn.initializers.zeros_init(), shape[1:], jnp.float32)


class LSTMParams(nn.Module):
  """The parameters of `nn.OptimizedLSTMCell(features)`, concatenated for `lstm`.

  The cell's tree and initial values: input kernels `ii`, `if`, `ig`, `io` [in, h] (lecun
  normal, no bias) and recurrent kernels `hi`, `hf`, `hg`, `ho` [h, h] (orthogonal) with zero
  biases, created in the cell's order.

  Attributes:
    features: the hidden size h.
  """

  features: int

  @nn.compact
  def __call__(self, in_features: int):
    """Returns the kernel [W_i; W_h] f32[in + h, 4h] and the bias f32[4h], gates i, f, g, o."""
    w_i, w_h, b = [], [], []
    for gate in 'ifgo':
      w_i.append(
        _Gate(self.features, False, nn.initializers.lecun_normal(), name=f'i{gate}')(in_features)[0]
      )
      kernel, bias = _Gate(self.features, True, nn.initializers.orthogonal(), name=f'h{gate}')(
        self.features
      )
      w_h.append(kernel)
      b.append(bias)
    return jnp.concatenate([jnp.concatenate(w_i, 1), jnp.concatenate(w_h, 1)]), jnp.concatenate(b)


def lstm(x, w, b, *, reverse: bool = False, dtype: Any = None):
  """An LSTM (OptimizedLSTMCell's equations) over a time-major sequence, from zero state.

  Args:
    x: the inputs [T, B, in].
    w: the kernel [W_i; W_h] f32[in + h, 4h], gates i, f, g, o (`LSTMParams`).
    b: the bias f32[4h].
    reverse: read from step T-1 down to 0 (each output stays at its step's index).
    dtype: the matmuls' computation dtype (None: inferred from the inputs); the cell state
      stays float32.

  Returns:
    The hidden state after each step, f32[T, B, h].
  """
  return _lstm(x, w, b, reverse, dtype)


def _gate_shift(hidden: int):
  """k = 1 on the cell gate g's columns, 0 on i, f, o's: sigmoid(z (1 + k)) (1 + k) - k is
  tanh(z) on g and sigmoid(z) elsewhere, all four gates in one elementwise pass."""
  return jnp.repeat(jnp.array([0.0, 0.0, 1.0, 0.0]), hidden)


def _lstm_fwd(x, w, b, reverse, dtype):
  """`lstm` and what its backward pass reads: the inputs, and each step's gates and states.

  Args:
    x, w, b, reverse, dtype: as `lstm`.

  Returns:
    (hidden states f32[T, B, h], residuals).
  """
  hidden = w.shape[1] // 4
  k = _gate_shift(hidden)
  zeros = jnp.zeros((x.shape[1], hidden), jnp.float32)

  def step(carry, x_t):
    c, h = carry
    xh, w_, b_ = dtypes.promote_dtype(jnp.concatenate([x_t, h], -1), w, b, dtype=dtype)
    z = jnp.dot(xh, w_) + b_
    k_ = k.astype(z.dtype)
    gates = nn.sigmoid(z * (1 + k_)) * (1 + k_) - k_
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = f * c + i * g
    h = o * jnp.tanh(c)
    return (c, h), (h, c, gates)

  _, (hs, cs, gates) = jax.lax.scan(step, (zeros, zeros), x, reverse=reverse)
  return hs, (x, w, b, hs, cs, gates)


def _lstm_bwd(reverse, dtype, res, dhs):
  """The gradients of `lstm` from the cotangent of its outputs, one time loop backwards.

  Args:
    reverse, dtype: as `lstm`.
    res: `_lstm_fwd`'s residuals.
    dhs: the cotangent of the hidden states f32[T, B, h].

  Returns:
    The cotangents of x, w and b.
  """
  x, w, b, hs, cs, gates = res
  steps, n_in, hidden = x.shape[0], x.shape[-1], w.shape[1] // 4
  k = _gate_shift(hidden)
  zeros = jnp.zeros_like(cs[0])

  def step(carry, t):
    dh_next, dc_next, dw, db = carry
    first = t == (steps - 1 if reverse else 0)  # the step that read the zero state
    t_prev = jnp.clip(t + (1 if reverse else -1), 0, steps - 1)
    c_prev = jnp.where(first, 0.0, cs[t_prev])
    h_prev = jnp.where(first, 0.0, hs[t_prev])
    a = gates[t]
    i, f, g, o = jnp.split(a, 4, axis=-1)
    dh = dhs[t] + dh_next
    tc = jnp.tanh(cs[t])
    dc = dc_next + dh * o * (1 - tc * tc)
    # d/dz of the gates: sigmoid' = a (1 - a), tanh' = 1 - a^2 = (1 - a)(1 + a).
    dz = jnp.concatenate([dc * g, dc * c_prev, dc * i, dh * tc], -1) * (1 - a) * (a + k)
    dz_, w_ = dtypes.promote_dtype(dz, w, dtype=dtype)
    dxh = jnp.dot(dz_, w_.T)
    xh, _ = dtypes.promote_dtype(jnp.concatenate([x[t], h_prev], -1), w, dtype=dtype)
    carry = (dxh[:, n_in:].astype(jnp.float32), dc * f, dw + jnp.dot(xh.T, dz_), db + dz.sum(0))
    return carry, dxh[:, :n_in]

  init = (zeros, zeros, jnp.zeros(w.shape, jnp.float32), jnp.zeros(b.shape, jnp.float32))
  (_, _, dw, db), dx = jax.lax.scan(step, init, jnp.arange(steps), reverse=not reverse)
  return dx.astype(x.dtype), dw.astype(w.dtype), db.astype(b.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _lstm(x, w, b, reverse, dtype):
  """`lstm`, differentiated by `_lstm_fwd` and `_lstm_bwd`."""
  return _lstm_fwd(x, w, b, reverse, dtype)[0]


_lstm.defvjp(_lstm_fwd, _lstm_bwd)


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

  def _layer(self, i: int, x, lengths):
    """LSTM layer i (both directions when bidirectional) over a time-major sequence.

    Args:
      i: the layer's index (its parameters are `lstm{i}`, `lstm{i}_reverse`).
      x: the inputs [T, B, F].
      lengths: each sequence's length i32[B] (padding after it), or None: all T steps.

    Returns:
      The outputs f32[T, B, dirs * h] and the final states f32[B, dirs * h].
    """
    w, b = LSTMParams(self.hidden, name=f'lstm{i}')(x.shape[-1])
    out = lstm(x, w, b, dtype=self.dtype)
    final = out[-1] if lengths is None else out[lengths - 1, jnp.arange(x.shape[1])]
    if not self.bidirectional:
      return out, final
    w, b = LSTMParams(self.hidden, name=f'lstm{i}_reverse')(x.shape[-1])
    if lengths is None:
      back = lstm(x, w, b, reverse=True, dtype=self.dtype)
    else:  # nn.RNN's flip: each sequence's own last valid step first, its padding after
      flip = functools.partial(
        recurrent.flip_sequences, seq_lengths=lengths, num_batch_dims=1, time_major=True
      )
      back = flip(lstm(flip(x), w, b, dtype=self.dtype))
    # The reverse direction's final state is its state after reading step 0.
    return jnp.concatenate([out, back], -1), jnp.concatenate([final, back[0]], -1)

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
      h = nn.Embed(self.vocab_size, self.embed_dim, name='embed', dtype=self.dtype)(
        x.T
      )  # time-major
    else:
      chex.assert_rank(x, 4)
      h = jnp.swapaxes(x.reshape(x.shape[0], x.shape[1], -1), 0, 1)  # rows as time steps
    final = None
    for i in range(self.layers):
      h, final = self._layer(i, h, lengths)
      if i + 1 < self.layers:  # Dropout's axis 0 is the batch
        drop = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)
        h = jnp.swapaxes(drop(jnp.swapaxes(h, 0, 1)), 0, 1)
    final = layers.Dropout(self.dropout, deterministic=not train, split=self.batch_split)(final)
    logits = nn.Dense(self.num_classes, name='head', dtype=self.dtype)(final)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
