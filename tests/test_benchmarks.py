"""The torch twins of benchmarks/torch_models.py against the jaxvision models they mirror:
same parameter count and same output shapes at each model's default config (not timed)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT, load_config
from jaxvision import tasks

torch = pytest.importorskip('torch')
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import torch_models  # noqa: E402  (found through the sys.path entry above)

SHAPE = (28, 28, 1)  # mnist10k, what every default config trains on
BATCH = 2


def _jax_model(name):
  """(config, abstract task state) of configs/<name>.py's default preset, as experiment.setup
  builds it."""
  file, preset = torch_models.config_file(name)
  config = load_config(file[: -len('.py')], preset=preset)
  sample = {'image': jnp.zeros((1, *SHAPE)), 'label': jnp.zeros((1,), jnp.int32)}
  state = jax.eval_shape(
    lambda rng: tasks.get(config.task).init(config, rng, sample), jax.random.PRNGKey(0)
  )
  return config, state


def _jax_shapes(name, state) -> dict:
  model, x = state.model, jax.ShapeDtypeStruct((BATCH, *SHAPE), jnp.float32)
  shape = lambda f, *args: tuple(jax.eval_shape(f, *args).shape)
  if name == 'dcgan':
    v = {'params': state.params, 'batch_stats': state.batch_stats}
    z = jax.ShapeDtypeStruct((BATCH, model.latents), jnp.float32)
    return {
      'generate': shape(lambda v, z: model.apply(v, z, None, train=False, method='generate'), v, z),
      'discriminate': shape(
        lambda v, x: model.apply(v, x, None, train=False, method='discriminate'), v, x
      ),
    }
  if name == 'conv_vae':
    v = {'params': state.params}
    mean, logvar = jax.eval_shape(lambda v, x: model.apply(v, x, None, method='encode'), v, x)
    decode = shape(lambda v, z: model.apply(v, z, None, method='decode'), v, mean)
    return {'mean': tuple(mean.shape), 'logvar': tuple(logvar.shape), 'decode': decode}
  return {'logits': shape(lambda v, x: model.apply(v, x, train=False), state.variables(), x)}


@pytest.mark.parametrize('name', torch_models.NAMES)
def test_torch_twin_matches_jaxvision(name):
  config, state = _jax_model(name)
  jax_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  model = torch_models.build(name, config, SHAPE)
  assert torch_models.num_params(model) == jax_params
  x = torch.rand(BATCH, SHAPE[2], SHAPE[0], SHAPE[1])
  assert torch_models.forward_shapes(name, model, x) == _jax_shapes(name, state)


def test_torch_train_step_runs():
  """One eager torch step of the CNN twin (the benchmark's loss, optimizer and augmentation)."""
  config = load_config('cnn', preset='')
  torch.manual_seed(0)
  model = torch_models.build('cnn', config, SHAPE)
  step = torch_models.TrainStep('cnn', config, model)
  before = [p.detach().clone() for p in model.parameters()]
  batch = {'image': torch.rand(8, 1, 28, 28), 'label': torch.randint(0, 10, (8,))}
  metrics = step(batch)
  assert torch.isfinite(metrics['loss'])
  assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_accelerator_check_quick(tmp_path):
  """`benchmarks/accelerator_check.sh --quick` as a user runs it, on this machine's CPU: the CNN
  trains in float32 and bfloat16, the step benchmark times jax (f32, bf16) against torch eager
  (f32, bf16 autocast), and one JSON holds it all."""
  out = tmp_path / 'out'
  proc = subprocess.run(
    ['bash', 'benchmarks/accelerator_check.sh', '--quick', '--out-dir', str(out)],
    cwd=ROOT,
    env={**os.environ, 'PYTHON': sys.executable},
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  result = json.loads((out / 'accelerator_check-quick.json').read_text())
  assert result['backend'] == 'cpu' and result['quick']
  for dtype in ('float32', 'bfloat16'):
    cnn = result['cnn'][dtype]
    assert cnn['rc'] == 0 and cnn['step'] == 6, cnn
    assert 0.0 <= cnn['accuracy'] <= 1.0
  rows = {r['model']: r for r in result['steps']['rows']}
  assert set(rows) == {'cnn', 'dcgan'} and result['steps']['rc'] == 0
  for r in rows.values():
    assert r['complete'] and r['platform'] == 'cpu'
    for ips in (r['jax_ips'], r['jax_variants_ips']['bf16'], r['torch_eager_ips']):
      assert ips > 0
    assert r['torch_eager_bf16_ips'] > 0 and r['torch_compile_ips'] is None
  assert '| cnn |' in proc.stdout and '| dcgan |' in proc.stdout  # the docs' table
