"""The layout helpers the weight converters share: input-channel adaptation, position-embedding
resizing, and the one-line errors for a file that does not fit the model.

Everything here is numpy: converting weights needs no accelerator and no PyTorch.
"""

import math

import numpy as np

from jaxvision.errors import ConfigError


def adapt_input_channels(kernel: np.ndarray, channels: int, axis: int) -> np.ndarray:
  """A first-layer kernel for `channels` input channels, as timm's `adapt_input_conv` makes it.

  One channel: the sum over the kernel's input channels (a grey image repeated to 3 channels
  through the old kernel equals the grey image through the new one). Other counts: the channels
  repeated cyclically up to `channels`, scaled by old/new so the response keeps its size.

  Args:
    kernel: the pretrained kernel (any layout).
    channels: the model's input channels.
    axis: the kernel's input-channel axis (1 for torch OIHW, 2 for flax HWIO).

  Returns:
    The kernel with `channels` along `axis` (the same array if it already has them).
  """
  old = kernel.shape[axis]
  if channels == old:
    return kernel
  if channels == 1:
    return kernel.sum(axis=axis, keepdims=True)
  reps = -(-channels // old)
  tiled = np.concatenate([kernel] * reps, axis=axis)
  tiled = np.take(tiled, np.arange(channels), axis=axis)
  return tiled * (old / channels)


def _linear_weights(n_in: int, n_out: int) -> np.ndarray:
  """f64[n_out, n_in]: 1-D linear interpolation with half-pixel centres and clamped edges (torch's
  `F.interpolate(mode='bilinear', align_corners=False, antialias=False)` along one axis)."""
  src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
  lo = np.minimum(np.floor(src).astype(int), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  frac = src - lo
  w = np.zeros((n_out, n_in))
  np.add.at(w, (np.arange(n_out), lo), 1.0 - frac)
  np.add.at(w, (np.arange(n_out), hi), frac)
  return w


def resize_grid(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of a position-embedding grid (no antialiasing; half-pixel centres).

  Args:
    grid: [h, w, D].
    size: (new h, new w).

  Returns:
    [size[0], size[1], D] in grid's dtype; the same values when the size is unchanged.
  """
  h, w, _ = grid.shape
  if (h, w) == tuple(size):
    return grid
  rows, cols = _linear_weights(h, size[0]), _linear_weights(w, size[1])
  out = np.einsum('ih,jw,hwd->ijd', rows, cols, grid.astype(np.float64))
  return out.astype(grid.dtype)


def _side(n: int) -> int | None:
  """sqrt(n) if n is a square, else None."""
  s = math.isqrt(n)
  return s if s * s == n else None


def position_embedding(
  pos: np.ndarray, length: int, cls_slot: bool, has_cls: bool, path: str
) -> np.ndarray:
  """A pretrained position embedding as jaxvision's PositionEmbedding holds it: [L, D] over the
  (cls token and the) row-major patch grid, the grid resized bilinearly to the model's.

  Args:
    pos: the file's embedding, [N, D] or [1, N, D].
    length: L, the model's sequence length (the cls slot included).
    cls_slot: the model prepends a class token (its first row is the cls slot).
    has_cls: the file has a class token. Its embedding then holds a cls slot if N - 1 is a
      square (timm, old ViT checkpoints), none if N is (big_vision, timm's no_embed_class): the
      class token was prepended after the embedding was added, so the slot is zero.
    path: the file, for messages.

  Returns:
    f[L, D].

  Raises:
    ConfigError: a grid that is not square (in the file or in the model).
  """
  pos = pos.reshape(pos.shape[-2:])
  n = pos.shape[0]
  if has_cls and _side(n) is None and _side(n - 1) is not None:
    slot, grid = pos[:1], pos[1:]
  else:
    slot, grid = np.zeros_like(pos[:1]), pos
  old, new = _side(grid.shape[0]), _side(length - int(cls_slot))
  if old is None or new is None:
    raise ConfigError(
      f'init_from.path={path!r}: position embeddings of {grid.shape[0]} patches cannot be '
      f"resized to the model's {length - int(cls_slot)}; both patch grids must be square"
    )
  grid = resize_grid(grid.reshape(old, old, -1), (new, new)).reshape(new * new, -1)
  return np.concatenate([slot, grid]) if cls_slot else grid


def describe(fields: dict) -> str:
  """'block='basic', width=64' for {'block': 'basic', 'width': 64}."""
  return ', '.join(f'{k}={v!r}' for k, v in fields.items())


def check_model(path: str, kind: str, name: str, arch: dict, model: dict) -> None:
  """The model config must be the architecture the file holds.

  Args:
    path: the file, for messages.
    kind: what the file holds, in words ('a torchvision ResNet').
    name: the model name the file needs (config.model.name).
    arch: the model fields the file determines, {field: value} (None: not determined).
    model: config.model with its defaults: {'name': ..., field: value}.

  Raises:
    ConfigError: (one line) another model, or fields that differ, with the overrides that fit.
  """
  if model.get('name') != name:
    raise ConfigError(
      f'init_from.path={path!r} holds {kind}; the model is {model.get("name")!r}, '
      f'use --config.model.name={name} with {describe(arch)}'
    )
  norm = lambda v: tuple(v) if isinstance(v, (list, tuple)) else v
  wrong = {k: v for k, v in arch.items() if v is not None and norm(model.get(k)) != norm(v)}
  if wrong:
    have = {k: model.get(k) for k in wrong}
    fix = ' '.join(
      f'--config.model.{k}={",".join(map(str, v)) if isinstance(v, tuple) else v}'
      for k, v in wrong.items()
    )
    raise ConfigError(
      f'init_from.path={path!r} holds {kind} with {describe(wrong)}; the model has '
      f'{describe(have)}: set {fix}'
    )


def check_names(path: str, kind: str, variables: dict, target: dict) -> None:
  """Every converted name must be a variable of the model.

  Args:
    path: the file, for messages.
    kind: what the file holds, in words.
    variables: the converted {collection: {name: array}}.
    target: the model's {collection: {name: shape}}.

  Raises:
    ConfigError: (one line) the names the model lacks.
  """
  extra = [f'{c}/{n}' for c, tree in variables.items() for n in tree if n not in target.get(c, {})]
  if extra:
    raise ConfigError(
      f'init_from.path={path!r} holds {kind} whose {", ".join(extra[:4])} the model lacks '
      f"({len(extra)} names); the model is not the file's architecture"
    )


def unsupported(path: str, kind: str, names: list[str]) -> ConfigError:
  """The error for names of a file that no jaxvision model has (a variant it does not build)."""
  return ConfigError(
    f'init_from.path={path!r} holds {kind} with {", ".join(sorted(names)[:4])} '
    f"({len(names)} names) that jaxvision's model has no place for; see jaxvision/pretrained"
  )
