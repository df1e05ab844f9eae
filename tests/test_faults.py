"""Faults: SIGKILL at a random point of a run, and a disk that fills up while saving."""

import asyncio
import errno
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, run_py
from jaxvision import checkpoint, errors, train, writers

# run.py in a child process that SIGKILLs itself at its step-4 metrics, once the periodic
# checkpoint of step 3 is on disk: no graceful save, the process just disappears.
_KILLED_AT_STEP_4 = """
import os, runpy, signal, sys, time
from jaxvision import writers
write = writers.MetricWriter.write
def write_then_die(self, step, scalars):
  write(self, step, scalars)
  if step == 4:
    done = os.path.join(os.path.dirname(self._jsonl.name), 'checkpoints', '3')
    for _ in range(600):
      if os.path.isdir(done):
        break
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)
writers.MetricWriter.write = write_then_die
sys.argv = ['run.py'] + sys.argv[1:]
runpy.run_path('run.py', run_name='__main__')
"""


def _sha(workdir):
  return writers.read_json(os.path.join(workdir, 'run.json'))['final_params_sha256']


@pytest.mark.parametrize('name', ['cnn', 'dcgan', 'vae', 'diffusion'])
def test_sigkill_then_resume_equals_the_uninterrupted_run(
  make_config, reference_run, tmp_path, tfds_dir, name
):
  config = make_config(name)
  reference = reference_run(name)
  killed = str(tmp_path / 'killed')
  proc = subprocess.run(
    [
      sys.executable,
      '-c',
      _KILLED_AT_STEP_4,
      '--config',
      f'configs/{name}.py:smoke',
      '--workdir',
      killed,
      f'--config.data.tfds_dir={tfds_dir}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert checkpoint.Checkpointer(os.path.join(killed, 'checkpoints'), 3).all_steps() == [3]
  train.train_and_evaluate(config, killed)  # the same command again
  assert writers.read_json(os.path.join(killed, 'run.json'))['resumed_from_step'] == 3
  assert _sha(killed) == _sha(reference)


def test_disk_full_while_saving_is_one_line_and_keeps_the_earlier_checkpoints(
  make_config, reference_run, tmp_path, monkeypatch
):
  config = make_config('cnn')
  reference = reference_run('cnn')
  save = ocp.CheckpointManager.save

  def save_until_full(self, step, *args, **kwargs):
    if step == 6:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_until_full)
  workdir = str(tmp_path / 'full')
  with pytest.raises(errors.SaveError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert '\n' not in message and 'of step 6' in message and 'No space left on device' in message
  assert 'steps [3] are intact' in message
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  assert checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3).all_steps() == [3]
  train.train_and_evaluate(config, workdir)  # space freed: the same command resumes from step 3
  assert _sha(workdir) == _sha(reference)


def test_a_rerun_past_an_unreadable_latest_checkpoint_moves_it_aside_and_finishes(
  reference_run, clone_root, tfds_dir
):
  """The largest file of the latest step truncated (a copy of a finished run): the same command
  falls back to the step before, moves the unreadable one aside (renamed, not deleted), trains
  to the end, and ends with the uninterrupted run's params and metrics."""
  reference = reference_run('cnn')
  workdir = os.path.join(clone_root, 'runs', 'truncated')
  shutil.copytree(reference, workdir)
  step_dir = os.path.join(workdir, 'checkpoints', '6')
  files = [os.path.join(r, f) for r, _, names in os.walk(step_dir) for f in names]
  largest = max(files, key=os.path.getsize)
  size = os.path.getsize(largest)
  with open(largest, 'r+b') as f:
    f.truncate(size // 2)
  for _ in range(2):  # and a second rerun of the finished run changes nothing
    proc, _ = run_py(
      '--config',
      'configs/cnn.py:smoke',
      '--workdir',
      'runs/truncated',
      cwd=clone_root,
      tfds_dir=tfds_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr
  moved = os.path.join(workdir, 'checkpoints_unreadable', '6')
  assert os.path.getsize(os.path.join(moved, os.path.relpath(largest, step_dir))) == size // 2
  assert checkpoint.steps_in(os.path.join(workdir, 'checkpoints')) == [3, 6]
  assert _sha(workdir) == _sha(reference)
  # the same rows; the evals equal (a train row averages the steps since the last row that this
  # process ran, so the first one after a resume averages fewer)
  rows = lambda w: [json.loads(line) for line in Path(w, 'metrics.jsonl').read_text().splitlines()]
  assert [e['step'] for e in rows(workdir)] == [e['step'] for e in rows(reference)]
  evals = lambda w: [e for e in rows(w) if 'eval/loss' in e]
  assert evals(workdir) == evals(reference)


# run.py in a child process with a fault the code does not expect, injected by FAULT.
_FAULTY = """
import os, runpy, sys
import orbax.checkpoint as ocp
from jaxvision import train
fault = os.environ['FAULT']
if fault == 'async write':  # a background checkpoint write that failed, seen at the next save
  wait = ocp.CheckpointManager.wait_until_finished
  def failed_write(self):
    wait(self)
    if self.latest_step() == 3:
      raise ValueError('OUT_OF_RANGE: tensorstore could not write\\nsecond line of the message')
  ocp.CheckpointManager.wait_until_finished = failed_write
elif fault == 'in the loop':
  check = train.check_finite
  def broken(history, first_step):
    if first_step >= 4:
      raise RuntimeError('something nobody expected')
    return check(history, first_step)
  train.check_finite = broken
sys.argv = ['run.py'] + sys.argv[1:]
runpy.run_path('run.py', run_name='__main__')
"""


def test_reads_that_end_after_a_failed_restore_stay_out_of_stderr(monkeypatch):
  """A failed restore leaves TensorStore reads in flight; one that ends after Orbax closed its
  event loop hands its result to the closed loop from its own thread, and Python reports the
  RuntimeError as unraisable (a traceback in stderr, once seen under load in the test above):
  dropped from then on, while other unraisable errors still reach the hook. A restore that
  succeeds leaves the hook as it was."""
  seen = []
  hook = lambda unraisable: seen.append(unraisable.exc_value)  # noqa: E731
  monkeypatch.setattr(sys, 'unraisablehook', hook)
  with checkpoint._reads_that_may_fail():
    pass
  assert sys.unraisablehook is hook
  with pytest.raises(OSError), checkpoint._reads_that_may_fail():
    raise OSError('a truncated array file')
  loop = asyncio.new_event_loop()
  loop.close()

  class LateRead:
    def __del__(self):
      loop.call_soon_threadsafe(print)

  class Other:
    def __del__(self):
      raise ValueError('kept')

  reader = threading.Thread(target=LateRead)
  reader.start()
  reader.join()
  Other()
  assert [type(e) for e in seen] == [ValueError]


@pytest.mark.parametrize(
  'fault, message',
  [
    ('async write', 'error: ValueError: OUT_OF_RANGE: tensorstore could not write'),
    ('in the loop', 'error: RuntimeError: something nobody expected'),
  ],
)
def test_whatever_escapes_is_one_line_with_the_traceback_in_the_workdir(
  clone_root, tfds_dir, fault, message
):
  workdir = os.path.join(clone_root, 'runs', fault.replace(' ', '_'))
  proc = subprocess.run(
    [sys.executable, '-c', _FAULTY, '--config', 'configs/cnn.py:smoke', '--workdir', workdir],
    cwd=clone_root,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'TFDS_DATA_DIR': tfds_dir, 'FAULT': fault},
  )
  lines = [line for line in proc.stderr.splitlines() if line.strip() and 'train:' not in line]
  log = os.path.join(workdir, 'error.log')
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert lines == [f'{message} (the full traceback is in {log})'], lines
  with open(log, encoding='utf-8') as f:
    text = f.read()
  assert 'Traceback (most recent call last)' in text and 'configs/cnn.py:smoke' in text
  assert 3 in checkpoint.steps_in(os.path.join(workdir, 'checkpoints'))  # the saved step is intact
