"""Host-side image ops of the input pipeline, with PIL: decoding (JPEGs at reduced scale where the
output allows), resizing, and ImageNet's random inception crop with flip.

A JPEG is decoded through `PIL.Image.draft`, which has libjpeg scale its DCT by 1/2, 1/4 or 1/8
when the part of the image that is kept still has at least the output's pixels at that scale: a
1024x768 photo cropped to a 224 square decodes at 512x384 or smaller. Encoded images come from
TFDS Image features read undecoded (`tfds.decode.SkipDecoding`); arrays (Tensor features, TFDS's
own decoding) take the same path from `Image.fromarray`.
"""

import io
import math

import numpy as np
from PIL import Image

MIN_AREA = 0.08  # inception crop: the crop's share of the image's area, in [MIN_AREA, 1]
RATIO = (3 / 4, 4 / 3)  # and its width / height


def open_image(image) -> Image.Image:
  """A lazily decoded PIL image.

  Args:
    image: an encoded file's bytes (JPEG, PNG, ...), uint8[H, W, C] with C 1 or 3, or a PIL
      image (taken as it is).

  Returns:
    The PIL image; for bytes, nothing is decoded until it is loaded (so `draft` can still act).
  """
  if isinstance(image, Image.Image):
    return image
  if isinstance(image, (bytes, np.bytes_)):
    return Image.open(io.BytesIO(image))
  image = np.asarray(image)
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def draft(img: Image.Image, request: tuple[float, float], channels: int) -> float:
  """Lets a JPEG that is not decoded yet decode at 1/2, 1/4 or 1/8 scale while the whole image
  stays at least `request` pixels, and in grey directly when channels == 1.

  Args:
    img: the image, from `open_image`.
    request: the (width, height) it must keep at least.
    channels: the channels wanted (1 or 3).

  Returns:
    The scale it will decode at: 1, 1/2, 1/4 or 1/8 (1 for other formats, and for images
    already decoded).
  """
  if img.format != 'JPEG':
    return 1.0
  w = img.size[0]
  drafted = img.draft('L' if channels == 1 else None, tuple(math.ceil(r) for r in request))
  return drafted[1][2] / w if drafted else 1.0


def _convert(img: Image.Image, channels: int) -> Image.Image:
  """The image in mode L (channels == 1) or RGB."""
  mode = 'L' if channels == 1 else 'RGB'
  return img if img.mode == mode else img.convert(mode)


def _pixels(img: Image.Image) -> np.ndarray:
  """uint8[H, W, C] of an L or RGB image."""
  out = np.asarray(img)
  return out[..., None] if out.ndim == 2 else out


def _channels(image, channels: int) -> int:
  """`channels`, or (0) those of the array, 3 for encoded images."""
  if channels:
    return channels
  if isinstance(image, Image.Image):
    return 1 if image.mode == 'L' else 3
  return 3 if isinstance(image, (bytes, np.bytes_)) else np.asarray(image).shape[-1]


def resize_center_crop(image, short: int, crop: int, channels: int = 0) -> np.ndarray:
  """Resizes the shorter side to `short` (bicubic), then takes the centred crop x crop square.

  Args:
    image: an encoded image's bytes, uint8[H, W, C] with C 1 or 3, or a PIL image.
    short: the shorter side after resizing.
    crop: the side of the centred square (<= short).
    channels: the output's channels (1 or 3); 0: those of the array (3 for encoded images).

  Returns:
    uint8[crop, crop, channels].
  """
  channels = _channels(image, channels)
  img = open_image(image)
  w, h = img.size
  size = (max(crop, round(w * short / min(w, h))), max(crop, round(h * short / min(w, h))))
  draft(img, size, channels)
  img = _convert(img, channels).resize(size, Image.BICUBIC)
  left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
  return _pixels(img)[top : top + crop, left : left + crop]


def crop_box(rng: np.random.Generator, w: int, h: int) -> tuple[int, int, int, int]:
  """A random crop of a w x h image, as torchvision's `RandomResizedCrop.get_params` draws it:
  area in [MIN_AREA, 1] of the image's, width / height log-uniform in RATIO, up to 10 tries, then
  the centred crop of the largest RATIO-clipped size.

  Args:
    rng: the record's generator.
    w: the image's width.
    h: its height.

  Returns:
    (left, top, width, height) in pixels.
  """
  area = w * h
  log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
  for _ in range(10):
    target = area * rng.uniform(MIN_AREA, 1.0)
    ratio = math.exp(rng.uniform(*log_ratio))
    cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
    if 0 < cw <= w and 0 < ch <= h:
      return int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1)), cw, ch
  if w / h < RATIO[0]:
    cw, ch = w, round(w / RATIO[0])
  elif w / h > RATIO[1]:
    cw, ch = round(h * RATIO[1]), h
  else:
    cw, ch = w, h
  return (w - cw) // 2, (h - ch) // 2, cw, ch


def inception_crop(image, rng: np.random.Generator, size: int, channels: int = 3) -> np.ndarray:
  """ImageNet's training augmentation on one image: a random crop (`crop_box`) resized to
  size x size (bilinear, antialiased: PIL's resize of the box), then a horizontal flip with
  probability 1/2. The crop is drawn before decoding, so that a JPEG decodes at the smallest
  scale that still gives the crop `size` pixels a side.

  Args:
    image: an encoded image's bytes, uint8[H, W, C] or a PIL image.
    rng: the record's generator (its draws: the crop, then the flip).
    size: the output side.
    channels: the output's channels (1 or 3).

  Returns:
    uint8[size, size, channels].
  """
  img = open_image(image)
  w, h = img.size
  left, top, cw, ch = crop_box(rng, w, h)
  flip = rng.random() < 0.5
  scale = draft(img, (w * size / cw, h * size / ch), channels)
  img = _convert(img, channels)
  box = (left * scale, top * scale, (left + cw) * scale, (top + ch) * scale)
  img = img.resize((size, size), Image.BILINEAR, box=box)
  if flip:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return _pixels(img)
