"""Inception-v3 as the feature network of FID (Szegedy et al. 2016; Heusel et al.'s FID variant).

The layers of torchvision's / pytorch-fid's InceptionV3 up to the 2048-d pool
features, with their names, as a plain Flax module. No weights ship with
jaxvision and none can be downloaded here: FID needs a weights file that the
user supplies (`evaluate/generative.py:InceptionFeatures`), e.g. pytorch-fid's
`pt_inception-2015-12-05` converted to an .npz of Flax variables. Input: images
in [0, 1], any size and 1 or 3 channels; they are resized to 299x299 (bilinear,
without antialiasing, as torch's F.interpolate), repeated to 3 channels and scaled
to [-1, 1] as the FID network expects. With pytorch-fid's weights
(`python -m jaxvision.pretrained.inception`) the pool features equal pytorch-fid's
(tests/test_fid.py).
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


class BasicConv(nn.Module):
  """conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""

  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: tuple[int, int] = (1, 1)
  padding: str | tuple = 'VALID'

  @nn.compact
  def __call__(self, x):
    """Applies conv -> BatchNorm (running averages) -> ReLU.

    Args:
      x: f32[B, H, W, C].

    Returns:
      f32[B, H', W', features]; `padding` is 'VALID'/'SAME' or symmetric (ph, pw).
    """
    pad = self.padding if isinstance(self.padding, str) else [(p, p) for p in self.padding]
    x = nn.Conv(self.features, self.kernel, self.strides, padding=pad, use_bias=False, name='conv')(
      x
    )
    return nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x))


def _avg_pool_3x3(x):  # count_include_pad=False, as in the FID network
  """3x3 average pool, stride 1, padded to keep the size."""
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  """3x3 max pool, stride 2, VALID."""
  return nn.max_pool(x, (3, 3), (2, 2))


