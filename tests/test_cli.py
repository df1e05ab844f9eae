"""run.py as a user runs it: end to end, overrides, and one-line errors before compute."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT


def _run(*args, timeout=300, python=()):
  start = time.perf_counter()
  proc = subprocess.run([sys.executable, *python, 'run.py', *args], cwd=ROOT, capture_output=True, text=True,
                        timeout=timeout)
  return proc, time.perf_counter() - start


def test_smoke_run_end_to_end_with_overrides(tmp_path, tfds_dir):
  workdir = str(tmp_path / 'w')
  proc, _ = _run('--config', 'configs/cnn.py:smoke', '--workdir', workdir,
                 f'--config.data.tfds_dir={tfds_dir}', '--config.optim.lr=0.01', python=('-X', 'importtime'))
  assert proc.returncode == 0, proc.stderr[-2000:]
  # The product never imports PyTorch, not even through a dependency (CI installs it for the
  # benchmarks; tensorboardX, the earlier TensorBoard writer, imported it wherever installed).
  imported = {line.rsplit('|', 1)[-1].strip() for line in proc.stderr.splitlines()
              if line.startswith('import time:')}
  assert 'jaxvision.train' in imported and not {m for m in imported if m.split('.')[0] == 'torch'}
  assert 'eval/accuracy=' in proc.stdout
  with open(os.path.join(workdir, 'run.json'), encoding='utf-8') as f:
    info = json.load(f)
  assert info['config']['optim']['lr'] == 0.01 and 'final_params_sha256' in info
  assert any(n.startswith('events.out.tfevents') for n in os.listdir(workdir))
  with open(os.path.join(workdir, 'metrics.jsonl'), encoding='utf-8') as f:
    assert json.loads(f.readlines()[-1])['step'] == 6
  proc, _ = _run('--config', 'configs/cnn.py:smoke', '--workdir', workdir, '--mode', 'eval',
                 f'--config.data.tfds_dir={tfds_dir}', '--config.optim.lr=0.01')
  assert proc.returncode == 0 and 'step=6' in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize('override, message', [
    ('--config.nope=1', "--config.nope: unknown config key 'nope'; keys at the top level: allow_config_change"),
    ('--config.optim.lr=abc', "--config.optim.lr=abc: could not convert string to float: 'abc'"),
    ('--config.data.name=no_such_set', "data.name='no_such_set' is not a TFDS dataset; use data.name=mnist10k"),
    ('--config.model.name=resnet9000', "model.name='resnet9000' is not allowed; use one of: attention, cnn"),
    ('--config.optim.schedule=linear', "optim.schedule='linear' is not allowed; use one of: constant"),
    ('--config.data.batch_size=12', 'data.batch_size=12 must be divisible by the 8 batch shards'),
    ('--config.mesh.data=3', 'mesh {'),
    ('--config.data.synthetic.real_fraction=1.0', 'data.synthetic.real_fraction=1.0 must be in [0, 1)'),
    ('--config.cpu_convolutions=onednn', "cpu_convolutions='onednn' is not allowed; use one of: ynnpack, xla"),
])
def test_bad_input_fails_fast_with_one_line(tmp_path, tfds_dir, override, message):
  workdir = tmp_path / 'w'
  workdir.mkdir()
  (workdir / 'keep.txt').write_text('precious')
  proc, seconds = _run('--config', 'configs/cnn.py:smoke', '--workdir', str(workdir),
                       f'--config.data.tfds_dir={tfds_dir}', override)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], lines
  assert seconds < 10
  assert os.listdir(workdir) == ['keep.txt']  # nothing written, nothing lost


@pytest.mark.parametrize('flags, message', [
    (['--num_processes=2'], '--coordinator_address, --num_processes and --process_id go together'),
    (['--coordinator_address=127.0.0.1:1', '--num_processes=2', '--process_id=2'],
     '--process_id=2 must be in [0, --num_processes=2)'),
])
def test_bad_multihost_flags_fail_with_one_line(tmp_path, tfds_dir, flags, message):
  workdir = tmp_path / 'w'
  proc, _ = _run('--config', 'configs/cnn.py:smoke', '--workdir', str(workdir),
                 f'--config.data.tfds_dir={tfds_dir}', *flags)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f'error: {message}'), lines
  assert not workdir.exists()
