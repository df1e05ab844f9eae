"""ResNet v1.5 (stride on the 3x3 conv of a bottleneck), for small and large images.

`stem='cifar'` is one 3x3 conv at full resolution (CIFAR/MNIST-sized inputs);
`stem='imagenet'` is the 7x7/2 conv + 3x3/2 max-pool of the ImageNet models.
Stage `i` has `stage_sizes[i]` blocks of `width * 2**i` channels (times 4 at
the output of a bottleneck); stages after the first halve the resolution.

  ResNet-20 (CIFAR):  stage_sizes=(3, 3, 3), block='basic', width=16, stem='cifar'
  ResNet-18:          stage_sizes=(2, 2, 2, 2), block='basic', width=64
  ResNet-50:          stage_sizes=(3, 4, 6, 3), block='bottleneck', width=64, stem='imagenet'

`remat=True` wraps each residual block in `flax.linen.remat`: its activations are recomputed in
the backward pass instead of stored (one more forward pass of the blocks per step; the memory
it saves depends on the compiler's schedule, see docs/performance.md); the parameter paths, the
batch statistics and the function are those of `remat=False`.

BatchNorm statistics live in the `batch_stats` collection. Under `jax.jit`
with the batch sharded over devices, the batch mean and variance are
computed over the *global* batch (XLA inserts the cross-device reduction), so
the statistics are averaged across devices by construction; under the `pmap`
path `layers.batch_norm` averages them over the batch axis.
"""

import functools

import chex
import flax.linen as nn
import jax.numpy as jnp

from jaxvision import parallel
from jaxvision.models import layers

BLOCKS = ('basic', 'bottleneck')
STEMS = ('cifar', 'imagenet')
PADDINGS = ('same', 'torch')


