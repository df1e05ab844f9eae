"""The loop end to end: workdir contract, checkpoints, exact resume, eval mode."""

import json
import os
import re
import shutil

import chex
import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import lowered_programs, sigterm_at_step
from jaxvision import checkpoint, errors, experiment, export, modes, train, writers
from jaxvision import workdir as workdir_lib


def _read_jsonl(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, tfds_dir):
  """One uninterrupted smoke run, for the tests here (`--mode eval` appends to its metrics)."""
  from conftest import load_config

  workdir = str(tmp_path_factory.mktemp('run'))
  config = load_config('cnn', 'smoke', tfds_dir)
  final = train.train_and_evaluate(config, workdir)
  return config, workdir, final


def test_workdir_contract(finished_run):
  config, workdir, final = finished_run
  info = writers.read_json(os.path.join(workdir, 'run.json'))
  assert info['config']['model']['name'] == 'cnn'
  assert info['devices']['count'] == 8 and info['devices']['mesh']['data'] == 8
  assert info['data']['train'].startswith('mnist10k/1.0.0/train/n=8000')
  # smoke CNN: conv 3x3x1x8 + conv 3x3x8x16 + fc 2304x32 (no biases: BatchNorm scale+bias
  # instead, 2 x (8 + 16 + 32)) + head 32x10 + 10
  assert info['num_params'] == 72 + 1152 + 2304 * 32 + 2 * (8 + 16 + 32) + 330
  assert len(info['final_params_sha256']) == 64 and info['final_step'] == config.train.steps
  assert {'jax', 'flax', 'optax', 'orbax-checkpoint'} <= set(info['versions'])
  assert info['host'] == experiment.host()
  events = _read_jsonl(workdir)
  train_steps = [e['step'] for e in events if 'train/loss' in e]
  assert train_steps == list(
    range(config.train.log_every, config.train.steps + 1, config.train.log_every)
  )
  evals = [e for e in events if 'eval/accuracy' in e]
  assert [e['step'] for e in evals] == [3, 6]
  assert evals[-1]['eval/accuracy'] == pytest.approx(final['eval/accuracy'])
  assert 0.0 <= final['eval/accuracy'] <= 1.0 and np.isfinite(final['eval/loss'])
  assert all('perf/images_per_sec' in e for e in events if 'train/loss' in e and e['step'] > 2)
  steps = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3).all_steps()
  assert steps == [3, 6]


def test_tensorboard_holds_the_scalars(finished_run):
  _, workdir, final = finished_run
  acc = event_accumulator.EventAccumulator(workdir)
  acc.Reload()
  tags = acc.Tags()['scalars']
  assert {'train/loss', 'train/accuracy', 'eval/loss', 'eval/accuracy'} <= set(tags)
  last = acc.Scalars('eval/accuracy')[-1]
  assert last.step == 6 and last.value == pytest.approx(final['eval/accuracy'], abs=1e-6)


def test_image_grids_reach_tensorboard_and_bad_ones_are_refused_in_one_line(tmp_path):
  writer = writers.MetricWriter(str(tmp_path))
  writer.write_images(5, {'g': np.full((4, 6, 1), 200, np.uint8)})
  bad = np.zeros((4, 6), np.float32)
  for write in (
    lambda: writer.write_images(6, {'bad': bad}),
    lambda: writers.write_pngs(str(tmp_path / 'pngs'), 6, {'bad': bad}),
  ):
    with pytest.raises(
      ValueError,
      match=r"image grid 'bad' must be uint8 \[H, W, 1 or 3\], "
      r'got float32 \(4, 6\)',
    ) as e:
      write()
    assert '\n' not in str(e.value)
  writer.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  (image,) = acc.Images('g')
  assert (image.step, image.width, image.height) == (5, 6, 4) and acc.Tags()['images'] == ['g']


def test_eval_mode_reports_the_latest_checkpoint(finished_run):
  config, workdir, final = finished_run
  metrics = modes.evaluate(config, workdir)
  assert metrics['step'] == 6
  assert metrics['eval/accuracy'] == pytest.approx(final['eval/accuracy'], abs=1e-6)


def test_checkpoint_round_trip_is_exact(finished_run, tmp_path):
  config, workdir, _ = finished_run
  exp = experiment.setup(config, workdir)
  _, restored = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3).restore(exp.state)
  ckpt = checkpoint.Checkpointer(str(tmp_path / 'ckpt'), 2)
  ckpt.save(6, restored)
  ckpt.wait()
  step, again = ckpt.restore(exp.state)
  assert step == 6
  chex.assert_trees_all_equal(jax.device_get(again), jax.device_get(restored))
  assert (
    checkpoint.params_sha256(again.params)
    == writers.read_json(os.path.join(workdir, 'run.json'))['final_params_sha256']
  )


