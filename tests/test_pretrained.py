"""Public pretrained weights (jaxvision/pretrained): torchvision ResNets, timm and big_vision ViTs
give the logits of their own frameworks in jaxvision's models; the torch-free reader; the layout
adaptations (1-channel stem, position-embedding resize); init_from.path=<file> end to end."""

import json
import os
import pickle
import zipfile

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from conftest import init_variables, run_py
from jaxvision import checkpoint, experiment, pretrained
from jaxvision.errors import ConfigError
from jaxvision.models import resnet, vit
from jaxvision.optim import path_str
from jaxvision.pretrained import convert, torch_file

RTOL = 1e-4  # max |difference| / max |logit| of the parity tests
RESNETS = {
  'resnet18': dict(stage_sizes=(2, 2, 2, 2), block='basic'),
  'resnet50': dict(stage_sizes=(3, 4, 6, 3), block='bottleneck'),
}


def _torch():
  from torch_peers import torch

  return torch


def _torchvision():
  from torch_peers import import_torchvision

  return import_torchvision()


def _timm():
  _torchvision()
  return pytest.importorskip('timm')


def _randomise(module, seed: int):
  """Seeded random weights everywhere, BatchNorm statistics and affines included (so they
  matter), scaled so that activations keep their size through the depth."""
  torch = _torch()
  torch.manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
        m.running_mean.normal_(0.0, 0.1)
        m.running_var.uniform_(0.5, 2.0)
      elif isinstance(m, torch.nn.LayerNorm):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0.0, 0.1)
    for name, p in module.named_parameters():
      if name.endswith(('cls_token', 'pos_embed')):
        p.normal_(0.0, 0.5)
      elif name.endswith('.bias') and p.dim() == 1 and 'norm' not in name and 'bn' not in name:
        p.normal_(0.0, 0.05)
  return module.eval()


def _target(model, image_shape):
  """The model's {collection: {name: shape}} (what transfer passes to pretrained.load)."""
  abstract = jax.eval_shape(
    lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False)
  )
  return {
    c: {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(t)[0]}
    for c, t in abstract.items()
  }


