"""run.py re-executes itself with malloc on transparent huge pages (jaxvision/hugepages.py)."""

import os
import subprocess
import sys
import time

import pytest

from conftest import ROOT

TUNABLE = b'GLIBC_TUNABLES=glibc.malloc.hugetlb=1'
# What the re-executed interpreter prints: its tunables and its PID.
PRINT = (
  'from jaxvision import hugepages; hugepages.reexec(); import os; '
  'print(os.environ.get("GLIBC_TUNABLES"), os.getpid())'
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc on Linux only')


def _python(code: str, **env) -> tuple[str, int]:
  """(printed tunables, printed PID) of `python -c code`, and the PID it started as."""
  clean = {
    k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'JAXVISION_HUGEPAGES')
  }
  proc = subprocess.Popen(
    [sys.executable, '-c', code], env={**clean, **env}, stdout=subprocess.PIPE, text=True, cwd=ROOT
  )
  out, _ = proc.communicate(timeout=60)
  tunables, pid = out.split()
  assert proc.returncode == 0 and int(pid) == proc.pid  # exec keeps the process (and its PID)
  return tunables


def test_reexec_adds_the_tunable_keeps_the_users_and_can_be_turned_off():
  assert _python(PRINT) == 'glibc.malloc.hugetlb=1'
  assert _python(PRINT, GLIBC_TUNABLES='glibc.malloc.check=0') == (
    'glibc.malloc.check=0:glibc.malloc.hugetlb=1'
  )
  assert _python(PRINT, GLIBC_TUNABLES='glibc.malloc.hugetlb=0') == 'glibc.malloc.hugetlb=0'
  assert _python(PRINT, JAXVISION_HUGEPAGES='0') == 'None'


def test_run_py_trains_in_the_reexecuted_process(clone_root, tfds_dir):
  """`python run.py` as a user types it: the process that trains (the same PID) has the tunable."""
  clean = {
    k: v for k, v in os.environ.items() if k not in ('GLIBC_TUNABLES', 'JAXVISION_HUGEPAGES')
  }
  proc = subprocess.Popen(
    [sys.executable, 'run.py', '--config', 'configs/cnn.py:smoke', '--workdir', 'runs/hugepages'],
    cwd=clone_root,
    env={**clean, 'TFDS_DATA_DIR': tfds_dir},
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )
  seen = False
  while proc.poll() is None and not seen:
    try:
      with open(f'/proc/{proc.pid}/environ', 'rb') as f:
        seen = TUNABLE in f.read().split(b'\0')
    except OSError:
      break
    time.sleep(0.02)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  assert seen
  assert (clone_root / 'runs' / 'hugepages' / 'metrics.jsonl').exists()
