"""SIGTERM at any moment of a run saves the step it names, and the resumed run is the
uninterrupted one; with two processes, both save the same step whichever one got the signal."""

import json
import os
import signal

import pytest

from conftest import SIGTERM_AT_STEP, two_processes
from jaxvision import checkpoint, errors, experiment, parallel, train, writers
from jaxvision.data import pipeline

# Evals at 2, 4, 6, checkpoints at 3, 6: a signal during the eval of step 4 hits a step that
# the schedule would not save.
# Two eval batches (smoke evaluates 512 examples), so a signal can land between them.
SCHEDULE = dict(
  train__steps=6,
  train__log_every=1,
  train__eval_every=2,
  train__ckpt_every=3,
  data__eval_batch_size=256,
)


def _kill_self():
  os.kill(os.getpid(), signal.SIGTERM)


def _signal_in(monkeypatch, point: str, step: int):
  """Delivers a real SIGTERM to this process inside `point` of the loop at `step`."""
  if point == 'step':  # while the jitted step of `step` runs (dispatched, not finished)
    jit_train_step = parallel.jit_train_step

    def signalling(*args, **kwargs):
      stepped = jit_train_step(*args, **kwargs)
      calls = []

      def step_fn(state, batch):
        out = stepped(state, batch)
        calls.append(1)
        if len(calls) == step:
          _kill_self()
        return out

      return step_fn

    monkeypatch.setattr(parallel, 'jit_train_step', signalling)
  elif point in ('eval', 'final eval'):  # after the first batch of the eval of `step`
    eval_batches = experiment.Experiment.eval_batches
    evals = []

    def signalling(self):
      evals.append(1)
      for i, batch in enumerate(eval_batches(self)):
        if i == 1 and len(evals) == step // 2:  # evals run at steps 2, 4, 6 (grids read none here)
          _kill_self()
        yield batch

    monkeypatch.setattr(experiment.Experiment, 'eval_batches', signalling)
  elif point == 'save':  # while Orbax writes the checkpoint of `step`
    save = checkpoint.Checkpointer.save

    def signalling(self, at, *args, **kwargs):
      save(self, at, *args, **kwargs)
      if at == step:
        _kill_self()

    monkeypatch.setattr(checkpoint.Checkpointer, 'save', signalling)
  elif point == 'grids':  # while the sample grids of the eval of `step` are written
    write_pngs = writers.write_pngs

    def signalling(directory, at, images):
      _kill_self() if at == step else None
      write_pngs(directory, at, images)

    monkeypatch.setattr(writers, 'write_pngs', signalling)
  elif point == 'setup':  # while the data loads, before any step
    load_split = pipeline.load_split

    def signalling(*args, **kwargs):
      _kill_self()
      return load_split(*args, **kwargs)

    monkeypatch.setattr(pipeline, 'load_split', signalling)


def _evals(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [e for e in map(json.loads, f) if any(k.startswith('eval/') for k in e)]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, tfds_dir):
  from conftest import load_config

  done = {}

  def get(name):
    if name not in done:
      workdir = str(tmp_path_factory.mktemp(f'uninterrupted_{name}'))
      train.train_and_evaluate(load_config(name, 'smoke', tfds_dir, **SCHEDULE), workdir)
      done[name] = workdir
    return done[name]

  return get


