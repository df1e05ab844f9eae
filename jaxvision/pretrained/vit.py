"""timm and big_vision ViTs -> jaxvision's ViT (jaxvision/models/vit.py).

timm (`vit_*_patch16_*`, safetensors or a state dict; D = dim, H = heads, d = D / H):

  timm name                         jaxvision name
  patch_embed.proj.weight | bias    patch_embedding/kernel | bias   [D, C, p, p] -> [p*p*C, D]
  cls_token                         cls_token                       [1, 1, D]
  pos_embed                         PositionEmbedding_0/pos_embedding  [1, L, D] -> [L, D]
  blocks.{i}.norm1.weight | bias    block{i+1}/LayerNorm_0/scale | bias
  blocks.{i}.attn.qkv.weight        block{i+1}/MultiHeadDotProductAttention_0/{query,key,value}/
                                      kernel: [3D, D] -> 3 x [D, H, d] (bias: [3D] -> 3 x [H, d])
  blocks.{i}.attn.proj.weight       block{i+1}/MultiHeadDotProductAttention_0/out/kernel
                                      [D, D] -> [H, d, D] (bias as is)
  blocks.{i}.norm2.*                block{i+1}/LayerNorm_1/*
  blocks.{i}.mlp.fc1.* | fc2.*      block{i+1}/Dense_0/* | Dense_1/*   ([out, in] -> [in, out])
  norm.weight | bias                norm/scale | bias
  head.weight | bias                head/kernel | bias

timm's GELU is exact: model.gelu='erf' computes the same function. The file fixes patch, dim,
depth, mlp_dim and pool ('cls' with a cls_token, 'mean' without); H comes from the model config
(timm's fused qkv does not record it). Not supported (refused by name): layer scale (ls1, ls2),
fc_norm (global_pool='avg' with fc_norm), register tokens, norm_pre, q/k norms.

big_vision (`big_vision/models/vit.py`, an .npz of '/'-joined names):

  big_vision name                                   jaxvision name
  embedding/kernel | bias                           patch_embedding/kernel | bias  [p, p, C, D]
  cls                                               cls_token (pool_type 'tok'; none: 'gap')
  pos_embedding                                     PositionEmbedding_0/pos_embedding
  Transformer/encoderblock_{i}/LayerNorm_{0,1}/*    block{i+1}/LayerNorm_{0,1}/*
  Transformer/encoderblock_{i}/MultiHeadDotProductAttention_0/{query,key,value,out}/*
                                                    block{i+1}/MultiHeadDotProductAttention_0/...
  Transformer/encoderblock_{i}/MlpBlock_0/Dense_{0,1}/*   block{i+1}/Dense_{0,1}/*
  Transformer/encoder_norm/*                        norm/*
  head/kernel | bias                                head/kernel | bias

The scanned layout (`Transformer/encoderblock/...`, a leading depth axis) is split per block; a
leading 'params/' is dropped; the old `Transformer/posembed_input/pos_embedding` is read too.
big_vision adds pos_embedding before it prepends the cls token, so its embedding has no cls slot:
the slot is zero (an embedding of grid + 1 rows, as old ViT checkpoints have, keeps its slot).
pool_type 'gap' is model.pool='mean' and 'tok' is 'cls'; 'map' (MAPHead) and pre_logits
(rep_size) are refused; pool_type '0' cannot be told from 'gap' by the names. big_vision's GELU is
flax's tanh approximation, model.gelu='tanh' (the default).

Both: the patch kernel of a 3-channel model is summed over its input channels for a 1-channel
model (convert.adapt_input_channels), and the patch grid of the position embedding is resized
bilinearly to the model's (the cls slot kept; convert.position_embedding).
"""

import re

import numpy as np

from jaxvision.pretrained import convert

MODEL = 'vit'
TIMM = 'a timm ViT'
BIG_VISION = 'a big_vision ViT'
_POS = 'PositionEmbedding_0/pos_embedding'
_ATTN = 'MultiHeadDotProductAttention_0'


def matches_timm(arrays: dict) -> bool:
  """The names are a timm ViT's."""
  return 'patch_embed.proj.weight' in arrays


def matches_big_vision(arrays: dict) -> bool:
  """The names are a big_vision ViT's."""
  return 'embedding/kernel' in arrays and any(k.startswith('Transformer/') for k in arrays)


