"""torchvision ResNet state dicts -> jaxvision's ResNet (jaxvision/models/resnet.py).

  torchvision name                        jaxvision name (params / batch_stats)
  conv1.weight                            conv_stem/kernel          OIHW -> HWIO
  bn1.weight | bias                       norm_stem/scale | bias
  bn1.running_mean | running_var          norm_stem/mean | var      (batch_stats)
  layer{i}.{j}.conv{k}.weight             stage{i}_block{j+1}/Conv_{k-1}/kernel
  layer{i}.{j}.bn{k}.*                    stage{i}_block{j+1}/BatchNorm_{k-1}/*
  layer{i}.{j}.downsample.0.weight        stage{i}_block{j+1}/conv_proj/kernel
  layer{i}.{j}.downsample.1.*             stage{i}_block{j+1}/norm_proj/*
  fc.weight | bias                        head/kernel ([out, in] -> [in, out]) | bias
  *.num_batches_tracked                   (dropped)

The file fixes block ('bottleneck' if layer1.0.conv3 exists), stage_sizes (blocks per layerN),
width (conv1's output channels) and stem ('imagenet' for a 7x7 conv1); the model config must
have the same. torchvision's ResNets are v1.5 (the stride on the 3x3 conv), as jaxvision's. Their
convs pad kernel_size // 2 on every side: model.padding='torch' computes the same function
(with 'same' a stride-2 3x3 conv pads (0, 1) on even sizes). A 3-channel conv1 is summed over its
input channels for a 1-channel model (see convert.adapt_input_channels).
"""

import re

import numpy as np

from jaxvision.pretrained import convert

KIND = 'a torchvision ResNet'
MODEL = 'resnet'

_BN = {
  'weight': ('params', 'scale'),
  'bias': ('params', 'bias'),
  'running_mean': ('batch_stats', 'mean'),
  'running_var': ('batch_stats', 'var'),
}
_BLOCK = re.compile(r'layer(\d+)\.(\d+)\.(.+)')


def matches(arrays: dict) -> bool:
  """The names are a torchvision ResNet's."""
  return 'conv1.weight' in arrays and 'layer1.0.conv1.weight' in arrays


def architecture(arrays: dict) -> dict:
  """The ResNet fields the state dict determines: block, stage_sizes, width, stem."""
  blocks = {}
  for name in arrays:
    m = _BLOCK.fullmatch(name)
    if m:
      blocks.setdefault(int(m[1]), set()).add(int(m[2]))
  return {
    'block': 'bottleneck' if 'layer1.0.conv3.weight' in arrays else 'basic',
    'stage_sizes': tuple(len(blocks[i]) for i in sorted(blocks)),
    'width': int(arrays['conv1.weight'].shape[0]),
    'stem': 'imagenet' if arrays['conv1.weight'].shape[-1] == 7 else 'cifar',
  }


def _target(name: str) -> tuple[str, str, str] | None:
  """(collection, jaxvision name, layout) of a torchvision name; None: dropped; '' layout: as is.

  Raises:
    KeyError: a name no torchvision ResNet has.
  """
  parts = name.split('.')
  if parts[-1] == 'num_batches_tracked':
    return None
  if name == 'fc.weight':
    return 'params', 'head/kernel', 'linear'
  if name == 'fc.bias':
    return 'params', 'head/bias', ''
  if name == 'conv1.weight':
    return 'params', 'conv_stem/kernel', 'stem'
  if parts[0] == 'bn1' and len(parts) == 2 and parts[1] in _BN:
    coll, leaf = _BN[parts[1]]
    return coll, f'norm_stem/{leaf}', ''
  m = _BLOCK.fullmatch(name)
  if m:
    module, rest = f'stage{int(m[1])}_block{int(m[2]) + 1}', m[3]
    if c := re.fullmatch(r'conv(\d)\.weight', rest):
      return 'params', f'{module}/Conv_{int(c[1]) - 1}/kernel', 'conv'
    if rest == 'downsample.0.weight':
      return 'params', f'{module}/conv_proj/kernel', 'conv'
    c = re.fullmatch(r'bn(\d)\.(\w+)', rest) or re.fullmatch(r'downsample\.(1)\.(\w+)', rest)
    if c and c[2] in _BN:
      coll, leaf = _BN[c[2]]
      layer = 'norm_proj' if rest.startswith('downsample') else f'BatchNorm_{int(c[1]) - 1}'
      return coll, f'{module}/{layer}/{leaf}', ''
  raise KeyError(name)


def convert_arrays(arrays: dict, model: dict, target: dict, path: str):
  """A torchvision ResNet state dict as jaxvision ResNet variables.

  Args:
    arrays: {torchvision name: array}.
    model: config.model with its defaults ({'name': 'resnet', 'block': ..., ...}).
    target: the model's {collection: {name: shape}}.
    path: the file, for messages.

  Returns:
    ({'params': {name: array}, 'batch_stats': {name: array}}, notes): notes are lines worth
    printing (a model that pads unlike torchvision).

  Raises:
    ConfigError: (one line) the model is not this ResNet, or the file has names no torchvision
      ResNet has.
  """
  convert.check_model(path, KIND, MODEL, architecture(arrays), model)
  out = {'params': {}, 'batch_stats': {}}
  unknown = []
  channels = target['params'].get('conv_stem/kernel', (0, 0, 3))[2]
  for name, value in arrays.items():
    try:
      spec = _target(name)
    except KeyError:
      unknown.append(name)
      continue
    if spec is None:
      continue
    coll, dest, layout = spec
    if layout == 'stem':
      value = convert.adapt_input_channels(value, channels, axis=1)
    if layout in ('stem', 'conv'):
      value = value.transpose(2, 3, 1, 0)
    elif layout == 'linear':
      value = value.T
    out[coll][dest] = np.ascontiguousarray(value)
  if unknown:
    raise convert.unsupported(path, KIND, unknown)
  convert.check_names(path, KIND, out, target)
  notes = []
  if model.get('padding', 'same') != 'torch':
    notes.append(
      f'{path} holds torchvision weights, whose convs pad as model.padding=torch; the model '
      f"pads {model.get('padding', 'same')!r}, so its outputs differ from torchvision's"
    )
  return out, notes
