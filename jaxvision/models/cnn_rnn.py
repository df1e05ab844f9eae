"""CNN-RNN: a CNN encodes every frame of a sequence, an LSTM reads the frame features.

Input [B, T, H, W, C]. The frame encoder (conv3x3 -> BatchNorm -> ReLU ->
2x2 max-pool, twice, then a dense layer) runs once over the flattened B*T
axis — one batched call, not a loop over time — and its features [B, T, F] go
to an LSTM whose final state feeds the classifier head. `norm=False` drops the
BatchNorm; `dropout` = (rate after the conv stack, rate on the frame features). `input_shape` = (T, H, W, C)
is what the model is built for; another sequence length or frame size is
refused with one line before compute.
"""
import chex
import flax.linen as nn
import jax.numpy as jnp

from jaxvision.models import layers


class FrameEncoder(nn.Module):
  features: tuple[int, ...] = (32, 64)
  dim: int = 128
  conv_impl: str = 'im2col'
  norm: bool = True
  dropout: tuple[float, float] = (0.0, 0.0)

  @nn.compact
  def __call__(self, x, *, train: bool):
    chex.assert_rank(x, 4)
    for f in self.features:
      x = layers.Conv(f, (3, 3), padding='SAME', impl=self.conv_impl, use_bias=not self.norm)(x)
      if self.norm:  # statistics over all B*T frames of the batch
        x = layers.batch_norm(use_running_average=not train, momentum=0.9)(x)
      x = layers.max_pool_2x2(nn.relu(x))
    x = layers.Dropout(self.dropout[0], deterministic=not train)(x)
    x = nn.relu(nn.Dense(self.dim)(x.reshape(x.shape[0], -1)))
    return layers.Dropout(self.dropout[1], deterministic=not train)(x)


class CNNRNN(nn.Module):
  num_classes: int = 37  # sums of 4 digits: 0 ... 36
  input_shape: tuple[int, ...] = (4, 28, 28, 1)
  features: tuple[int, ...] = (32, 64)
  frame_dim: int = 128
  hidden: int = 128
  conv_impl: str = 'im2col'
  norm: bool = True
  dropout: tuple[float, float] = (0.0, 0.0)

  @nn.compact
  def __call__(self, x, *, train: bool):
    if tuple(x.shape[1:]) != tuple(self.input_shape):
      raise ValueError(f'model.input_shape={tuple(self.input_shape)} (T, H, W, C) but the data gives '
                       f'sequences of shape {tuple(x.shape[1:])}; set --config.model.input_shape '
                       f'(and model.num_classes) to match the data')
    b, t = x.shape[:2]
    frames = FrameEncoder(self.features, self.frame_dim, self.conv_impl, self.norm, self.dropout,
                          name='frames')(
        x.reshape(b * t, *x.shape[2:]), train=train)
    frames = frames.reshape(b, t, -1)
    carry, _ = nn.RNN(nn.OptimizedLSTMCell(self.hidden, name='lstm'), return_carry=True)(frames)
    logits = nn.Dense(self.num_classes, name='head')(carry[1])
    chex.assert_shape(logits, (b, self.num_classes))
    return logits.astype(jnp.float32)
