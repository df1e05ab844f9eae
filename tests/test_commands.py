"""The front door: every config's smoke preset and every mode of its task, run as a user runs
them: `python run.py ...` in a subprocess, from a clone's root, relative paths, default workdirs.

configs/cas.py:smoke trains on what `--mode sample` of the cgan smoke run wrote, the chain the
README shows; configs/augment.py:smoke and transfer.py:smoke train as they are.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_py, tree_snapshot
from jaxvision import writers

GENERATORS = ('gan', 'dcgan', 'cgan', 'vae', 'conv_vae', 'cvae', 'diffusion')
CONDITIONAL = ('cgan', 'cvae')
IMAGE_CLASSIFIERS = ('cnn', 'resnet', 'vit', 'attention', 'lstm', 'transfer', 'augment', 'cas')
CONFIGS = IMAGE_CLASSIFIERS + ('cnn_rnn',) + GENERATORS
CAS_SAMPLES = 'runs/cgan_smoke_samples.npz'  # --mode sample's .npz, moved where the user keeps it
EXTRA = {'cas': (f'--config.data.synthetic.path={CAS_SAMPLES}',)}


def _one_worker_per_run(names) -> list:
  """`names` as parameters whose tests run on one worker per smoke run (cas with the cgan run
  it samples from): each worker has its own clone and `user.train` trains a run once in it."""
  group = lambda name: 'cgan' if name == 'cas' else name
  return [pytest.param(n, marks=pytest.mark.xdist_group(f'run_{group(n)}')) for n in names]


def _printed(stdout: str) -> dict:
  """The `key=value` pairs of the last line run.py printed."""
  return dict(kv.split('=', 1) for kv in stdout.strip().splitlines()[-1].split())


def _events(workdir) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def _steps(workdir) -> list[int]:
  return sorted(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())


def _ok(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope='module')
def user(clone_root, tfds_dir):
  """user(*args) runs run.py in the clone root; user.train(name) trains a smoke preset once."""
  trained = {}

  class User:
    root = clone_root

    def __call__(self, *args, **kwargs):
      return run_py(*args, cwd=clone_root, tfds_dir=tfds_dir, **kwargs)

    def train(self, name):
      if name not in trained:
        if name == 'cas':
          self.train('cgan')
          _ok(
            self('--config', 'configs/cgan.py:smoke', '--mode', 'sample', '--config.sample.n=64')[0]
          )
          for written in ('step_6.npz', 'step_6'):
            os.rename(
              os.path.join(clone_root, 'runs/cgan_smoke/samples', written),
              os.path.join(clone_root, 'runs', written.replace('step_6', 'cgan_smoke_samples')),
            )
        trained[name] = self('--config', f'configs/{name}.py:smoke', *EXTRA.get(name, ()))[0]
      return trained[name], os.path.join(clone_root, 'runs', f'{name}_smoke')

  return User()


@pytest.mark.parametrize('name', _one_worker_per_run(CONFIGS))
def test_smoke_preset_trains_resumes_and_evaluates_from_the_default_workdir(user, name):
  proc, workdir = user.train(name)
  _ok(proc)
  info = writers.read_json(os.path.join(workdir, 'run.json'))
  assert info['workdir'] == os.path.join(str(user.root), 'runs', f'{name}_smoke')  # resolved once
  events = _events(workdir)
  assert [e['step'] for e in events if 'train/loss' in e] == [2, 4, 6]
  evals = [e for e in events if any(k.startswith('eval/') for k in e)]
  assert [e['step'] for e in evals] == [3, 6] and _steps(workdir) == [3, 6]
  final = {k: v for k, v in evals[-1].items() if k != 'step'}
  assert info['final_metrics'] == final and np.all(np.isfinite(list(final.values())))
  printed = _printed(proc.stdout)
  assert {k: pytest.approx(float(v), rel=1e-5) for k, v in printed.items()} == final

  # The same command again: it resumes at the end, trains nothing, and loses nothing.
  checkpoints = tree_snapshot(os.path.join(workdir, 'checkpoints'))
  again, _ = user('--config', f'configs/{name}.py:smoke', *EXTRA.get(name, ()))
  _ok(again)
  assert 'resuming' in again.stderr and _printed(again.stdout) == printed
  assert (
    _events(workdir) == events
    and tree_snapshot(os.path.join(workdir, 'checkpoints')) == checkpoints
  )
  rerun = writers.read_json(os.path.join(workdir, 'run.json'))
  assert (
    rerun['resumed_from_step'] == 6 and rerun['final_params_sha256'] == info['final_params_sha256']
  )

  evaluated, _ = user(
    '--config', f'configs/{name}.py:smoke', *EXTRA.get(name, ()), '--mode', 'eval'
  )
  _ok(evaluated)
  shown = _printed(evaluated.stdout)
  assert shown.pop('step') == '6'
  assert {k: pytest.approx(float(v), rel=1e-5) for k, v in shown.items()} == final


@pytest.mark.parametrize('name', _one_worker_per_run(GENERATORS))
def test_sample_mode_writes_pngs_and_an_npz(user, name):
  proc, workdir = user.train(name)
  _ok(proc)
  sampled, _ = user(
    '--config', f'configs/{name}.py:smoke', '--mode', 'sample', '--config.sample.n=10'
  )
  _ok(sampled)
  out = os.path.join(workdir, 'samples', 'step_6')
  assert sorted(os.listdir(out)) == [f'{i:05d}.png' for i in range(10)]
  earlier = dict(np.load(out + '.npz'))
  again, _ = user('--config', f'configs/{name}.py:smoke', '--mode', 'sample', '--config.sample.n=3')
  _ok(again)  # the earlier samples move aside, nothing is deleted
  assert f'moved the earlier samples to {out}.1' in again.stderr
  assert (
    sorted(os.listdir(out)) == [f'{i:05d}.png' for i in range(3)]
    and len(os.listdir(out + '.1')) == 10
  )
  with np.load(out + '.1.npz') as f:
    np.testing.assert_array_equal(f['images'], earlier['images'])
  images = earlier['images']
  assert images.shape == (10, 28, 28, 1) and images.dtype == np.uint8
  assert images.std() > 0  # not a constant image
  if name in CONDITIONAL:
    np.testing.assert_array_equal(earlier['labels'], np.arange(10) % 10)
  else:
    assert 'labels' not in earlier


@pytest.mark.parametrize('name', _one_worker_per_run(IMAGE_CLASSIFIERS))
def test_explain_mode_writes_figures_whose_attributions_are_complete(user, name):
  proc, workdir = user.train(name)
  _ok(proc)
  explained, _ = user(
    '--config',
    f'configs/{name}.py:smoke',
    *EXTRA.get(name, ()),
    '--mode',
    'explain',
    '--config.explain.n=3',
  )
  _ok(explained)
  out = os.path.join(workdir, 'explain')
  assert len([f for f in os.listdir(out) if f.endswith('.png')]) == 3
  summary = writers.read_json(os.path.join(out, 'summary.json'))
  assert summary['step'] == 6 and len(summary['images']) == 3
  assert summary['max_completeness_error'] < 0.05  # integrated gradients sum to f(x) - f(baseline)


@pytest.mark.xdist_group('run_cnn_rnn')
def test_explain_refuses_digit_sequences_in_one_line(user):
  proc, workdir = user.train('cnn_rnn')
  _ok(proc)
  before = tree_snapshot(workdir)
  refused, _ = user('--config', 'configs/cnn_rnn.py:smoke', '--mode', 'explain')
  assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
    'error: --mode explain needs single images; digit_sequences gives image of shape (4, 28, 28, 1)'
  ]
  assert tree_snapshot(workdir) == before


@pytest.mark.parametrize('form', ['relative with spaces', 'home', 'symlink'])
def test_any_workdir_a_user_types_works(user, tmp_path, form):
  """Relative (with spaces), ~/..., and through a symlink; run.json records the resolved path,
  and the same directory reached another way resumes the run."""
  home = tmp_path / 'home'
  home.mkdir()
  real = tmp_path / 'real'
  real.mkdir()
  (tmp_path / 'link').symlink_to(real)
  typed, resolved = {
    'relative with spaces': ('runs/my run', os.path.join(str(user.root), 'runs', 'my run')),
    'home': ('~/runs/cnn', str(home / 'runs' / 'cnn')),
    'symlink': (str(tmp_path / 'link' / 'cnn'), str(tmp_path / 'link' / 'cnn')),
  }[form]
  env = {'HOME': str(home)}
  proc, _ = user('--config', 'configs/cnn.py:smoke', '--workdir', typed, env=env)
  _ok(proc)
  info = writers.read_json(os.path.join(resolved, 'run.json'))
  assert info['workdir'] == resolved and _steps(resolved) == [3, 6]
  other_spelling = os.path.realpath(resolved)  # e.g. the symlink's target, the absolute path
  again, _ = user('--config', 'configs/cnn.py:smoke', '--workdir', other_spelling, env=env)
  _ok(again)
  assert 'resuming' in again.stderr and _printed(again.stdout) == _printed(proc.stdout)


def test_sigterm_and_ctrl_c_save_the_step_and_exit_143_and_130(user, tmp_path, tfds_dir):
  """A real signal to a run.py process at its step-4 metrics: the step is saved, one line says
  so, and the exit code is 128 + the signal; the same command then finishes the run."""
  wrapper = tmp_path / 'signal_at_step_4.py'
  wrapper.write_text(
    'import os, runpy, signal, sys\n'
    'from jaxvision import writers\n'
    'write = writers.MetricWriter.write\n'
    'def write_then_signal(self, step, scalars):\n'
    '  write(self, step, scalars)\n'
    '  if step == 4:\n'
    '    os.kill(os.getpid(), int(os.environ["SIGNAL"]))\n'
    'writers.MetricWriter.write = write_then_signal\n'
    'sys.argv = ["run.py"] + sys.argv[1:]\n'
    'runpy.run_path("run.py", run_name="__main__")\n'
  )
  for signum, code, name in ((signal.SIGTERM, 143, 'SIGTERM'), (signal.SIGINT, 130, 'SIGINT')):
    workdir = f'runs/signal_{code}'
    proc = subprocess.run(
      [
        sys.executable,
        str(wrapper),
        '--config',
        'configs/cnn.py:smoke',
        '--workdir',
        workdir,
        '--config.train.log_every=1',
      ],
      cwd=user.root,
      capture_output=True,
      text=True,
      timeout=300,
      env={**os.environ, 'TFDS_DATA_DIR': tfds_dir, 'SIGNAL': str(int(signum))},
    )
    lines = [line for line in proc.stderr.splitlines() if 'train:' not in line and line.strip()]
    assert proc.returncode == code, proc.stderr[-3000:]
    assert lines[-1] == (
      f'{name} at step 4: checkpoint saved in {user.root}/{workdir}; run the same '
      f'command again to resume'
    ), lines
    assert _steps(os.path.join(user.root, workdir)) == [3, 4]
    again, _ = user(
      '--config', 'configs/cnn.py:smoke', '--workdir', workdir, '--config.train.log_every=1'
    )
    _ok(again)
    assert _steps(os.path.join(user.root, workdir)) == [3, 4, 6]