def _depth(arrays: dict, pattern: str) -> int:
  """1 + the largest block index that `pattern` (one group) finds in the names; 0 if none."""
  found = [int(m[1]) for k in arrays if (m := re.match(pattern, k))]
  return max(found) + 1 if found else 0


def _heads(target: dict) -> int:
  """The model's attention heads, from its query kernel [D, H, d]."""
  return target['params'][f'block1/{_ATTN}/query/kernel'][1]


def _notes(path: str, model: dict, want: str, who: str) -> list[str]:
  if model.get('gelu', 'tanh') == want:
    return []
  return [
    f'{path} holds {who} weights, whose GELU is model.gelu={want}; the model uses '
    f"{model.get('gelu', 'tanh')!r}, so its outputs differ from {who}'s"
  ]


def convert_timm(arrays: dict, model: dict, target: dict, path: str):
  """A timm ViT state dict as jaxvision ViT variables.

  Args:
    arrays: {timm name: array}.
    model: config.model with its defaults ({'name': 'vit', 'patch': ..., ...}).
    target: the model's {collection: {name: shape}}.
    path: the file, for messages.

  Returns:
    ({'params': {name: array}}, notes): notes are lines worth printing (another GELU).

  Raises:
    ConfigError: (one line) the model is not this ViT, or the file has names it cannot hold.
  """
  patch = arrays['patch_embed.proj.weight']  # [D, C, p, p]
  dim, _, p, _ = patch.shape
  has_cls = 'cls_token' in arrays
  arch = {
    'patch': int(p),
    'dim': int(dim),
    'depth': _depth(arrays, r'blocks\.(\d+)\.'),
    'mlp_dim': int(arrays['blocks.0.mlp.fc1.weight'].shape[0]),
    'pool': 'cls' if has_cls else 'mean',
  }
  convert.check_model(path, TIMM, MODEL, arch, model)
  heads = _heads(target)
  head_dim = dim // heads
  channels = target['params']['patch_embedding/kernel'][0] // (p * p)
  out, unknown = {}, []
  for name, value in arrays.items():
    m = re.fullmatch(r'blocks\.(\d+)\.(.+)', name)
    rest = m[2] if m else ''
    block = f'block{int(m[1]) + 1}' if m else ''
    if name == 'patch_embed.proj.weight':
      value = convert.adapt_input_channels(value, channels, axis=1)
      out['patch_embedding/kernel'] = value.transpose(2, 3, 1, 0).reshape(-1, dim)
    elif name == 'patch_embed.proj.bias':
      out['patch_embedding/bias'] = value
    elif name == 'cls_token':
      out['cls_token'] = value.reshape(1, 1, dim)
    elif name == 'pos_embed':
      length = target['params'][_POS][0]
      out[_POS] = convert.position_embedding(value, length, has_cls, has_cls, path)
    elif name in ('norm.weight', 'norm.bias'):
      out[f'norm/{"scale" if name.endswith("weight") else "bias"}'] = value
    elif name == 'head.weight':
      out['head/kernel'] = value.T
    elif name == 'head.bias':
      out['head/bias'] = value
    elif rest in ('norm1.weight', 'norm1.bias', 'norm2.weight', 'norm2.bias'):
      ln = 'LayerNorm_0' if rest.startswith('norm1') else 'LayerNorm_1'
      out[f'{block}/{ln}/{"scale" if rest.endswith("weight") else "bias"}'] = value
    elif rest == 'attn.qkv.weight':  # [3D, D]: rows (q|k|v, head, d)
      qkv = value.T.reshape(dim, 3, heads, head_dim)
      for i, part in enumerate(('query', 'key', 'value')):
        out[f'{block}/{_ATTN}/{part}/kernel'] = qkv[:, i]
    elif rest == 'attn.qkv.bias':
      qkv = value.reshape(3, heads, head_dim)
      for i, part in enumerate(('query', 'key', 'value')):
        out[f'{block}/{_ATTN}/{part}/bias'] = qkv[i]
    elif rest == 'attn.proj.weight':  # [D, H * d]
      out[f'{block}/{_ATTN}/out/kernel'] = value.T.reshape(heads, head_dim, dim)
    elif rest == 'attn.proj.bias':
      out[f'{block}/{_ATTN}/out/bias'] = value
    elif m2 := re.fullmatch(r'mlp\.fc([12])\.(weight|bias)', rest):
      dense = f'{block}/Dense_{int(m2[1]) - 1}'
      out[f'{dense}/kernel' if m2[2] == 'weight' else f'{dense}/bias'] = (
        value.T if m2[2] == 'weight' else value
      )
    else:
      unknown.append(name)
  if unknown:
    raise convert.unsupported(path, TIMM, unknown)
  out = {'params': {k: np.ascontiguousarray(v) for k, v in out.items()}}
  convert.check_names(path, TIMM, out, target)
  return out, _notes(path, model, 'erf', 'timm')


