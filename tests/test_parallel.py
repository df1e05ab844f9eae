"""Data parallel vs FSDP vs pmap vs one device vs two processes: the same training."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P

from conftest import ROOT, assert_sigterm_at_4_then_resume_is, run_py, two_processes
from jaxvision import errors, experiment, models, parallel, tasks, train, writers

# The smoke runs of three tasks, compared across meshes. Their results differ only by the order
# of floating-point reductions (gradient sums, BatchNorm statistics), amplified a little by Adam.
TOLERANCE = dict(rtol=2e-4, atol=2e-5)


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **TOLERANCE), a, b)


def test_fsdp_rule_splits_the_largest_divisible_axis_of_large_leaves():
  n = 4
  assert parallel.fsdp_spec((2304, 32), n) == P('fsdp', None)
  assert parallel.fsdp_spec((3, 3, 64, 128), n) == P(None, None, None, 'fsdp')
  assert parallel.fsdp_spec((4098, 7), n) == P()  # no axis divides by 4
  assert parallel.fsdp_spec((4098, 8), n) == P(None, 'fsdp')  # the largest that does
  assert parallel.fsdp_spec((64, 64), n) == P(None, 'fsdp')  # ties: the later (output) axis
  assert (
    parallel.fsdp_spec((10,), n) == P() and parallel.fsdp_spec((), n) == P()
  )  # small: replicated
  assert parallel.fsdp_spec((2304, 32), 1) == P()  # fsdp=1: data parallel


def _final_params(exp_config, workdir):
  exp = experiment.setup(exp_config, workdir)
  _, state = experiment.restore_latest(exp)
  return exp, jax.device_get(state.params)


MESHES = {'fsdp8': dict(mesh__data=1, mesh__fsdp=8), 'dp2_fsdp4': dict(mesh__data=2, mesh__fsdp=4)}


@pytest.mark.parametrize(
  'name, meshes',
  [
    ('cnn', ('fsdp8', 'dp2_fsdp4')),
    ('dcgan', ('fsdp8',)),
    ('vae', ('fsdp8',)),
    ('diffusion', ('fsdp8',)),
  ],
)
def test_fsdp_trains_like_data_parallel_with_the_state_sharded(
  make_config, reference_run, tmp_path, name, meshes
):
  runs = {'dp8': _final_params(make_config(name), reference_run(name))}  # mesh.data=-1: 8 devices
  for label, mesh in ((m, MESHES[m]) for m in meshes):
    config = make_config(name, **mesh)
    workdir = str(tmp_path / label)
    train.train_and_evaluate(config, workdir)
    runs[label] = _final_params(config, workdir)
  exp, reference = runs['dp8']
  assert all(leaf.sharding.spec == P() for leaf in jax.tree_util.tree_leaves(exp.state.params))
  exp, _ = runs['fsdp8']
  specs = [leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(exp.state.params)]
  assert P() in specs and any(
    'fsdp' in s for s in specs
  )  # small leaves replicated, large ones split
  for label in meshes:
    _assert_close(runs[label][1], reference)


def _train_rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    rows = [json.loads(line) for line in f]
  return [
    {k: v for k, v in r.items() if not k.startswith('perf/')} for r in rows if 'train/loss' in r
  ]


@pytest.mark.parametrize('name', ['cnn', 'gan', 'dcgan', 'vae', 'diffusion'])
def test_pmap_trains_like_jit(make_config, tmp_path, name):
  """config.parallel='pmap': the same step per device with batch_mean / batch_rows / BatchNorm over
  the axis. cnn: BatchNorm, dropout, shift augmentation; gan: dropout in D on [real; fake];
  dcgan: BatchNorm in G; vae: dynamic binarisation and posterior noise. Plain SGD, whose update is
  the gradient itself (Adam's is invariant to its scale): a gradient summed over the 8 devices
  instead of averaged moves the params 8x as far, and the train metrics the pmap step reports
  (its own batch_mean) are compared too."""
  runs = {}
  for path in ('jit', 'pmap'):
    config = make_config(name, parallel=path, optim__name='sgd', optim__schedule='constant')
    workdir = str(tmp_path / path)
    train.train_and_evaluate(config, workdir)
    runs[path] = (_final_params(config, workdir)[1], _train_rows(workdir))
  _assert_close(runs['pmap'][0], runs['jit'][0])
  (jit_rows, pmap_rows) = runs['jit'][1], runs['pmap'][1]
  assert [r.keys() for r in pmap_rows] == [r.keys() for r in jit_rows] and jit_rows
  for got, want in zip(pmap_rows, jit_rows):
    for key in want:
      assert got[key] == pytest.approx(want[key], rel=1e-3, abs=1e-5), key


def test_pmap_sigterm_then_resume_is_bitwise_the_uninterrupted_pmap_run(
  make_config, tmp_path, monkeypatch
):
  config = make_config('cnn', parallel='pmap')
  whole, resumed = str(tmp_path / 'whole'), str(tmp_path / 'resumed')
  train.train_and_evaluate(config, whole)
  assert_sigterm_at_4_then_resume_is(whole, config, resumed, monkeypatch)


@pytest.mark.parametrize(
  'name, mesh, message',
  [('cnn', dict(mesh__fsdp=4), 'mesh.fsdp=4'), ('vit', dict(mesh__model=2), 'mesh.model=2')],
)
def test_pmap_refuses_a_sharded_mesh(make_config, tmp_path, name, mesh, message):
  with pytest.raises(errors.ConfigError, match=f'parallel=pmap is data parallel only.*{message}'):
    train.train_and_evaluate(make_config(name, parallel='pmap', **mesh), str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')


def _python(*args, devices: int = 1, timeout: float = 300):
  """Runs `python *args` from the repo root on `devices` forced CPU devices; must exit 0."""
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  proc = subprocess.run(
    [sys.executable, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc


def test_checkpoints_move_between_one_device_and_eight_fsdp_shards(
  make_config, reference_run, tmp_path, tfds_dir
):
  common = ['--config', 'configs/cnn.py:smoke', f'--config.data.tfds_dir={tfds_dir}']
  # Written on 1 device, restored FSDP-sharded on 8: the same params as 8 devices trained.
  one = str(tmp_path / 'one_device')
  _python('run.py', *common, '--workdir', one)
  assert writers.read_json(os.path.join(one, 'run.json'))['devices']['count'] == 1
  fsdp = make_config('cnn', mesh__data=1, mesh__fsdp=8)
  exp, restored = _final_params(fsdp, one)
  assert any('fsdp' in leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(exp.state.params))
  _, trained = _final_params(make_config('cnn'), reference_run('cnn'))
  _assert_close(restored, trained)
  # Written FSDP-sharded on 8, evaluated on 1 device: the metrics of the run that wrote it.
  eight = str(tmp_path / 'eight_fsdp_shards')
  train.train_and_evaluate(fsdp, eight)
  proc = _python('run.py', *common, '--workdir', eight, '--mode', 'eval')
  final = writers.read_json(os.path.join(eight, 'run.json'))['final_metrics']
  printed = dict(kv.split('=') for kv in proc.stdout.split() if kv.startswith('eval/'))
  assert float(printed['eval/accuracy']) == pytest.approx(final['eval/accuracy'], abs=1e-6)
  assert float(printed['eval/loss']) == pytest.approx(final['eval/loss'], rel=1e-4)


def test_fsdp_per_device_memory_falls_as_one_over_n():
  """The compiled step's per-device argument bytes (benchmarks/fsdp_memory.py, a small ViT)."""
  sys.path.insert(0, ROOT)
  from benchmarks import fsdp_memory

  config = fsdp_memory.vit_config(
    32, patch=4, dim=128, depth=1, heads=4, mlp_dim=512, num_classes=10
  )
  fsdp = {n: fsdp_memory.measure(config, (1, n, 1), 2)['arguments'] for n in (1, 2, 8)}
  dp8 = fsdp_memory.measure(config, (8, 1, 1), 2)['arguments']  # (on 1 device FSDP is DP)
  assert dp8 >= 0.95 * fsdp[1]  # data parallel: every device holds the whole state
  for n in (2, 8):
    assert fsdp[1] / n <= fsdp[n] <= 1.25 * fsdp[1] / n, (n, fsdp)


def test_remat_keeps_fewer_activations_and_memory_scheduled_temporaries_fall():
  """benchmarks/fsdp_memory.py --remat on a small ViT (4 blocks, 1 device): with model.remat the
  forward pass keeps only each block's input for the backward pass (measured: 34.6 -> 1.9 MiB),
  and the step compiled with XLA:CPU's memory-optimised scheduler needs fewer temporaries
  (28.0 -> 24.0 MiB; the default scheduler, tuned for concurrency, gave 33.3 -> 34.3:
  docs/performance.md#rematerialisation)."""
  sys.path.insert(0, ROOT)
  from benchmarks import fsdp_memory

  off = fsdp_memory.vit_config(32, patch=4, dim=128, depth=4, heads=4, mlp_dim=256, num_classes=10)
  on = off.copy_and_resolve_references()
  on.model.remat = True
  kept = {c.model.remat: fsdp_memory.saved_activations(c, 8) for c in (off, on)}
  assert kept[True] < kept[False] / 10, kept
  temps = {c.model.remat: fsdp_memory.measure(c, (1, 1, 1), 8, 'memory') for c in (off, on)}
  assert temps[True]['arguments'] == temps[False]['arguments']  # the same state
  assert temps[True]['temporaries'] < 0.95 * temps[False]['temporaries'], temps


@pytest.mark.xdist_group('multiprocess')  # never two jax.distributed jobs at once
@pytest.mark.parametrize('path', ['jit', 'pmap'])
def test_two_processes_train_like_one_process_with_all_the_devices(
  make_config, reference_run, tmp_path, tfds_dir, path
):
  """jax.distributed on 127.0.0.1: 2 processes x 4 devices (jit or pmap) vs 1 process x 8 devices
  (jit)."""
  from jaxvision.data import pipeline

  pipeline.load_split(make_config('cnn').data, 'train')  # prepared before two processes race for it
  workdir = str(tmp_path / 'two_processes')
  for code, err in two_processes(
    ['run.py'],
    [
      '--config',
      'configs/cnn.py:smoke',
      '--workdir',
      workdir,
      f'--config.data.tfds_dir={tfds_dir}',
      f'--config.parallel={path}',
    ],
  ):
    assert code == 0, err[-3000:]
  info = writers.read_json(os.path.join(workdir, 'run.json'))
  assert info['devices']['count'] == 8 and info['devices']['processes'] == 2
  _, two = _final_params(make_config('cnn'), workdir)  # restored here on 1 process x 8 devices
  _, one = _final_params(make_config('cnn'), reference_run('cnn'))
  _assert_close(two, one)


def test_cpu_convolutions_without_ynnpack_train_alike(make_config, reference_run, tmp_path):
  """config.cpu_convolutions='xla' (configs/dcgan.py's choice) compiles the steps with XLA's own
  convolutions: other kernels than YNNPACK's, the same training up to floating-point order
  (DCGAN: transposed and strided convs, BatchNorm)."""
  config = make_config('dcgan', cpu_convolutions='ynnpack')
  assert parallel.compiler_options(config) is None
  assert parallel.compiler_options(make_config('dcgan')) is not None
  train.train_and_evaluate(config, str(tmp_path / 'ynnpack_convs'))
  _assert_close(
    _final_params(config, str(tmp_path / 'ynnpack_convs'))[1],
    _final_params(make_config('dcgan'), reference_run('dcgan'))[1],
  )


# ------------------------------------------------------------------ tensor parallelism (mesh.model)

# The ViT smoke run made wide enough for FSDP to split some leaves too (>= 4,096 elements: the
# q/k/v/out kernels [64, 4, 16] and the MLP's [64, 128]), and with heads and hidden units that
# the model axis divides.
TP_VIT = dict(model__dim=64, model__heads=4, model__mlp_dim=128)
TP_MESHES = {
  '2x2x2': dict(mesh__data=2, mesh__fsdp=2, mesh__model=2),
  '4x1x2': dict(mesh__data=4, mesh__model=2),
}


def _mesh(data: int, fsdp: int, model: int):
  return parallel.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, model=model)))