def _torch_conv(conv, features, kernel_size, **kwargs):
  """`conv` with PyTorch's padding: kernel_size // 2 on every side (torchvision's convs), where
  'SAME' pads a strided 3x3 conv (0, 1) on even sizes; an explicit `padding` is kept."""
  kwargs.setdefault('padding', tuple((k // 2, k // 2) for k in kernel_size))
  return conv(features, kernel_size, **kwargs)


def _shortcut(block: nn.Module, x, y):
  """The identity, or a strided 1x1 conv + BatchNorm where the block changes the shape."""
  if x.shape == y.shape:
    return x
  conv = block.conv(y.shape[-1], (1, 1), strides=block.strides, name='conv_proj')
  return block.norm(name='norm_proj')(conv(x))


class BasicBlock(nn.Module):
  """Two 3x3 convs (the first with `strides`) with BatchNorm, plus the shortcut; the last
  BatchNorm's scale starts at 0, so the block starts as the identity. `conv` and `norm` are the
  ResNet's configured `layers.Conv` and `layers.batch_norm`."""

  features: int
  strides: int
  conv: type
  norm: type

  @nn.compact
  def __call__(self, x):
    """Applies the block.

    Args:
      x: [B, H, W, C] activations, in the ResNet's dtype.

    Returns:
      [B, ceil(H/strides), ceil(W/strides), features], in the ResNet's dtype.
    """
    y = nn.relu(self.norm()(self.conv(self.features, (3, 3), strides=self.strides)(x)))
    y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.features, (3, 3))(y))
    return nn.relu(_shortcut(self, x, y) + y)


class BottleneckBlock(nn.Module):
  """1x1 conv -> 3x3 conv (with `strides`) -> 1x1 conv to 4 x `features`, each with BatchNorm,
  plus the shortcut; the last BatchNorm's scale starts at 0."""

  features: int
  strides: int
  conv: type
  norm: type

  @nn.compact
  def __call__(self, x):
    """Applies the block.

    Args:
      x: [B, H, W, C] activations, in the ResNet's dtype.

    Returns:
      [B, ceil(H/strides), ceil(W/strides), 4 * features], in the ResNet's dtype.
    """
    y = nn.relu(self.norm()(self.conv(self.features, (1, 1))(x)))
    y = nn.relu(self.norm()(self.conv(self.features, (3, 3), strides=self.strides)(y)))
    y = self.norm(scale_init=nn.initializers.zeros_init())(self.conv(self.features * 4, (1, 1))(y))
    return nn.relu(_shortcut(self, x, y) + y)


class ResNet(nn.Module):
  """ResNet v1.5 classifier (see the module docstring for the standard depths).

  Attributes:
    num_classes: logits per example.
    stage_sizes: blocks per stage; stage i has `width * 2**i` channels.
    block: 'basic' (two 3x3 convs) or 'bottleneck' (1x1, 3x3, 1x1 to 4x the channels).
    width: the channels of the stem and of the first stage.
    stem: 'cifar' (one 3x3 conv) or 'imagenet' (7x7/2 conv and 3x3/2 max-pool).
    conv_impl: the `layers.Conv` implementation, 'xla', 'xla_subpixel' or 'im2col'.
    padding: 'same' (XLA's SAME: a stride-2 3x3 conv pads (0, 1) on even sizes) or 'torch'
      (kernel_size // 2 on every side, as torchvision; for its weights, see jaxvision/pretrained).
    bn_momentum: momentum of BatchNorm's running averages.
    frozen_batchnorm: every BatchNorm normalises with its running averages, in training too, and
      never updates them (torchvision's FrozenBatchNorm2d): a frozen pretrained backbone computes
      the same features in training and at eval.
    remat: recompute each residual block's activations in the backward pass instead of storing
      them (`flax.linen.remat`); the same parameters, statistics and function.
    batch_split: the pmap path's batch layout (train steps); None under jit.
    dtype: the computation dtype of the activations and matmuls (config.dtype, set by the task);
      the parameters and BatchNorm statistics are float32 either way.
  """

  num_classes: int = 10
  stage_sizes: tuple[int, ...] = (3, 3, 3)
  block: str = 'basic'
  width: int = 16
  stem: str = 'cifar'
  conv_impl: str = 'xla'
  padding: str = 'same'
  bn_momentum: float = 0.9
  frozen_batchnorm: bool = False
  remat: bool = False
  batch_split: parallel.BatchSplit | None = None  # the pmap path's batch layout (train steps)
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    """Classifies a batch of images.

    Args:
      x: images f32[B, H, W, C].
      train: batch statistics (and their running averages updated), or the running averages.

    Returns:
      Logits f32[B, num_classes].

    Raises:
      ValueError: `block` is not one of `BLOCKS`, `stem` not one of `STEMS` or `padding` not one
        of `PADDINGS`.
    """
    chex.assert_rank(x, 4)
    if self.block not in BLOCKS or self.stem not in STEMS:
      raise ValueError(
        f'model.block={self.block!r}, model.stem={self.stem!r}; '
        f'use block in {BLOCKS} and stem in {STEMS}'
      )
    if self.padding not in PADDINGS:
      raise ValueError(f'model.padding={self.padding!r}; use one of {PADDINGS}')
    conv = functools.partial(
      layers.Conv,
      use_bias=False,
      padding='SAME',
      impl=self.conv_impl,
      kernel_init=nn.initializers.variance_scaling(2.0, 'fan_out', 'normal'),
      dtype=self.dtype,
    )
    if self.padding == 'torch':
      conv = functools.partial(_torch_conv, conv)
    norm = functools.partial(
      layers.batch_norm,
      self.batch_split,
      use_running_average=not train or self.frozen_batchnorm,
      momentum=self.bn_momentum,
      epsilon=1e-5,
      dtype=self.dtype,
    )
    if self.stem == 'cifar':
      x = conv(self.width, (3, 3), name='conv_stem')(x)
    else:
      x = conv(self.width, (7, 7), strides=2, padding=((3, 3), (3, 3)), name='conv_stem')(x)
    x = nn.relu(norm(name='norm_stem')(x))
    if self.stem == 'imagenet':
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block = BasicBlock if self.block == 'basic' else BottleneckBlock
    if self.remat:  # the same module names, hence the same parameter paths
      block = nn.remat(block)
    for i, n in enumerate(self.stage_sizes):
      for j in range(n):
        strides = 2 if i > 0 and j == 0 else 1
        x = block(self.width * 2**i, strides, conv, norm, name=f'stage{i + 1}_block{j + 1}')(x)
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name='head', dtype=self.dtype)(x)
    chex.assert_shape(logits, (x.shape[0], self.num_classes))
    return logits.astype(jnp.float32)
