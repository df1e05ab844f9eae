"""pytorch-fid's Inception-v3 weights as the .npz of Flax variables that FID loads.

  python -m jaxvision.pretrained.inception pt_inception-2015-12-05-6726825d.pth inception_fid.npz

reads pytorch-fid's weights file (a `torch.save`d state dict, read without torch by
`torch_file.read`; download it from pytorch-fid's FID_WEIGHTS_URL where the internet can be
reached) and writes the variables of `models/inception.py:InceptionV3` under their Flax names,
for `--config.eval.inception_weights=inception_fid.npz`:

  Mixed_5b.branch1x1.conv.weight  [O, I, H, W] -> params/Mixed_5b/branch1x1/conv/kernel [H, W, I, O]
  Mixed_5b.branch1x1.bn.weight / bias         -> params/Mixed_5b/branch1x1/bn/scale / bias
  Mixed_5b.branch1x1.bn.running_mean / _var   -> batch_stats/Mixed_5b/branch1x1/bn/mean / var

The classifier (fc, 1008 classes), torchvision's AuxLogits and the BN counters
(num_batches_tracked) are not part of the feature network and are dropped. With these weights
the 2048-d pool features equal pytorch-fid's `InceptionV3([3])` (tests/test_fid.py).
"""

import collections
import sys

import numpy as np

from jaxvision.errors import ConfigError
from jaxvision.pretrained import torch_file

_BN = {
  'weight': ('params', 'scale'),
  'bias': ('params', 'bias'),
  'running_mean': ('batch_stats', 'mean'),
  'running_var': ('batch_stats', 'var'),
}
_DROPPED = ('fc.', 'AuxLogits.')
CONVS = 94  # the BasicConv2d layers of the FID network up to the pool features


def convert(state_dict: dict) -> dict[str, np.ndarray]:
  """pytorch-fid's (or torchvision's) Inception-v3 state dict -> flat Flax variables.

  Args:
    state_dict: {'Conv2d_1a_3x3.conv.weight': f32[O, I, H, W], ..., 'fc.bias': ...}, numpy arrays.

  Returns:
    {'params/Conv2d_1a_3x3/conv/kernel': f32[H, W, I, O], 'params/.../bn/scale' | 'bias',
    'batch_stats/.../bn/mean' | 'var', ...}, float32, as `np.savez` writes them for
    `evaluate/fid.py:InceptionFeatures`.

  Raises:
    ConfigError: a tensor is not a conv or BatchNorm of a BasicConv2d, a conv kernel is not 4-d,
      or the state dict does not hold the 94 convs of the network, each with its BatchNorm.
  """
  out = {}
  for name, value in state_dict.items():
    if name.startswith(_DROPPED) or name.endswith('.num_batches_tracked'):
      continue
    *layer, kind, leaf = name.split('.')
    path = '/'.join(layer)
    if kind == 'conv' and leaf == 'weight':
      if np.ndim(value) != 4:
        raise ConfigError(f'{name} has shape {np.shape(value)}, not a conv kernel [O, I, H, W]')
      out[f'params/{path}/conv/kernel'] = np.transpose(value, (2, 3, 1, 0))
    elif kind == 'bn' and leaf in _BN:
      collection, flax_name = _BN[leaf]
      out[f'{collection}/{path}/bn/{flax_name}'] = np.asarray(value)
    else:
      raise ConfigError(
        f'{name} is not a conv or BatchNorm of a BasicConv2d: not an Inception-v3 state dict'
      )
  layers = collections.Counter(k.split('/', 1)[1].rsplit('/', 2)[0] for k in out)
  incomplete = sorted(layer for layer, n in layers.items() if n != 1 + len(_BN))  # conv + 4 bn
  if len(layers) != CONVS or incomplete:
    detail = f'; incomplete: {", ".join(incomplete[:3])}' if incomplete else ''
    raise ConfigError(
      f'the state dict holds {len(layers)} conv layers, Inception-v3 has {CONVS}{detail}'
    )
  return {k: np.ascontiguousarray(v, np.float32) for k, v in sorted(out.items())}


def convert_file(src: str, dst: str) -> dict[str, np.ndarray]:
  """Reads pytorch-fid's .pth and writes the .npz of Flax variables.

  Args:
    src: pytorch-fid's weights, e.g. pt_inception-2015-12-05-6726825d.pth (torch.save zip format).
    dst: the .npz to write, for eval.inception_weights.

  Returns:
    The variables written, by their flat names.

  Raises:
    ConfigError: `src` is not a torch.save state dict of Inception-v3.
  """
  flat = convert(torch_file.read(src))
  np.savez(dst, **flat)
  return flat


def main(argv: list[str]) -> int:
  """`python -m jaxvision.pretrained.inception SRC.pth DST.npz`; 0 on success, 2 on bad input."""
  if len(argv) != 2:
    print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
    return 2
  try:
    flat = convert_file(*argv)
  except (ConfigError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  n = sum(v.size for k, v in flat.items() if k.startswith('params/'))
  print(f'{argv[1]}: {len(flat)} arrays, {n:,} params of Inception-v3 (the FID network)')
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
