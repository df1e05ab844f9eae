"""Data parallel vs FSDP vs pmap vs one device vs two processes: the same training."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import ROOT, sigterm_at_step, two_processes
from jaxvision import errors, experiment, parallel, train, writers

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
  undo = sigterm_at_step(monkeypatch, 4)
  with pytest.raises(errors.Preempted, match='SIGTERM at step 4'):
    train.train_and_evaluate(config, resumed)
  undo()
  train.train_and_evaluate(config, resumed)
  info = [writers.read_json(os.path.join(w, 'run.json')) for w in (whole, resumed)]
  assert info[1]['resumed_from_step'] == 4
  assert info[0]['final_params_sha256'] == info[1]['final_params_sha256']
  assert info[0]['final_metrics'] == info[1]['final_metrics']


def test_pmap_refuses_a_sharded_mesh(make_config, tmp_path):
  from jaxvision import config as config_lib

  with pytest.raises(
    config_lib.ConfigError, match='parallel=pmap is data parallel only.*mesh.fsdp=4'
  ):
    train.train_and_evaluate(make_config('cnn', parallel='pmap', mesh__fsdp=4), str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')


def _run_on_one_device(*args):
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'}
  proc = subprocess.run(
    [sys.executable, 'run.py', *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  return proc


def test_checkpoints_move_between_one_device_and_eight_fsdp_shards(
  make_config, reference_run, tmp_path, tfds_dir
):
  common = ['--config', 'configs/cnn.py:smoke', f'--config.data.tfds_dir={tfds_dir}']
  # Written on 1 device, restored FSDP-sharded on 8: the same params as 8 devices trained.
  one = str(tmp_path / 'one_device')
  _run_on_one_device(*common, '--workdir', one)
  assert writers.read_json(os.path.join(one, 'run.json'))['devices']['count'] == 1
  fsdp = make_config('cnn', mesh__data=1, mesh__fsdp=8)
  exp, restored = _final_params(fsdp, one)
  assert any('fsdp' in leaf.sharding.spec for leaf in jax.tree_util.tree_leaves(exp.state.params))
  _, trained = _final_params(make_config('cnn'), reference_run('cnn'))
  _assert_close(restored, trained)
  # Written FSDP-sharded on 8, evaluated on 1 device: the metrics of the run that wrote it.
  eight = str(tmp_path / 'eight_fsdp_shards')
  train.train_and_evaluate(fsdp, eight)
  proc = _run_on_one_device(*common, '--workdir', eight, '--mode', 'eval')
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
  fsdp = {n: fsdp_memory.measure(config, n, True, 2)['arguments'] for n in (1, 2, 8)}
  dp8 = fsdp_memory.measure(config, 8, False, 2)['arguments']  # (on 1 device FSDP is data parallel)
  assert dp8 >= 0.95 * fsdp[1]  # data parallel: every device holds the whole state
  for n in (2, 8):
    assert fsdp[1] / n <= fsdp[n] <= 1.25 * fsdp[1] / n, (n, fsdp)


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
