"""run.py's own promises beyond the commands of test_commands.py and test_bad_commands.py."""

import os
import subprocess
import sys

from conftest import ROOT


def test_a_run_imports_no_pytorch(tmp_path, tfds_dir):
  """The product never imports PyTorch, not even through a dependency (CI installs it for the
  benchmarks; tensorboardX, an earlier TensorBoard writer, imported it wherever installed)."""
  proc = subprocess.run(
    [
      sys.executable,
      '-X',
      'importtime',
      'run.py',
      '--config',
      'configs/cnn.py:smoke',
      '--workdir',
      str(tmp_path / 'w'),
      '--config.train.steps=1',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, 'TFDS_DATA_DIR': tfds_dir},
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  imported = {
    line.rsplit('|', 1)[-1].strip()
    for line in proc.stderr.splitlines()
    if line.startswith('import time:')
  }
  assert 'jaxvision.train' in imported and not {m for m in imported if m.split('.')[0] == 'torch'}