def _nested(flat: dict) -> dict:
  """{'a/b': x} -> {'a': {'b': x}} of f32 jax arrays."""
  return traverse_util.unflatten_dict(
    {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep='/'
  )


def _fields(model) -> dict:
  """config.model with defaults, as transfer builds it, for a model instance."""
  names = ('num_classes', 'stage_sizes', 'block', 'width', 'stem', 'padding')
  names += ('patch', 'dim', 'depth', 'heads', 'mlp_dim', 'pool', 'gelu')
  name = 'resnet' if isinstance(model, resnet.ResNet) else 'vit'
  return {'name': name, **{k: getattr(model, k) for k in names if hasattr(model, k)}}


def _load(path, model, image_shape):
  converted = pretrained.load(str(path), _fields(model), _target(model, image_shape))
  return {c: _nested(v) for c, v in converted.variables.items() if v}, converted


def _logits(model, variables, images):
  return np.asarray(model.apply(variables, jnp.asarray(images), train=False))


def _assert_close(got, want):
  err = np.max(np.abs(got - want)) / np.max(np.abs(want))
  print(f'max |diff| / max |logit| = {err:.2e}')
  assert err < RTOL, err
  return err


def _images(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _torch_logits(module, images_nhwc):
  torch = _torch()
  with torch.no_grad():
    return module(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def _save_torchvision(path, name: str, seed: int = 0):
  """A torchvision ResNet with seeded random weights, torch.save'd; returns the module."""
  module = _randomise(getattr(_torchvision().models, name)(), seed)
  _torch().save(module.state_dict(), str(path))
  return module


def _jax_resnet(name, channels=3, **kw):
  return resnet.ResNet(
    num_classes=kw.pop('num_classes', 1000),
    width=64,
    stem='imagenet',
    padding=kw.pop('padding', 'torch'),
    **RESNETS[name],
    **kw,
  )


# ---------------------------------------------------------------- parity


@pytest.mark.parametrize('name', sorted(RESNETS))
def test_torchvision_resnet_gives_torchvision_logits(name, tmp_path):
  module = _save_torchvision(tmp_path / f'{name}.pth', name)
  images = _images((2, 64, 64, 3))
  model = _jax_resnet(name)
  variables, converted = _load(tmp_path / f'{name}.pth', model, (64, 64, 3))
  assert converted.format == 'torchvision_resnet' and converted.notes == []
  want = _torch_logits(module, images)
  _assert_close(_logits(model, variables, images), want)
  # XLA's 'same' padding of the strided 3x3 convs computes another function: the field matters.
  same = _jax_resnet(name, padding='same')
  variables, converted = _load(tmp_path / f'{name}.pth', same, (64, 64, 3))
  assert 'model.padding=torch' in converted.notes[0]
  assert np.max(np.abs(_logits(same, variables, images) - want)) > 1e-2 * np.max(np.abs(want))


def _timm_vit(**kw):
  timm = _timm()
  from timm.models.vision_transformer import VisionTransformer

  del timm
  kw = {'img_size': 32, 'patch_size': 8, 'embed_dim': 64, 'depth': 2, 'num_heads': 4, **kw}
  return _randomise(VisionTransformer(num_classes=10, **kw), seed=1)


def _save_safetensors(module, path):
  import safetensors.torch

  safetensors.torch.save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path)


@pytest.mark.parametrize(
  'kind, size',
  [
    ('VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, heads=4)', 32),
    (
      'vit_tiny_patch16_224',
      224,
    ),
  ],
)
def test_timm_vit_gives_timm_logits(kind, size, tmp_path):
  if kind == 'vit_tiny_patch16_224':
    timm = _timm()
    module = _randomise(timm.create_model('vit_tiny_patch16_224', pretrained=False), seed=2)
    model = vit.ViT(num_classes=1000, patch=16, dim=192, depth=12, heads=3, mlp_dim=768, gelu='erf')
  else:
    module = _timm_vit()
    model = vit.ViT(num_classes=10, patch=8, dim=64, depth=2, heads=4, mlp_dim=256, gelu='erf')
  path = str(tmp_path / 'vit.safetensors')
  _save_safetensors(module, path)
  images = _images((2, size, size, 3))
  variables, converted = _load(path, model, (size, size, 3))
  assert converted.format == 'timm_vit' and converted.notes == []
  _assert_close(_logits(model, variables, images), _torch_logits(module, images))


def _big_vision_names(params: dict, scanned: bool) -> dict:
  """A jaxvision ViT's params under big_vision's names (written independently of the loader):
  big_vision adds pos_embedding before it prepends the cls token, so the cls slot's embedding
  is folded into `cls`."""
  flat = {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  pos = flat.pop('PositionEmbedding_0/pos_embedding')
  kernel = flat.pop('patch_embedding/kernel')
  dim = kernel.shape[1]
  p = int(round((kernel.shape[0] / 3) ** 0.5))
  out = {
    'embedding/kernel': kernel.reshape(p, p, 3, dim),
    'embedding/bias': flat.pop('patch_embedding/bias'),
    'Transformer/encoder_norm/scale': flat.pop('norm/scale'),
    'Transformer/encoder_norm/bias': flat.pop('norm/bias'),
    'head/kernel': flat.pop('head/kernel'),
    'head/bias': flat.pop('head/bias'),
  }
  if 'cls_token' in flat:
    out['cls'] = flat.pop('cls_token') + pos[0]
    pos = pos[1:]
  out['pos_embedding'] = pos[None]
  blocks = {}
  for name, value in flat.items():
    block, rest = name.split('/', 1)
    rest = rest.replace('Dense_', 'MlpBlock_0/Dense_')
    blocks.setdefault(rest, []).append((int(block[len('block') :]), value))
  for rest, values in blocks.items():
    values = [v for _, v in sorted(values, key=lambda iv: iv[0])]
    if scanned:
      out[f'Transformer/encoderblock/{rest}'] = np.stack(values)
    else:
      for i, v in enumerate(values):
        out[f'Transformer/encoderblock_{i}/{rest}'] = v
  return out


@pytest.mark.parametrize('pool, scanned', [('cls', False), ('cls', True), ('mean', False)])
def test_big_vision_vit_gives_the_source_models_logits(pool, scanned, tmp_path):
  model = vit.ViT(num_classes=10, patch=8, dim=64, depth=3, heads=4, mlp_dim=128, pool=pool)
  source = init_variables(model, jax.random.PRNGKey(3), jnp.zeros((1, 32, 32, 3)), train=False)
  source = jax.tree.map(  # random everywhere (the head and cls token start at zero)
    lambda x: x + 0.3 * jax.random.normal(jax.random.PRNGKey(x.size), x.shape), source
  )
  path = str(tmp_path / 'vit.npz')
  np.savez(path, **_big_vision_names(source['params'], scanned))
  variables, converted = _load(path, model, (32, 32, 3))
  assert converted.format == 'big_vision_vit' and converted.notes == []
  images = _images((2, 32, 32, 3))
  _assert_close(_logits(model, variables, images), _logits(model, source, images))


# ---------------------------------------------------------------- layout adaptations


def test_position_embedding_resize_keeps_the_cls_slot_and_matches_timm(tmp_path):
  from timm.layers import resample_abs_pos_embed

  torch = _torch()
  module = _timm_vit()  # 32x32 images, 8x8 patches: a 4x4 grid
  path = str(tmp_path / 'vit.safetensors')
  _save_safetensors(module, path)
  pos = module.pos_embed.detach()
  for size, grid in ((32, 4), (48, 6), (24, 3)):
    model = vit.ViT(num_classes=10, patch=8, dim=64, depth=2, heads=4, mlp_dim=256, gelu='erf')
    variables, _ = _load(path, model, (size, size, 3))
    got = np.asarray(variables['params']['PositionEmbedding_0']['pos_embedding'])
    assert got.shape == (grid * grid + 1, 64)
    want = resample_abs_pos_embed(
      pos, [grid, grid], num_prefix_tokens=1, interpolation='bilinear', antialias=False
    )[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    if size == 32:  # unchanged size: the file's own embedding, bit for bit
      np.testing.assert_array_equal(got, pos[0].numpy())
  del torch


def test_resize_grid_is_the_identity_at_the_same_size():
  grid = _images((5, 5, 7))
  np.testing.assert_array_equal(convert.resize_grid(grid, (5, 5)), grid)
  assert convert.resize_grid(grid, (9, 3)).shape == (9, 3, 7)


def test_a_3_channel_stem_summed_for_1_channel_images(tmp_path):
  path = tmp_path / 'resnet18.pth'
  _save_torchvision(path, 'resnet18')
  grey = _images((2, 64, 64, 1), seed=5)
  rgb_model, grey_model = _jax_resnet('resnet18'), _jax_resnet('resnet18')
  rgb, _ = _load(path, rgb_model, (64, 64, 3))
  one, _ = _load(path, grey_model, (32, 32, 1))
  assert one['params']['conv_stem']['kernel'].shape == (7, 7, 1, 64)
  _assert_close(
    _logits(grey_model, one, grey), _logits(rgb_model, rgb, np.repeat(grey, 3, axis=-1))
  )
  # The same for a ViT's patch embedding.
  module = _timm_vit()
  vpath = str(tmp_path / 'vit.safetensors')
  _save_safetensors(module, vpath)
  model = vit.ViT(num_classes=10, patch=8, dim=64, depth=2, heads=4, mlp_dim=256, gelu='erf')
  grey = _images((2, 32, 32, 1), seed=6)
  one, _ = _load(vpath, model, (32, 32, 1))
  _assert_close(_logits(model, one, grey), _torch_logits(module, np.repeat(grey, 3, axis=-1)))


# ---------------------------------------------------------------- the torch-free reader


def test_the_reader_matches_torch_load_on_strided_and_nested_tensors(tmp_path):
  torch = _torch()
  torch.manual_seed(0)
  base = torch.randn(6, 5)
  state = {
    'state_dict': {
      'transposed': base.t(),  # non-contiguous
      'strided': torch.arange(20)[::3],  # an offset-free strided view
      'offset': base[2:, 1:4],  # a view with a storage offset
      'half': torch.randn(3, 2).half(),
      'bf16': torch.randn(4).bfloat16(),
      'flag': torch.tensor([True, False]),
    }
  }
  path = str(tmp_path / 'state.pth')
  torch.save(state, path)
  got = torch_file.read(path)
  want = torch.load(path, weights_only=True)['state_dict']
  assert sorted(got) == sorted(f'state_dict.{k}' for k in want)
  for k, v in want.items():
    expected = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
    np.testing.assert_array_equal(got[f'state_dict.{k}'], expected)
    assert got[f'state_dict.{k}'].dtype == expected.dtype


class _Evil:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
  torch = _torch()
  marker = tmp_path / 'pwned'
  path = str(tmp_path / 'evil.pth')
  torch.save({'conv1.weight': torch.zeros(1), 'x': _Evil(marker)}, path)
  with pytest.raises(ConfigError, match='system is not part of a state dict') as e:
    pretrained.read(path)
  assert '\n' not in str(e.value) and not marker.exists()
  # A plain pickle (torch.save's legacy format) is refused as well.
  with open(tmp_path / 'legacy.pth', 'wb') as f:
    pickle.dump(_Evil(marker), f)
  with pytest.raises(ConfigError, match='not a PyTorch state dict of the zip format'):
    pretrained.read(str(tmp_path / 'legacy.pth'))
  assert not marker.exists()


# ---------------------------------------------------------------- errors


def test_bad_files_and_wrong_models_fail_in_one_line(tmp_path):
  r18 = tmp_path / 'resnet18.pth'
  _save_torchvision(r18, 'resnet18')
  r50 = tmp_path / 'resnet50.pth'
  _save_torchvision(r50, 'resnet50')
  model = _jax_resnet('resnet18')
  target = _target(model, (64, 64, 3))
  (tmp_path / 'weights.txt').write_text('x')
  np.savez(tmp_path / 'other.npz', a=np.zeros(3))
  zipfile.ZipFile(tmp_path / 'empty.pth', 'w').close()
  vpath = str(tmp_path / 'vit.safetensors')
  _save_safetensors(_timm_vit(), vpath)
  cases = [
    (tmp_path / 'weights.txt', _fields(model), 'a file of unknown format'),
    (tmp_path / 'other.npz', _fields(model), 'no known format'),
    (tmp_path / 'empty.pth', _fields(model), 'not a torch.save file'),
    (r50, _fields(model), r"block='bottleneck'.*--config.model.block=bottleneck"),
    (vpath, _fields(model), 'holds a timm ViT; the model is .resnet.'),
    (r18, {**_fields(model), 'width': 32}, '--config.model.width=64'),
  ]
  for path, fields, match in cases:
    with pytest.raises(ConfigError, match=match) as e:
      pretrained.load(str(path), fields, target)
    assert '\n' not in str(e.value)
  # A name that no torchvision ResNet has.
  torch = _torch()
  state = torch.load(str(r18), weights_only=True)
  torch.save({**state, 'layer1.0.se.fc.weight': torch.zeros(2)}, str(tmp_path / 'se.pth'))
  with pytest.raises(ConfigError, match='layer1.0.se.fc.weight'):
    pretrained.load(str(tmp_path / 'se.pth'), _fields(model), target)


# ---------------------------------------------------------------- init_from end to end


def _mapped(path, model, image_shape):
  converted = pretrained.load(str(path), _fields(model), _target(model, image_shape))
  return converted.variables


def test_init_from_a_pth_file_loads_the_mapped_weights(make_config, tmp_path):
  path = tmp_path / 'resnet18.pth'
  _save_torchvision(path, 'resnet18')
  config = make_config(
    'transfer', 'resnet18', init_from__path=str(path), data__per_class=8, data__batch_size=16
  )
  exp = experiment.setup(config, str(tmp_path / 'w'))
  state = jax.device_get(exp.state)
  mapped = _mapped(path, _jax_resnet('resnet18', num_classes=10), (32, 32, 1))
  np.testing.assert_array_equal(
    state.params['conv_stem']['kernel'], mapped['params']['conv_stem/kernel']
  )
  np.testing.assert_array_equal(
    state.batch_stats['stage4_block2']['BatchNorm_1']['var'],
    mapped['batch_stats']['stage4_block2/BatchNorm_1/var'],
  )
  assert state.params['head']['kernel'].shape == (512, 10)  # excluded: fresh
  info = exp.transfer
  assert info['format'] == 'torchvision_resnet' and info['file_sha256'] == pretrained.sha256(path)
  flat = lambda t: {path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(t)[0]}
  n_params = len(flat(state.params)) - 2  # all but the head
  assert info['loaded'] == n_params + len(flat(state.batch_stats))
  assert info['source_params_sha256'] == checkpoint.params_sha256(
    jax.tree.map(np.asarray, _nested(mapped['params']))
  )
  # A file without an included leaf is refused by name (the head is excluded, so not it).
  torch = _torch()
  state = torch.load(str(path), weights_only=True)
  del state['layer4.1.bn2.running_var'], state['fc.weight']
  torch.save(state, str(tmp_path / 'partial.pth'))
  config.init_from.path = str(tmp_path / 'partial.pth')
  with pytest.raises(ConfigError, match=r'lacks batch_stats/stage4_block2/BatchNorm_1/var;') as e:
    experiment.setup(config, str(tmp_path / 'w2'))
  assert '\n' not in str(e.value)


def test_resnet18_frozen_preset_from_a_pth_file_as_a_user_runs_it(clone_root, tfds_dir):
  """`python run.py --config configs/transfer.py:resnet18_frozen --config.init_from.path=...`
  from the clone root with relative paths: the frozen backbone (and its BatchNorm statistics)
  ends the run equal to the file's, the head has trained."""
  _save_torchvision(clone_root / 'resnet18.pth', 'resnet18', seed=7)
  workdir = 'runs/resnet18_frozen_test'
  proc, _ = run_py(
    '--config',
    'configs/transfer.py:resnet18_frozen',
    '--workdir',
    workdir,
    '--config.init_from.path=resnet18.pth',
    '--config.train.steps=4',
    '--config.train.eval_every=4',
    '--config.train.ckpt_every=2',
    '--config.train.log_every=2',
    '--config.data.per_class=8',
    '--config.data.batch_size=16',
    '--config.data.eval_split=test[:200]',
    cwd=clone_root,
    tfds_dir=tfds_dir,
    timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(clone_root / workdir / 'run.json', encoding='utf-8') as f:
    info = json.load(f)['init_from']
  assert info['format'] == 'torchvision_resnet' and info['path'] == 'resnet18.pth'
  assert info['file_sha256'] == pretrained.sha256(str(clone_root / 'resnet18.pth'))
  import orbax.checkpoint as ocp

  model = _jax_resnet('resnet18', num_classes=10)
  mapped = _mapped(clone_root / 'resnet18.pth', model, (32, 32, 1))
  heads = []
  for step in (2, 4):
    state = ocp.StandardCheckpointer().restore(
      str(clone_root / workdir / 'checkpoints' / str(step) / 'state')
    )
    for coll in ('params', 'batch_stats'):
      got = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(state[coll])[0]}
      for name, value in mapped[coll].items():
        if not name.startswith('head/'):
          np.testing.assert_array_equal(got[name], value.astype(np.float32), err_msg=name)
    heads.append(np.asarray(state['params']['head']['kernel']))
  assert heads[0].shape == (512, 10) and np.all(np.isfinite(heads[1]))
  assert not np.array_equal(heads[0], heads[1])  # the head trains


def test_frozen_batchnorm_computes_the_eval_function_in_training():
  """model.frozen_batchnorm: a train-mode pass normalises with the running statistics and leaves
  them as they were, so a frozen backbone gives its head the features it will be evaluated on;
  without it, the train-mode pass uses the batch's statistics."""
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  outputs = {}
  for frozen in (False, True):
    model = resnet.ResNet(num_classes=3, stage_sizes=(1, 1), width=8, frozen_batchnorm=frozen)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)
    stats = jax.tree.map(  # running statistics far from the batch's
      lambda v: v + 0.5, variables['batch_stats']
    )
    variables = {**variables, 'batch_stats': stats}
    train, updates = model.apply(variables, x, train=True, mutable=['batch_stats'])
    outputs[frozen] = (train, model.apply(variables, x, train=False), updates['batch_stats'])
  train, evaluated, updated = outputs[True]
  np.testing.assert_allclose(train, evaluated, rtol=1e-6, atol=1e-6)
  chex.assert_trees_all_equal(updated, stats)
  train, evaluated, updated = outputs[False]
  assert not np.allclose(train, evaluated, atol=1e-3)