def _specs(mesh, state, rules=()) -> dict:
  shardings = parallel.state_sharding(mesh, state, rules)
  return {
    jax.tree_util.keystr(path, simple=True, separator='/'): sharding.spec
    for path, sharding in jax.tree_util.tree_flatten_with_path(shardings)[0]
  }


def test_mesh_comes_from_make_mesh_with_auto_axes():
  mesh = _mesh(2, 2, 2)
  assert mesh.axis_names == parallel.AXES and mesh.axis_types == (AxisType.Auto,) * 3
  assert mesh.devices.tolist() == jax.make_mesh((2, 2, 2), parallel.AXES).devices.tolist()
  sub = parallel.make_mesh(
    ml_collections.ConfigDict(dict(data=-1, fsdp=2, model=1)), jax.devices()[4:]
  )
  assert dict(sub.shape) == {'data': 2, 'fsdp': 2, 'model': 1}
  assert set(sub.devices.flat) == set(jax.devices()[4:])


def test_vit_rules_split_heads_and_mlp_over_model_and_compose_with_fsdp(make_config):
  config = make_config('vit', **TP_VIT)
  sample = {'image': jnp.zeros((1, 28, 28, 1)), 'label': jnp.zeros((1,), jnp.int32)}
  task = tasks.get(config.task)
  state = jax.eval_shape(lambda rng: task.init(config, rng, sample), jax.random.PRNGKey(0))
  rules = models.SHARDING_RULES['vit']
  specs = _specs(_mesh(2, 2, 2), state, rules)
  attn = 'params/block1/MultiHeadDotProductAttention_0'
  want = {
    f'{attn}/query/kernel': P('fsdp', 'model', None),  # [dim, heads, head_dim]: heads on model
    f'{attn}/key/kernel': P('fsdp', 'model', None),
    f'{attn}/value/bias': P('model', None),  # [heads, head_dim]
    f'{attn}/out/kernel': P('model', None, 'fsdp'),  # [heads, head_dim, dim]: its input on model
    f'{attn}/out/bias': P(),
    'params/block1/Dense_0/kernel': P('fsdp', 'model'),  # [dim, mlp_dim]: hidden units on model
    'params/block1/Dense_0/bias': P('model'),
    'params/block1/Dense_1/kernel': P('model', 'fsdp'),  # [mlp_dim, dim]: its input on model
    'params/block1/Dense_1/bias': P(),
    'params/block1/LayerNorm_0/scale': P(),
    'params/patch_embedding/kernel': P(),  # 49 x 64 elements: under FSDP_MIN_SIZE
    'params/head/kernel': P(),
  }
  assert {k: specs[k] for k in want} == want
  # Both Adam moments of every parameter are sharded as the parameter (matched by path).
  params = {k.removeprefix('params/'): v for k, v in specs.items() if k.startswith('params/')}
  moments = [k for k in specs if k.startswith('opt_state/') and not k.endswith('/count')]
  assert len(moments) == 2 * len(params)
  for k in moments:
    assert specs[k] == params[next(p for p in params if k.endswith('/' + p))], k
  # mesh.model=1: the rules change nothing (the FSDP rule alone, or data parallel).
  assert _specs(_mesh(4, 2, 1), state, rules) == _specs(_mesh(4, 2, 1), state)
  assert set(_specs(_mesh(8, 1, 1), state, rules).values()) == {P()}
  with pytest.raises(
    errors.MeshError,
    match=r'mesh.model=8 does not divide axis 0 \(of size 4\) of '
    r'params/block1/MultiHeadDotProductAttention_0/key/bias',
  ):
    _specs(_mesh(1, 1, 8), state, rules)