def _unscan(arrays: dict) -> dict:
  """big_vision's scanned layout (Transformer/encoderblock/..., a leading depth axis) split into
  Transformer/encoderblock_{i}/...; other names as they are."""
  out = {}
  for name, value in arrays.items():
    if name.startswith('Transformer/encoderblock/'):
      rest = name[len('Transformer/encoderblock/') :]
      for i in range(value.shape[0]):
        out[f'Transformer/encoderblock_{i}/{rest}'] = value[i]
    else:
      out[name] = value
  return out


def convert_big_vision(arrays: dict, model: dict, target: dict, path: str):
  """A big_vision ViT .npz as jaxvision ViT variables.

  Args:
    arrays: {big_vision '/'-joined name: array}.
    model: config.model with its defaults ({'name': 'vit', 'patch': ..., ...}).
    target: the model's {collection: {name: shape}}.
    path: the file, for messages.

  Returns:
    ({'params': {name: array}}, notes): notes are lines worth printing (another GELU).

  Raises:
    ConfigError: (one line) the model is not this ViT, or the file has names it cannot hold.
  """
  arrays = _unscan(arrays)
  if 'Transformer/posembed_input/pos_embedding' in arrays:
    arrays['pos_embedding'] = arrays.pop('Transformer/posembed_input/pos_embedding')
  kernel = arrays['embedding/kernel']  # [p, p, C, D]
  p, _, _, dim = kernel.shape
  has_cls = 'cls' in arrays
  query = arrays.get(f'Transformer/encoderblock_0/{_ATTN}/query/kernel')
  arch = {
    'patch': int(p),
    'dim': int(dim),
    'depth': _depth(arrays, r'Transformer/encoderblock_(\d+)/'),
    'heads': int(query.shape[1]) if query is not None else None,
    'mlp_dim': int(arrays['Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'].shape[1]),
    'pool': 'cls' if has_cls else 'mean',
  }
  convert.check_model(path, BIG_VISION, MODEL, arch, model)
  channels = target['params']['patch_embedding/kernel'][0] // (p * p)
  out, unknown = {}, []
  for name, value in arrays.items():
    m = re.fullmatch(r'Transformer/encoderblock_(\d+)/(.+)', name)
    if name == 'embedding/kernel':
      value = convert.adapt_input_channels(value, channels, axis=2)
      out['patch_embedding/kernel'] = value.reshape(-1, dim)
    elif name == 'embedding/bias':
      out['patch_embedding/bias'] = value
    elif name == 'cls':
      out['cls_token'] = value.reshape(1, 1, dim)
    elif name == 'pos_embedding':
      length = target['params'][_POS][0]
      out[_POS] = convert.position_embedding(value, length, has_cls, has_cls, path)
    elif name.startswith('Transformer/encoder_norm/'):
      out[f'norm/{name.rsplit("/", 1)[1]}'] = value
    elif name in ('head/kernel', 'head/bias'):
      out[name] = value
    elif m and re.fullmatch(rf'(LayerNorm_[01]|{_ATTN}/(query|key|value|out))/\w+', m[2]):
      out[f'block{int(m[1]) + 1}/{m[2]}'] = value
    elif m and (m2 := re.fullmatch(r'MlpBlock_0/(Dense_[01]/\w+)', m[2])):
      out[f'block{int(m[1]) + 1}/{m2[1]}'] = value
    else:
      unknown.append(name)
  if unknown:
    raise convert.unsupported(path, BIG_VISION, unknown)
  out = {'params': {k: np.ascontiguousarray(v) for k, v in out.items()}}
  convert.check_names(path, BIG_VISION, out, target)
  return out, _notes(path, model, 'tanh', 'big_vision')