def test_saving_small_replicated_arrays_compiles_no_slicing_programs(tmp_path):
  # Orbax compiles a program per array shape to write replicated arrays in per-replica slices
  # (~70 for a small model on 8 devices, seconds at the first save); arrays whose slices would
  # be under checkpoint.MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL are written whole, large ones in
  # slices.
  replicated = jax.sharding.NamedSharding(
    jax.sharding.Mesh(np.array(jax.devices()), ('d',)), jax.sharding.PartitionSpec()
  )
  small = {f'w{i}': jax.device_put(np.ones((3, 7 + i), np.float32), replicated) for i in range(8)}
  big = jax.device_put(
    np.ones((8 * checkpoint.MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL // 4 + 1024, 1), np.float32),
    replicated,
  )
  ckpt = checkpoint.Checkpointer(str(tmp_path), 2)
  try:
    with lowered_programs() as lowered:
      ckpt.save(1, small)
      ckpt.wait()
    assert not lowered, lowered
    with lowered_programs() as lowered:
      ckpt.save(2, {**small, 'big': big})
      ckpt.wait()
    assert lowered  # the 8 MiB array is sliced across the 8 replicas
  finally:
    ckpt.close()


def test_sigterm_then_resume_equals_the_uninterrupted_run(finished_run, tmp_path, monkeypatch):
  config, workdir, final = finished_run
  resumed = str(tmp_path / 'resumed')
  undo = sigterm_at_step(monkeypatch, 4)  # a real SIGTERM, delivered at step 4
  with pytest.raises(errors.Preempted, match='SIGTERM at step 4'):
    train.train_and_evaluate(config, resumed)
  undo()
  assert checkpoint.Checkpointer(os.path.join(resumed, 'checkpoints'), 3).all_steps() == [3, 4]
  again = train.train_and_evaluate(config, resumed)
  info = writers.read_json(os.path.join(resumed, 'run.json'))
  assert info['resumed_from_step'] == 4
  assert (
    info['final_params_sha256']
    == writers.read_json(os.path.join(workdir, 'run.json'))['final_params_sha256']
  )
  assert again == final
  # the events logged after the last checkpoint by the killed run were dropped on resume
  assert [e['step'] for e in _read_jsonl(resumed)] == [2, 3, 4, 6, 6]


def test_resume_restores_the_data_position(finished_run, tmp_path):
  """After a restore, the next batch is the one the uninterrupted run saw next."""
  config, workdir, _ = finished_run
  from jaxvision.data import pipeline

  exp = experiment.setup(config, workdir)
  it = iter(pipeline.train_dataset(config, exp.train_split))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3)
  step, _ = ckpt.restore(exp.state, it, step=3)
  fresh = iter(pipeline.train_dataset(config, exp.train_split))
  expected = [next(fresh) for _ in range(step + 1)][-1]
  np.testing.assert_array_equal(next(it)['image'], expected['image'])


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(finished_run, tmp_path, capfd):
  import shutil

  config, workdir, _ = finished_run
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  data_files = []
  for root, _, files in os.walk(os.path.join(copy, 'checkpoints', '6', 'state')):
    data_files += [
      os.path.join(root, f) for f in files if os.sep + 'd' + os.sep in os.path.join(root, f)
    ]
  assert data_files
  for f in data_files:
    with open(f, 'r+b') as fh:
      fh.truncate(8)
  exp = experiment.setup(config, copy)
  step, _ = checkpoint.Checkpointer(os.path.join(copy, 'checkpoints'), 3).restore(exp.state)
  assert step == 3
  assert sorted(os.listdir(os.path.join(copy, 'checkpoints'))) == sorted(
    os.listdir(os.path.join(workdir, 'checkpoints'))
  )  # nothing deleted


def test_another_config_in_the_workdir_is_refused(finished_run):
  config, workdir, _ = finished_run
  other = config.copy_and_resolve_references()
  other.optim.lr = 0.5
  with pytest.raises(errors.WorkdirError, match=r'optim.lr: 0.003 -> 0.5.*allow_config_change'):
    train.train_and_evaluate(other, workdir)


def test_a_model_key_newer_than_the_workdir_matches_the_models_default(finished_run, tmp_path):
  """An older run.json without model.variant / model.features built the CNN with the field's
  default: resuming it with the default passes, with another value it is refused."""
  config, workdir, _ = finished_run
  info = writers.read_json(os.path.join(workdir, 'run.json'))
  del info['config']['model']['variant'], info['config']['model']['features']
  with open(os.path.join(tmp_path, 'run.json'), 'w') as f:
    json.dump(info, f)
  same = config.copy_and_resolve_references()
  same.model.features = (32, 64)  # the CNN's default, not the smoke preset's (8, 16)
  workdir_lib.check_config(same, str(tmp_path))
  other = config.copy_and_resolve_references()
  other.model.variant = 'plain'
  with pytest.raises(errors.WorkdirError, match=r"model.variant: 'bn_dropout' -> 'plain'"):
    workdir_lib.check_config(other, str(tmp_path))


def test_remat_may_change_between_a_run_and_its_resumption(make_config, tmp_path):
  """model.remat recomputes the same function with the same state tree (tests/test_recognition.py),
  so a run resumes with it switched either way; a key that changes the model is still refused."""
  config = make_config('resnet')
  with open(os.path.join(tmp_path, 'run.json'), 'w') as f:
    json.dump({'config': config.to_dict()}, f)
  config.model.remat = True
  workdir_lib.check_config(config, str(tmp_path))
  config.model.width = 4
  with pytest.raises(errors.WorkdirError, match=r'\(model.width: 8 -> 4\)'):
    workdir_lib.check_config(config, str(tmp_path))


def test_resuming_on_other_data_is_refused_before_compute_and_the_workdir_kept(
  finished_run, tmp_path
):
  """A workdir whose run.json names other train data (here: other cluster ids) is not resumed."""
  config, workdir, _ = finished_run
  copy = os.path.join(tmp_path, 'run')
  shutil.copytree(workdir, copy)
  info = writers.read_json(os.path.join(copy, 'run.json'))
  fingerprint = info['data']['train']
  info['data']['train'] = fingerprint + '[clusters=30,ids=000000000000]'
  with open(os.path.join(copy, 'run.json'), 'w') as f:
    json.dump(info, f)
  mtimes = lambda: {
    os.path.join(r, n): os.path.getmtime(os.path.join(r, n))
    for r, _, names in os.walk(copy)
    for n in names
  }
  before = mtimes()
  with pytest.raises(
    errors.WorkdirError,
    match=re.escape(
      f'was trained on other train data ({fingerprint}[clusters=30,ids=000000000000] -> '
      f'{fingerprint}); '
      'use a new --workdir or pass --config.allow_config_change=True'
    ),
  ) as e:
    train.train_and_evaluate(config, copy)
  assert '\n' not in str(e.value)
  assert mtimes() == before
  allowed = config.copy_and_resolve_references()
  allowed.allow_config_change = True
  workdir_lib.check_data(allowed, copy, {'train': fingerprint, 'eval': info['data']['eval']})


def test_a_classifier_run_exports_as_domain_features_even_from_an_older_run_json(
  finished_run, tmp_path
):
  """export_domain_features rebuilds the config from run.json over the task's defaults: a key
  added since the run (here cpu_convolutions, explain.steps) takes its default, a key dropped
  since (here eval.inception_weights) is ignored; the export then loads as the feature map."""
  from jaxvision.evaluate import generative

  config, workdir, _ = finished_run
  copy = os.path.join(tmp_path, 'run')
  shutil.copytree(workdir, copy)
  info = writers.read_json(os.path.join(copy, 'run.json'))
  del info['config']['cpu_convolutions'], info['config']['explain']['steps']
  info['config']['eval'] = {'inception_weights': ''}  # a key of every task in older versions
  with open(os.path.join(copy, 'run.json'), 'w') as f:
    json.dump(info, f)
  path = os.path.join(tmp_path, 'features.npz')
  meta = export.export_domain_features(copy, path)
  assert meta['step'] == config.train.steps and meta['params_sha256'] == info['final_params_sha256']
  features = generative.DomainFeatures(path)(np.full((3, 28, 28, 1), 0.5, np.float32))
  assert features.shape == (3, config.model.hidden) and np.all(np.isfinite(features))


def test_divergence_stops_with_one_line_and_keeps_the_good_checkpoints(make_config, tmp_path):
  workdir = str(tmp_path)
  base = dict(
    train__steps=4,
    train__log_every=2,
    train__ckpt_every=2,
    train__eval_every=100,
    optim__schedule='constant',
  )
  train.train_and_evaluate(make_config('cnn', **base), workdir)
  good = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3)
  assert good.all_steps() == [2, 4]
  good.close()
  # Resume with a learning rate that blows the params up: the first bad step is named.
  config = make_config(
    'cnn', **{**base, 'train__steps': 8, 'optim__lr': 1e30, 'allow_config_change': True}
  )
  with pytest.raises(
    errors.Diverged, match=r'^train/\w+=(nan|inf|-inf) at step [56]: training diverged'
  ) as e:
    train.train_and_evaluate(config, workdir)
  assert '\n' not in str(e.value)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3)
  try:
    assert ckpt.all_steps() == [2, 4]  # nothing of the diverged run was saved
  finally:
    ckpt.close()


def test_run_json_names_the_cpu_and_its_thread_pool(monkeypatch):
  # XLA:CPU's pool size changes a CPU run's last bits (docs/reproducibility.md), so run.json
  # records it by jax's rule: PJRT_NPROC, else NPROC, else the cores this process may use.
  monkeypatch.setenv('PJRT_NPROC', '16')
  monkeypatch.setenv('NPROC', '3')
  assert experiment.host()['threads'] == 16
  monkeypatch.setenv('PJRT_NPROC', 'many')  # not a number: jax reads the next one
  assert experiment.host()['threads'] == 3
  monkeypatch.delenv('PJRT_NPROC')
  monkeypatch.delenv('NPROC')
  assert experiment.host()['threads'] == len(os.sched_getaffinity(0))
  assert experiment.host()['cpu']