def _dot_shapes(hlo: str) -> set[str]:
  return set(re.findall(r'= f32\[([\d,]*)\]\S* dot\(', hlo))


def _all_reduced_ops(hlo: str) -> str:
  return '\n'.join(line for line in hlo.splitlines() if ' all-reduce(' in line)


def test_model_axis_splits_the_compiled_vit_step():
  """mesh 4x1x2 against 8x1x1 in the compiled step (benchmarks/fsdp_memory.py, a small ViT): the
  attention and MLP matmuls run on half the heads and hidden units, XLA sums the branch outputs
  over the model axis (Megatron's all-reduce after the out projection and after the MLP, with
  nothing but the params' shardings to go on), and each device holds the state's shards."""
  sys.path.insert(0, ROOT)
  from benchmarks import fsdp_memory

  config = fsdp_memory.vit_config(
    32, patch=4, dim=128, depth=1, heads=4, mlp_dim=512, num_classes=10
  )
  dp, _, _ = fsdp_memory.abstract_step(config, (8, 1, 1), 2)
  tp, state, shardings = fsdp_memory.abstract_step(config, (4, 1, 2), 2)
  dp_hlo, tp_hlo = dp.as_text(), tp.as_text()
  # 65 tokens; data parallel: 2 images per device; 4x1x2: 4 images per pair of model devices.
  assert {'2,4,65,65', '130,512'} <= _dot_shapes(dp_hlo)  # [B, heads, L, L], [B*L, mlp_dim]
  assert {'4,2,65,65', '260,256'} <= _dot_shapes(tp_hlo)  # half the heads, half the units
  assert not {'4,4,65,65', '260,512'} & _dot_shapes(tp_hlo)
  reduced = _all_reduced_ops(tp_hlo)
  for op in ('MultiHeadDotProductAttention_0/out', 'Dense_1'):  # the forward pass's sums
    name = re.escape(f'op_name="jit(train_step)/jvp(ViT)/block1/{op}/dot_general"')
    assert re.search(rf'f32\[4,65,128\].*replica_groups=\[4,2\]<=\[8\].*{name}', reduced), op
    assert not re.search(name, _all_reduced_ops(dp_hlo)), op
  # Per device: the state's shards (the split leaves at half size) and 4 of the 16 images.
  shard_bytes = sum(
    math.prod(sharding.shard_shape(x.shape)) * x.dtype.itemsize
    for x, sharding in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(shardings))
  )
  batch_bytes = 4 * (32 * 32 * 3 + 1) * 4
  assert tp.memory_analysis().argument_size_in_bytes == shard_bytes + batch_bytes
  assert (
    tp.memory_analysis().argument_size_in_bytes < 0.6 * dp.memory_analysis().argument_size_in_bytes
  )