class InceptionA(nn.Module):
  """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and pool branches; `pool_features` channels from the
  pool branch (64 + 64 + 96 + pool_features out)."""

  pool_features: int

  @nn.compact
  def __call__(self, x):
    """Applies the block.

    Args:
      x: f32[B, H, W, C].

    Returns:
      f32[B, H, W, 224 + pool_features], the branches concatenated.
    """
    b1 = BasicConv(64, name='branch1x1')(x)
    b5 = BasicConv(48, name='branch5x5_1')(x)
    b5 = BasicConv(64, (5, 5), padding=(2, 2), name='branch5x5_2')(b5)
    b3 = BasicConv(64, name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(b3)
    b3 = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_3')(b3)
    bp = BasicConv(self.pool_features, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: the 35 -> 17 reduction (stride-2 3x3, double 3x3 and max-pool branches)."""

  @nn.compact
  def __call__(self, x):
    """Applies the block.

    Args:
      x: f32[B, H, W, C].

    Returns:
      f32[B, (H-3)//2+1, (W-3)//2+1, 480 + C], the branches concatenated.
    """
    b3 = BasicConv(384, (3, 3), (2, 2), name='branch3x3')(x)
    bd = BasicConv(64, name='branch3x3dbl_1')(x)
    bd = BasicConv(96, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = BasicConv(96, (3, 3), (2, 2), name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b-e: factorised 7x7 branches of `channels_7x7` inner channels (768 out)."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    """Applies the block.

    Args:
      x: f32[B, H, W, C].

    Returns:
      f32[B, H, W, 768], the branches concatenated.
    """
    c = self.channels_7x7
    b1 = BasicConv(192, name='branch1x1')(x)
    b7 = BasicConv(c, name='branch7x7_1')(x)
    b7 = BasicConv(c, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv(c, name='branch7x7dbl_1')(x)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv(c, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv(c, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv(192, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: the 17 -> 8 reduction (3x3 and 7x7x3 branches with stride 2, max-pool)."""

  @nn.compact
  def __call__(self, x):
    """Applies the block.

    Args:
      x: f32[B, H, W, C].

    Returns:
      f32[B, (H-3)//2+1, (W-3)//2+1, 512 + C], the branches concatenated.
    """
    b3 = BasicConv(192, name='branch3x3_1')(x)
    b3 = BasicConv(320, (3, 3), (2, 2), name='branch3x3_2')(b3)
    b7 = BasicConv(192, name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv(192, (3, 3), (2, 2), name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b/c: expanded 1x3 / 3x1 branches (2048 out)."""

  max_pool: bool = False  # the FID network's last block pools with max, not average

  @nn.compact
  def __call__(self, x):
    """Applies the block.

    Args:
      x: f32[B, H, W, C].

    Returns:
      f32[B, H, W, 2048], the branches concatenated.
    """
    b1 = BasicConv(320, name='branch1x1')(x)
    b3 = BasicConv(384, name='branch3x3_1')(x)
    b3 = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
        BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3),
      ],
      axis=-1,
    )
    bd = BasicConv(448, name='branch3x3dbl_1')(x)
    bd = BasicConv(384, (3, 3), padding=(1, 1), name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate(
      [
        BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
        BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd),
      ],
      axis=-1,
    )
    pooled = (
      nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))
      if self.max_pool
      else _avg_pool_3x3(x)
    )
    bp = BasicConv(192, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def preprocess(x, size: int = 299):
  """Images as the network takes them: resized (bilinear), 3 channels, in [-1, 1].

  As pytorch-fid's InceptionV3: F.interpolate(x, (size, size), 'bilinear',
  align_corners=False) (no antialiasing, also when downscaling), then 2x - 1; a
  grayscale image is repeated to RGB as pytorch-fid's PIL `convert('RGB')` does.

  Args:
    x: images f32[B, H, W, 1|3] in [0, 1].
    size: the side the images are resized to.

  Returns:
    f32[B, size, size, 3] in [-1, 1], the network's input.

  Raises:
    ValueError: the images have neither 1 nor 3 channels.
  """
  chex.assert_rank(x, 4)
  if x.shape[-1] not in (1, 3):
    raise ValueError(f'Inception features take 1- or 3-channel images, not {x.shape[-1]} channels')
  # torch's F.interpolate(bilinear, align_corners=False), as pytorch-fid resizes: half-pixel
  # centres and no antialiasing (jax's default antialias=True would blur a downscale)
  x = jax.image.resize(x, (x.shape[0], size, size, x.shape[-1]), 'bilinear', antialias=False)
  return jnp.broadcast_to(x, (*x.shape[:3], 3)) * 2.0 - 1.0


class InceptionV3(nn.Module):
  """images f32[B, H, W, 1|3] in [0, 1] -> pool features f32[B, 2048]. `pool_features` is the
  network alone, on `preprocess`ed images: one compiled program for images of every size.

  Attributes:
    resize: the side images are resized to (299, the FID network's).
  """

  resize: int = 299

  def __call__(self, x):
    """`pool_features(preprocess(x))`.

    Args:
      x: images f32[B, H, W, 1|3] in [0, 1], any size.

    Returns:
      Pool features f32[B, 2048].
    """
    return self.pool_features(preprocess(x, self.resize))

  @nn.compact
  def pool_features(self, x):
    """The network on preprocessed images.

    Args:
      x: f32[B, resize, resize, 3] in [-1, 1], as `preprocess` makes them.

    Returns:
      The 2048-d average-pooled features f32[B, 2048].
    """
    chex.assert_shape(x, (None, self.resize, self.resize, 3))
    x = BasicConv(32, (3, 3), (2, 2), name='Conv2d_1a_3x3')(x)
    x = BasicConv(32, (3, 3), name='Conv2d_2a_3x3')(x)
    x = BasicConv(64, (3, 3), padding=(1, 1), name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = BasicConv(80, name='Conv2d_3b_1x1')(x)
    x = BasicConv(192, (3, 3), name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3_s2(x)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, c in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = InceptionC(c, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE(name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, name='Mixed_7c')(x)
    features = jnp.mean(x, axis=(1, 2))
    chex.assert_shape(features, (x.shape[0], 2048))
    return features
