"""Reads a PyTorch `torch.save` file (a state dict) into numpy arrays without importing torch.

jaxvision never imports torch, and unpickling an arbitrary .pth file runs arbitrary code; this
reader understands only the zip format of `torch.save` (PyTorch >= 1.6) and lets the unpickler
build nothing but tensors, OrderedDicts and plain containers (what `torch.load(weights_only=True)`
allows for a state dict). One line of PyTorch does the same when torch is at hand; this exists so
that a TPU VM without torch can convert torchvision and pytorch-fid weights.
"""

import collections
import pickle
import zipfile

import numpy as np

from jaxvision.errors import ConfigError

_DTYPES = {
  'FloatStorage': np.float32,
  'DoubleStorage': np.float64,
  'HalfStorage': np.float16,
  'BFloat16Storage': None,  # widened to float32 below
  'LongStorage': np.int64,
  'IntStorage': np.int32,
  'ShortStorage': np.int16,
  'CharStorage': np.int8,
  'ByteStorage': np.uint8,
  'BoolStorage': np.bool_,
}


class _Storage:
  """A storage type named in the pickle (torch.FloatStorage, ...)."""

  def __init__(self, name: str):
    self.name = name


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2 over a numpy storage: a strided view, copied."""
  itemsize = storage.dtype.itemsize
  view = np.lib.stride_tricks.as_strided(
    storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
  )
  return np.array(view)


def _rebuild_parameter(data, *unused):
  """torch._utils._rebuild_parameter: a Parameter is its data."""
  return data


class _Unpickler(pickle.Unpickler):
  """Builds tensors from the archive's storages; refuses every other global."""

  _ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
  }

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix, self._storages = archive, prefix, {}

  def find_class(self, module, name):
    if module == 'torch' and name in _DTYPES:
      return _Storage(name)
    if (module, name) in self._ALLOWED:
      return self._ALLOWED[(module, name)]
    raise pickle.UnpicklingError(f'{module}.{name} is not part of a state dict')

  def persistent_load(self, pid):
    kind, storage, key = pid[0], pid[1], pid[2]
    if kind != 'storage' or not isinstance(storage, _Storage):
      raise pickle.UnpicklingError(f'unknown persistent id {pid[:2]}')
    if key not in self._storages:
      raw = self._archive.read(f'{self._prefix}/data/{key}')
      if storage.name == 'BFloat16Storage':  # bf16 is the top half of an f32
        bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
        self._storages[key] = bits.view(np.float32)
      else:
        self._storages[key] = np.frombuffer(raw, _DTYPES[storage.name])
    return self._storages[key]


def _flatten(tree, prefix: str = '') -> dict:
  """A nested state dict ({'state_dict': {...}} or {'model': {...}}) -> its arrays by name."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    elif isinstance(v, np.ndarray):
      out[f'{prefix}{k}'] = v
  return out


def read(path: str, file=None) -> dict[str, np.ndarray]:
  """The arrays of a `torch.save`d state dict, by their PyTorch names.

  Args:
    path: a .pth/.pt file written by `torch.save(model.state_dict(), path)` (zip format); a
      dict that nests the state dict (e.g. {'state_dict': ...}) is flattened with '.'.
    file: `path` opened for reading in binary mode (seekable; e.g. by etils.epath, for a
      gs:// path), or None: open `path` here.

  Returns:
    {'layer1.0.conv1.weight': np.ndarray, ...} in the tensors' own dtypes (bf16 as float32).

  Raises:
    ConfigError: the file is not a zip-format torch.save file, or holds something other than
      tensors.
  """
  source = path if file is None else file
  if not zipfile.is_zipfile(source):
    raise ConfigError(
      f'{path} is not a PyTorch state dict of the zip format (torch.save since PyTorch 1.6); '
      f'resave it with torch.save(torch.load(path), path)'
    )
  with zipfile.ZipFile(source) as archive:
    pkl = [n for n in archive.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkl:
      raise ConfigError(f'{path} is a zip file but not a torch.save file (no data.pkl)')
    prefix = pkl[0][: -len('/data.pkl')] if '/' in pkl[0] else ''
    with archive.open(pkl[0]) as f:
      try:
        tree = _Unpickler(f, archive, prefix).load()
      except pickle.UnpicklingError as e:
        raise ConfigError(f'{path}: {e}') from None
  if not isinstance(tree, dict):
    raise ConfigError(f'{path} holds a {type(tree).__name__}, not a state dict')
  return _flatten(tree)