def test_tensor_parallel_trains_like_data_parallel_and_restores_on_a_data_only_mesh(
  make_config, tmp_path
):
  runs = {}
  for label, mesh in (('dp8', {}), *TP_MESHES.items()):
    config = make_config('vit', **TP_VIT, **mesh)
    workdir = str(tmp_path / label)
    train.train_and_evaluate(config, workdir)
    exp, params = _final_params(config, workdir)
    runs[label] = (workdir, exp, params, _train_rows(workdir))
  _, exp, reference, reference_rows = runs['dp8']
  query = lambda exp: exp.state.params['block1']['MultiHeadDotProductAttention_0']['query']
  assert query(exp)['kernel'].sharding.spec == P()
  for label in TP_MESHES:
    _, exp, params, rows = runs[label]
    assert 'model' in query(exp)['kernel'].sharding.spec
    _assert_close(params, reference)
    assert [r.keys() for r in rows] == [r.keys() for r in reference_rows] and rows
    for got, want in zip(rows, reference_rows):
      assert got['train/loss'] == pytest.approx(want['train/loss'], rel=TOLERANCE['rtol'])
  # Written on 2x2x2, restored on the data-only mesh: every leaf replicated, the same numbers.
  workdir, _, written, _ = runs['2x2x2']
  exp, restored = _final_params(make_config('vit', **TP_VIT), workdir)
  assert {leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(exp.state)} == {P()}
  jax.tree.map(np.testing.assert_array_equal, restored, written)


