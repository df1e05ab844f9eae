"""Public pretrained weights as jaxvision variables: what `init_from.path=<file>` reads.

  python run.py --config configs/transfer.py:resnet18 --config.init_from.path=resnet18.pth

The file's extension picks the reader, its names pick the format:

  .pth .pt .bin   a `torch.save`d state dict, read without PyTorch (torch_file.py)
  .safetensors    safetensors (numpy)
  .npz            numpy's archive (no pickles)

  format               names                                      model
  torchvision_resnet   conv1.weight, layer1.0.conv1.weight, ...   resnet (resnet.py)
  timm_vit             patch_embed.proj.weight, blocks.0..., ...  vit (vit.py)
  big_vision_vit       embedding/kernel, Transformer/..., ...     vit (vit.py)

A leading 'state_dict.', 'model.' or 'module.' (and 'params/' of an .npz) is dropped. resnet.py
and vit.py list every name they map, the layout changes (torch OIHW conv kernels -> flax HWIO,
Linear [out, in] -> [in, out], fused qkv -> per-head query/key/value) and the model config the
file needs; a config that differs is refused in one line that names the overrides that fit. A
3-channel first layer is adapted to the model's input channels (summed for 1-channel images, as
timm's adapt_input_conv), and a ViT's position embeddings are resized bilinearly to the model's
patch grid (the cls slot kept). The head of another number of classes is left to
jaxvision/transfer.py (re-initialised, or excluded with init_from.exclude).
"""

import dataclasses
import hashlib

import numpy as np
import safetensors.numpy
from etils import epath

from jaxvision import paths
from jaxvision.errors import ConfigError
from jaxvision.pretrained import convert, resnet, torch_file, vit

EXTENSIONS = ('.pth', '.pt', '.bin', '.safetensors', '.npz')
# format: (detects its names, converts them, what it holds in words)
FORMATS = {
  'torchvision_resnet': (resnet.matches, resnet.convert_arrays, resnet.KIND),
  'timm_vit': (vit.matches_timm, vit.convert_timm, vit.TIMM),
  'big_vision_vit': (vit.matches_big_vision, vit.convert_big_vision, vit.BIG_VISION),
}
_PREFIXES = ('state_dict.', 'model.', 'module.', 'params/')


@dataclasses.dataclass
class Converted:
  """A weights file as a model's variables.

  Attributes:
    variables: {'params': {name: array}, 'batch_stats': {name: array}} with jaxvision's
      '/'-joined names (as jaxvision.optim.path_str writes them).
    format: a key of FORMATS.
    sha256: the file's sha256.
    notes: lines worth printing (a model that computes another function than the file's source).
  """

  variables: dict
  format: str
  sha256: str
  notes: list


def is_weights_file(path: str) -> bool:
  """`path` (local or gs://) is a file (init_from then converts it; a directory is a jaxvision
  workdir)."""
  return epath.Path(paths.resolve(path)).is_file()


def check_path(path: str) -> None:
  """A weights file jaxvision can read, checked by its extension before any compute.

  Args:
    path: init_from.path, an existing file.

  Raises:
    ConfigError: (one line) an extension not in EXTENSIONS.
  """
  if not path.lower().endswith(EXTENSIONS):
    raise ConfigError(
      f'init_from.path={path!r} is a file of unknown format; give a workdir, or weights as '
      f'{", ".join(EXTENSIONS)} (torchvision ResNet, timm ViT, big_vision ViT)'
    )


def read(path: str) -> dict[str, np.ndarray]:
  """The arrays of a weights file by their names in the file.

  Args:
    path: a file with one of EXTENSIONS.

  Returns:
    {name: np.ndarray}.

  Raises:
    ConfigError: (one line) an unknown extension, or a file its reader cannot read.
  """
  check_path(path)
  lower = path.lower()
  with epath.Path(paths.resolve(path)).open('rb') as file:  # local or gs://
    try:
      if lower.endswith('.safetensors'):
        return dict(safetensors.numpy.load(file.read()))
      if lower.endswith('.npz'):
        with np.load(file, allow_pickle=False) as f:
          return {k: f[k] for k in f.files}
    except Exception as e:  # OSError, a bad zip, a pickled .npz, safetensors' own errors
      first = (str(e).strip().splitlines() or [''])[0]
      raise ConfigError(
        f'init_from.path={path!r} cannot be read: {type(e).__name__}: {first}'
      ) from e
    return torch_file.read(path, file)


def _detected(arrays: dict) -> str | None:
  return next((name for name, (found, _, _) in FORMATS.items() if found(arrays)), None)


def _strip(arrays: dict) -> dict:
  """The arrays under a wrapper prefix ('state_dict.', 'model.', 'module.', 'params/'), if some
  format's names are there (or every name has it); else the arrays as they are."""
  for _ in range(len(_PREFIXES)):
    for prefix in _PREFIXES:
      inner = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
      if inner and (len(inner) == len(arrays) or _detected(inner)) and not _detected(arrays):
        arrays = inner
        break
    else:
      return arrays
  return arrays


def detect(arrays: dict, path: str) -> str:
  """The format of a file's arrays (a key of FORMATS).

  Args:
    arrays: {name: array}, wrapper prefixes dropped.
    path: the file, for messages.

  Returns:
    The format.

  Raises:
    ConfigError: (one line) names of no supported format.
  """
  found = _detected(arrays)
  if found is None:
    names = ', '.join(sorted(arrays)[:4])
    raise ConfigError(
      f'init_from.path={path!r} holds weights of no known format (names {names}, ...); '
      f'jaxvision reads torchvision ResNets, timm ViTs and big_vision ViTs'
    )
  return found


def sha256(path: str) -> str:
  """The sha256 hex digest of a file."""
  h = hashlib.sha256()
  with epath.Path(paths.resolve(path)).open('rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def load(path: str, model: dict, target: dict) -> Converted:
  """A weights file converted for a model.

  Args:
    path: a weights file (EXTENSIONS).
    model: config.model with the model's defaults: {'name': 'resnet', 'block': ..., ...}.
    target: the model's variables' shapes, {'params': {name: shape}, 'batch_stats': {...}}, with
      jaxvision.optim.path_str names.

  Returns:
    The Converted variables (every name one of the model's; shapes may differ only where the
    model does, e.g. a head of another number of classes).

  Raises:
    ConfigError: (one line) an unknown extension or format, a file that cannot be read, a model
      of another architecture than the file's, or names the model has no place for.
  """
  arrays = _strip(read(path))
  fmt = detect(arrays, path)
  _, convert_arrays, _ = FORMATS[fmt]
  try:
    variables, notes = convert_arrays(arrays, model, target, path)
  except KeyError as e:  # a name the format's core needs (e.g. blocks.0.mlp.fc1.weight)
    raise ConfigError(
      f'init_from.path={path!r} holds {FORMATS[fmt][2]} without {e.args[0]!r}; the file is '
      f'incomplete or another variant'
    ) from None
  return Converted(variables, fmt, sha256(path), notes)


__all__ = ['Converted', 'EXTENSIONS', 'FORMATS', 'check_path', 'convert', 'detect', 'load', 'read']