@pytest.mark.parametrize(
  'name, point, step, saved',
  [
    ('cnn', 'step', 4, [3, 4]),
    ('cnn', 'eval', 4, [3, 4]),  # not a checkpoint step: the signal makes it one
    ('cnn', 'save', 3, [3]),
    ('cnn', 'final eval', 6, [3, 6]),
    ('vae', 'grids', 4, [3, 4]),
    ('cnn', 'setup', 0, []),
  ],
)
def test_sigterm_at_any_moment_saves_the_step_and_the_resumed_run_is_the_uninterrupted_one(
  make_config, uninterrupted, tmp_path, monkeypatch, name, point, step, saved
):
  config = make_config(name, **SCHEDULE)
  workdir = str(tmp_path / 'run')
  _signal_in(monkeypatch, point, step)
  expected = (
    f'SIGTERM at step {step}: checkpoint saved in {workdir}'
    if saved
    else 'SIGTERM before the first step: nothing was trained'
  )
  with pytest.raises(errors.Preempted, match=expected) as e:
    train.train_and_evaluate(config, workdir)
  assert e.value.exit_code == 143
  monkeypatch.undo()
  steps = (
    checkpoint.steps_in(os.path.join(workdir, 'checkpoints')) if os.path.isdir(workdir) else []
  )
  assert steps == saved
  train.train_and_evaluate(config, workdir)  # the same command again
  reference = uninterrupted(name)
  info = [writers.read_json(os.path.join(w, 'run.json')) for w in (reference, workdir)]
  assert info[1]['resumed_from_step'] == (saved[-1] if saved else 0)
  assert info[1]['final_params_sha256'] == info[0]['final_params_sha256']
  assert info[1]['final_metrics'] == info[0]['final_metrics']
  assert _evals(workdir) == _evals(reference)  # an eval cut short is run again on resume
  if name == 'vae':
    assert sorted(os.listdir(os.path.join(workdir, 'samples'))) == sorted(
      os.listdir(os.path.join(reference, 'samples'))
    )


def test_blocking_saves_train_the_run_that_async_saves_train(make_config, uninterrupted, tmp_path):
  """train.async_checkpoints=False (each save blocks) changes when the writes happen, not what
  is written: the same steps, params and evals as the default asynchronous run."""
  workdir = str(tmp_path / 'sync')
  train.train_and_evaluate(make_config('cnn', **SCHEDULE, train__async_checkpoints=False), workdir)
  reference = uninterrupted('cnn')
  assert checkpoint.steps_in(os.path.join(workdir, 'checkpoints')) == [3, 6]
  info = [writers.read_json(os.path.join(w, 'run.json')) for w in (reference, workdir)]
  assert info[1]['final_params_sha256'] == info[0]['final_params_sha256']
  assert _evals(workdir) == _evals(reference)


def _two_processes(workdir, tfds_dir, sigterm_process=None):
  """Two processes x 4 CPU devices on 127.0.0.1 train configs/cnn.py:smoke for 60 steps."""
  return two_processes(
    ['-c', SIGTERM_AT_STEP],
    [
      '--config',
      'configs/cnn.py:smoke',
      '--workdir',
      workdir,
      f'--config.data.tfds_dir={tfds_dir}',
      '--config.train.steps=60',
      '--config.train.log_every=1',
      '--config.train.eval_every=60',
      '--config.train.ckpt_every=20',
      '--config.train.progress=False',
    ],
    env={'SIGTERM_PROCESS': '' if sigterm_process is None else str(sigterm_process)},
  )


@pytest.mark.xdist_group('multiprocess')  # never two jax.distributed jobs at once
def test_two_processes_agree_on_the_step_when_only_one_gets_sigterm(
  make_config, tmp_path, tfds_dir
):
  pipeline.load_split(make_config('cnn').data, 'train')  # prepared before two processes race for it
  whole, stopped = str(tmp_path / 'whole'), str(tmp_path / 'stopped')
  for code, err in _two_processes(whole, tfds_dir):
    assert code == 0, err[-3000:]
  results = _two_processes(stopped, tfds_dir, sigterm_process=1)
  said = []
  for code, err in results:
    assert code == 143, err[-3000:]
    said.append([line for line in err.splitlines() if line.startswith('SIGTERM at step')][-1])
  step = int(said[0].split()[3].rstrip(':'))
  assert said[0] == said[1] and 5 <= step < 60  # the same step in both processes
  assert step in checkpoint.steps_in(os.path.join(stopped, 'checkpoints'))
  for code, err in _two_processes(stopped, tfds_dir):  # both resume
    assert code == 0, err[-3000:]
  info = [writers.read_json(os.path.join(w, 'run.json')) for w in (whole, stopped)]
  assert info[1]['resumed_from_step'] == step
  assert info[1]['final_params_sha256'] == info[0]['final_params_sha256']
