"""Tests run on 8 forced CPU devices; this must happen before jax is imported.

The session shares one XLA compilation cache (a fresh temporary directory, removed at exit),
inherited by the runs that tests start as subprocesses: the suite compiles the same smoke-run
programs many times over (a reference run, its interrupted twin, the resumed run, ...), and a
cache hit is the same executable, so no result changes. Users' runs do not use it."""

import atexit
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ['XLA_FLAGS'] = (
  os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='jaxvision-tests-xla-cache-')
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(
    JAX_COMPILATION_CACHE_DIR=_CACHE,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='-1',
  )

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  """One prepared mnist10k for the whole session (preparing takes ~1 s)."""
  return str(tmp_path_factory.mktemp('tfds'))


def init_variables(model, rngs, *args, **kwargs):
  """`model.init(rngs, *args, **kwargs)` as the tasks draw it (`models.init`), in one jitted call:
  eager init compiles every random draw on its own, which costs seconds per model."""
  from jaxvision import models

  return jax.jit(lambda r: models.init(model, r, *args, **kwargs))(rngs)


def load_config(name: str, preset: str = 'smoke', tfds_dir: str = '', **overrides):
  """configs/<name>.py:<preset> with dotted overrides (`optim__lr=0.1` is optim.lr)."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(
    f'configs_{name}', os.path.join(ROOT, 'configs', f'{name}.py')
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset)
  config.data.tfds_dir = tfds_dir
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('__')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


@pytest.fixture
def make_config(tfds_dir):
  return lambda name, preset='smoke', **kw: load_config(name, preset, tfds_dir, **kw)


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory, tfds_dir):
  """reference_run(name): the workdir of one uninterrupted run of configs/<name>.py:smoke on the
  8 devices, made once per session and shared; tests read it and must not write to it."""
  from jaxvision import train

  done = {}

  def get(name: str) -> str:
    if name not in done:
      workdir = str(tmp_path_factory.mktemp(f'reference_{name}'))
      train.train_and_evaluate(load_config(name, 'smoke', tfds_dir), workdir)
      done[name] = workdir
    return done[name]

  return get


@contextlib.contextmanager
def lowered_programs():
  """Collects the names of the programs jax lowers (compiles or finds in a cache) inside the
  block."""
  names = []
  listener = lambda event, _secs, fun_name='', **kw: (
    names.append(fun_name) if event.endswith('jaxpr_to_mlir_module_duration') else None
  )
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def sigterm_at_step(monkeypatch, step: int):
  """Makes the loop's metric writer deliver a real SIGTERM to this process once it has written
  the metrics of `step`; returns a function that undoes it."""
  import signal

  from jaxvision import writers

  write = writers.MetricWriter.write

  def write_then_sigterm(self, at, scalars):
    write(self, at, scalars)
    if at == step:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(writers.MetricWriter, 'write', write_then_sigterm)
  return lambda: monkeypatch.setattr(writers.MetricWriter, 'write', write)


def assert_sigterm_at_4_then_resume_is(whole: str, config, resumed: str, monkeypatch) -> None:
  """Trains `config` into `resumed` with a SIGTERM at step 4, then again to the end, and asserts
  the run resumed from step 4 and ended bitwise where the uninterrupted run in `whole` did."""
  from jaxvision import errors, train, writers

  undo = sigterm_at_step(monkeypatch, 4)
  with pytest.raises(errors.Preempted, match='SIGTERM at step 4'):
    train.train_and_evaluate(config, resumed)
  undo()
  train.train_and_evaluate(config, resumed)
  info = [writers.read_json(os.path.join(w, 'run.json')) for w in (whole, resumed)]
  assert info[1]['resumed_from_step'] == 4
  assert info[0]['final_params_sha256'] == info[1]['final_params_sha256']
  assert info[0]['final_metrics'] == info[1]['final_metrics']


@pytest.fixture(scope='session')
def clone_root(tmp_path_factory):
  """A directory laid out like a fresh clone's root (run.py and configs/), for commands run as a
  user runs them: `python run.py ...` from this directory, relative paths, default workdirs
  (runs/<config>_<preset> here, not in the developer's own checkout). jaxvision itself is the
  installed package, as in a clone after its set-up commands."""
  root = tmp_path_factory.mktemp('clone')
  shutil.copy(os.path.join(ROOT, 'run.py'), root)
  shutil.copytree(os.path.join(ROOT, 'configs'), root / 'configs')
  return root


# run.py in a process that sends itself SIGTERM once it has written the metrics of step
# $SIGTERM_AT_STEP (default 5); with $SIGTERM_PROCESS set, only the process whose --process_id
# it names does ('' : none). Run as `python -c SIGTERM_AT_STEP <run.py's flags>` from the root.
SIGTERM_AT_STEP = """
import os, runpy, signal, sys
from jaxvision import writers
write = writers.MetricWriter.write
def write_then_sigterm(self, step, scalars):
  write(self, step, scalars)
  process = os.environ.get('SIGTERM_PROCESS')
  if step == int(os.environ.get('SIGTERM_AT_STEP', '5')) and (
    process is None or f'--process_id={process}' in sys.argv
  ):
    os.kill(os.getpid(), signal.SIGTERM)
writers.MetricWriter.write = write_then_sigterm
sys.argv = ['run.py'] + sys.argv[1:]
runpy.run_path('run.py', run_name='__main__')
"""


def run_py(
  *args,
  cwd,
  tfds_dir: str,
  timeout: float = 300,
  env: dict | None = None,
  program: tuple = ('run.py',),
):
  """`python run.py *args` in `cwd` as a user types it; returns (CompletedProcess, seconds). The
  TFDS data dir comes from the environment (TFDS_DATA_DIR: mnist10k prepares itself there), not
  from a --config override, so the command is the one a user would type. `program` replaces
  'run.py' (e.g. ('-c', SIGTERM_AT_STEP): run.py with a hook)."""
  start = time.perf_counter()
  proc = subprocess.run(
    [sys.executable, *program, *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={**os.environ, 'TFDS_DATA_DIR': tfds_dir, **(env or {})},
  )
  return proc, time.perf_counter() - start


def tree_snapshot(path) -> dict:
  """{relative path: (size, mtime_ns, sha256)} of every file under `path` ({} if absent), and
  every directory's mtime: equal snapshots mean nothing was written, removed or touched."""
  out = {}
  for root, _, files in os.walk(path):
    rel = os.path.relpath(root, path)
    out[rel + '/'] = os.stat(root).st_mtime_ns
    for name in files:
      full = os.path.join(root, name)
      with open(full, 'rb') as f:
        digest = hashlib.sha256(f.read()).hexdigest()
      st = os.stat(full)
      out[os.path.join(rel, name)] = (st.st_size, st.st_mtime_ns, digest)
  return out


def _free_port() -> int:
  import socket

  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def two_processes(
  program: list[str], args: list[str], env: dict | None = None, timeout: float = 240
):
  """Runs `program + args + multi-host flags` as 2 processes x 4 CPU devices on 127.0.0.1 (a
  jax.distributed job) from the repo root; returns [(exit code, stderr)] of process 0 and 1.
  Both are killed on the way out, whatever happened."""
  port = _free_port()
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4', **(env or {})}
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        *program,
        *args,
        f'--coordinator_address=127.0.0.1:{port}',
        '--num_processes=2',
        f'--process_id={i}',
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  try:
    outs = [p.communicate(timeout=timeout) for p in procs]
  finally:
    for p in procs:
      p.kill()
      p.wait()
  return [(p.returncode, err) for p, (_, err) in zip(procs, outs)]
