"""CNN-RNN: a CNN encodes every frame of a sequence, an LSTM reads the frame features.

Input [B, T, H, W, C]. The frame encoder (conv3x3 -> BatchNorm -> ReLU ->
2x2 max-pool, twice, then a dense layer) runs once over the flattened B*T
axis — one batched call, not a loop over time — and its features [B, T, F] go
to an LSTM whose final state feeds the classifier head. `norm=False` drops the
BatchNorm; `dropout` = (rate after the conv stack, rate on the frame features).
`input_shape` = (T, H, W, C) is what the model is built for; another sequence
length or frame size is refused with one line before compute.
"""

import chex
import flax.linen as nn
import jax.numpy as jnp

from jaxvision import parallel
from jaxvision.models import layers


class FrameEncoder(nn.Module):
  """The per-frame CNN: (3x3 conv [-> BatchNorm] -> ReLU -> 2x2 max-pool) per entry of
  `features`, dropout, then a dense ReLU layer of `dim` features and dropout again, computed in
  `dtype`."""

  features: tuple[int, ...] = (32, 64)
  dim: int = 128
  conv_impl: str = 'im2col'
  norm: bool = True
  dropout: tuple[float, float] = (0.0, 0.0)
  batch_split: parallel.BatchSplit | None = None
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Encodes frames.

    Args:
      x: frames f32[N, H, W, C] (the B*T frames of a batch of sequences).
      train: batch statistics and dropout (True), or running averages and no dropout.

    Returns:
      Frame features [N, dim] in `dtype`.
    """
    chex.assert_rank(x, 4)
    for f in self.features:
      x = layers.Conv(
        f, (3, 3), padding='SAME', impl=self.conv_impl, use_bias=not self.norm, dtype=self.dtype
      )(x)
      if self.norm:  # statistics over all B*T frames of the batch
        x = layers.batch_norm(
          self.batch_split, use_running_average=not train, momentum=0.9, dtype=self.dtype
        )(x)
      x = layers.max_pool_2x2(nn.relu(x))
    x = layers.Dropout(self.dropout[0], deterministic=not train, split=self.batch_split)(x)
    x = nn.relu(nn.Dense(self.dim, dtype=self.dtype)(x.reshape(x.shape[0], -1)))
    return layers.Dropout(self.dropout[1], deterministic=not train, split=self.batch_split)(x)


class CNNRNN(nn.Module):
  """A `FrameEncoder` on every frame, an LSTM over the frame features, a head on its final state.

  Attributes:
    num_classes: logits per sequence.
    input_shape: (T, H, W, C) of one sequence, checked against the data before compute.
    features: output channels of the frame encoder's convs.
    frame_dim: features per frame fed to the LSTM.
    hidden: the LSTM's hidden size.
    conv_impl: the `layers.Conv` implementation, 'xla', 'xla_subpixel' or 'im2col'.
    norm: BatchNorm after each conv of the frame encoder.
    dropout: (rate after the conv stack, rate on the frame features).
    batch_split: the pmap path's batch layout (train steps); None under jit.
    dtype: the computation dtype of the activations and matmuls (config.dtype, set by the task);
      the parameters, BatchNorm statistics and the LSTM's state are float32 either way.
  """

  num_classes: int = 37  # sums of 4 digits: 0 ... 36
  input_shape: tuple[int, ...] = (4, 28, 28, 1)
  features: tuple[int, ...] = (32, 64)
  frame_dim: int = 128
  hidden: int = 128
  conv_impl: str = 'im2col'
  norm: bool = True
  dropout: tuple[float, float] = (0.0, 0.0)
  batch_split: parallel.BatchSplit | None = None  # the pmap path's batch layout (train steps)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Classifies a batch of frame sequences.

    Args:
      x: sequences f32[B, T, H, W, C], with (T, H, W, C) = `input_shape`.
      train: batch statistics and dropout (True), or running averages and no dropout.

    Returns:
      Logits f32[B, num_classes].

    Raises:
      ValueError: the sequences' shape is not `input_shape`.
    """
    if tuple(x.shape[1:]) != tuple(self.input_shape):
      raise ValueError(
        f'model.input_shape={tuple(self.input_shape)} (T, H, W, C) but the data gives '
        f'sequences of shape {tuple(x.shape[1:])}; set --config.model.input_shape '
        f'(and model.num_classes) to match the data'
      )
    b, t = x.shape[:2]
    frames = FrameEncoder(
      self.features,
      self.frame_dim,
      self.conv_impl,
      self.norm,
      self.dropout,
      self.batch_split,
      self.dtype,
      name='frames',
    )(x.reshape(b * t, *x.shape[2:]), train=train)
    frames = frames.reshape(b, t, -1)
    cell = nn.OptimizedLSTMCell(self.hidden, name='lstm', dtype=self.dtype)
    carry, _ = nn.RNN(cell, return_carry=True)(frames)
    logits = nn.Dense(self.num_classes, name='head', dtype=self.dtype)(carry[1])
    chex.assert_shape(logits, (b, self.num_classes))
    return logits.astype(jnp.float32)
