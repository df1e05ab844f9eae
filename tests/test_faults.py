"""Faults: SIGKILL at a random point of a run, and a disk that fills up while saving."""
import errno
import os
import subprocess
import sys

import orbax.checkpoint as ocp
import pytest

from conftest import ROOT
from jaxvision import checkpoint, train, writers

# run.py in a child process that SIGKILLs itself at its step-4 metrics, once the periodic
# checkpoint of step 3 is on disk: no graceful save, the process just disappears.
_KILLED_AT_STEP_4 = '''
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
'''


def _sha(workdir):
  return writers.read_json(os.path.join(workdir, 'run.json'))['final_params_sha256']


@pytest.mark.parametrize('name', ['cnn', 'dcgan', 'vae'])
def test_sigkill_then_resume_equals_the_uninterrupted_run(make_config, reference_run, tmp_path, tfds_dir,
                                                          name):
  config = make_config(name)
  reference = reference_run(name)
  killed = str(tmp_path / 'killed')
  proc = subprocess.run([sys.executable, '-c', _KILLED_AT_STEP_4, '--config', f'configs/{name}.py:smoke',
                         '--workdir', killed, f'--config.data.tfds_dir={tfds_dir}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert checkpoint.Checkpointer(os.path.join(killed, 'checkpoints'), 3).all_steps() == [3]
  train.train_and_evaluate(config, killed)  # the same command again
  assert writers.read_json(os.path.join(killed, 'run.json'))['resumed_from_step'] == 3
  assert _sha(killed) == _sha(reference)


def test_disk_full_while_saving_is_one_line_and_keeps_the_earlier_checkpoints(make_config, reference_run,
                                                                               tmp_path, monkeypatch):
  config = make_config('cnn')
  reference = reference_run('cnn')
  save = ocp.CheckpointManager.save

  def save_until_full(self, step, *args, **kwargs):
    if step == 6:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, 'save', save_until_full)
  workdir = str(tmp_path / 'full')
  with pytest.raises(checkpoint.SaveError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert '\n' not in message and 'of step 6' in message and 'No space left on device' in message
  assert 'steps [3] are intact' in message
  monkeypatch.setattr(ocp.CheckpointManager, 'save', save)
  assert checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), 3).all_steps() == [3]
  train.train_and_evaluate(config, workdir)  # space freed: the same command resumes from step 3
  assert _sha(workdir) == _sha(reference)