def test_model_axis_is_refused_for_models_without_rules(make_config, tmp_path):
  with pytest.raises(
    errors.ConfigError,
    match=r'^mesh.model=2 splits only the models with tensor-parallel rules \(model.name=vit\), '
    r"not model 'cnn'; set mesh.model=1",
  ):
    train.train_and_evaluate(make_config('cnn', mesh__model=2), str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')


def test_run_py_trains_the_vit_smoke_run_with_a_model_axis(tmp_path, tfds_dir):
  workdir = str(tmp_path / 'w')
  proc, _ = run_py(
    '--config', 'configs/vit.py:smoke', '--config.mesh.model=2', '--workdir', workdir,
    cwd=ROOT, tfds_dir=tfds_dir,
  )  # fmt: skip
  assert proc.returncode == 0, proc.stderr[-2000:]
  info = writers.read_json(os.path.join(workdir, 'run.json'))
  assert info['devices']['mesh'] == {'data': 4, 'fsdp': 1, 'model': 2}
  assert 0 <= info['final_metrics']['eval/accuracy'] <= 1


# A convolution step with an all-reduce on 8 CPU devices, dispatched 300 times through
# `parallel.DispatchBound`. Without the bound XLA:CPU deadlocked within 100 steps (with a bound
# of 40, within 2,000): a launch waiting for the 33rd slot of its device holds the client thread
# another device's part of the all-reduce needs, and XLA aborts after 40 s (exit 134).
_DISPATCH_PROGRAM = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxvision import parallel
mesh = jax.make_mesh((8,), ('data',))
x = jax.device_put(np.ones((64, 28, 28, 8), np.float32), NamedSharding(mesh, P('data')))
w = jax.device_put(jnp.full((3, 3, 8, 16), 0.1), NamedSharding(mesh, P()))
def loss(w):
  dims = ('NHWC', 'HWIO', 'NHWC')
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=dims)
  return jnp.mean(jnp.tanh(y) ** 2)
step = jax.jit(lambda w: (lambda l, g: (w - 0.01 * g, l))(*jax.value_and_grad(loss)(w)))
in_flight = parallel.DispatchBound()
for _ in range(300):
  w, l = step(w)
  in_flight.add(l)
print(float(jax.device_get(l)))
"""


def test_dispatch_bound_keeps_collectives_on_eight_cpu_devices_from_deadlocking():
  proc = _python('-c', _DISPATCH_PROGRAM, devices=8, timeout=120)
  assert math.isfinite(float(proc.stdout.split()[-1]))
