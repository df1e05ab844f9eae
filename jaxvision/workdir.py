"""The run directory: where it is, and what a run may do to one that already holds a run.

A workdir is given once, on the command line, and resolved there (`resolve`): relative paths
against the current directory, `~` expanded, local paths made absolute (Orbax needs them), remote
ones (`gs://...`) kept. Everything below takes the resolved path.

Before any compute, a run that would resume a workdir checks that it holds a run of the same
config (`check_config`) and data (`check_data`), and that the path is a directory or nothing
(`check_usable`). Nothing is written to the workdir until those checks pass (`create`).
"""

import json
import os
import socket

from etils import epath

from jaxvision import models, paths, tasks, writers
from jaxvision.errors import SaveError, WorkdirError

# Keys that may change between a run and its resumption without changing the result.
RESUMABLE_KEYS = (
  'allow_config_change',
  'train.progress',
  'train.async_checkpoints',
  'data.read_threads',
  'data.workers',
  'data.tfds_dir',
  'train.log_every',
  'train.eval_every',
  'sample.n',
  'sample.steps',
  'sample.sampler',
  'sample.guidance',
  'debug_nans',
  'explain.n',
  'explain.steps',
  'mesh.data',
  'mesh.fsdp',
  'mesh.model',
  'parallel',
  'model.remat',
)  # restores onto any mesh; remat recomputes the same function


def resolve(path: str) -> str:
  """The workdir as every later step uses it: `paths.resolve` (`~` expanded, local paths
  absolute with symlinks kept as the user wrote them, remote URLs such as gs://bucket/run
  unchanged), after checking that it is not empty.

  Args:
    path: --workdir as typed.

  Returns:
    The resolved path (a remote URL without its trailing '/').

  Raises:
    WorkdirError: the path is empty.
  """
  path = os.fspath(path)
  if not path.strip():
    raise WorkdirError('--workdir is empty; give a directory, e.g. --workdir runs/my_run')
  return paths.resolve(path)


def check_usable(workdir: str) -> None:
  """Checks, without writing, that the workdir can be a directory.

  Args:
    workdir: the resolved workdir.

  Raises:
    WorkdirError: the workdir, or a folder on its way, is a file; or it cannot be read.
  """
  path = epath.Path(workdir)
  try:
    is_file = path.exists() and not path.is_dir()
  except OSError as e:  # gs://: a server that cannot be reached (after gcsfs's retries)
    raise WorkdirError(
      f'--workdir {workdir} cannot be read ({type(e).__name__}: {e}); check the path (for '
      f'gs://: the bucket, the credentials and the network)'
    ) from e
  if is_file:
    raise WorkdirError(
      f'--workdir {workdir} is a file, not a directory; give a directory (it is created if missing)'
    )
  if paths.is_remote(workdir):
    return
  parent = os.path.dirname(workdir)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise WorkdirError(f'--workdir {workdir}: {parent} is a file, not a directory')


def create(workdir: str) -> None:
  """Creates the workdir (and its parents) and checks that this process can write to it.

  Args:
    workdir: the resolved workdir.

  Raises:
    SaveError: (exit 4) it cannot be created or written to.
  """
  try:
    paths.makedirs(workdir)
    # one probe per process: the processes of a multi-host run share the workdir
    probe = epath.Path(workdir) / f'.jaxvision_write_test.{socket.gethostname()}.{os.getpid()}'
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    raise SaveError(
      f'cannot write to --workdir {workdir}: {type(e).__name__}: {e.strerror or e}; '
      f'give a directory you can write to'
    ) from e


def set_aside(*paths: str) -> list[str]:
  """Renames the outputs of an earlier `--mode sample` / `--mode explain` out of the way of new
  ones, as `<stem>.1<ext>`, `<stem>.2<ext>`, ... (the same k for all `paths`); nothing is
  deleted.

  Args:
    *paths: the outputs of one kind (a directory, and an .npz whose suffix is kept).

  Returns:
    The new names of those that existed ([] if none did).
  """
  existing = [p for p in paths if epath.Path(p).exists()]
  if not existing:
    return []
  split = [
    (p[: -len(ext)], ext) if (ext := os.path.splitext(p)[1]) == '.npz' else (p, '') for p in paths
  ]
  k = 1
  while any(epath.Path(f'{stem}.{k}{ext}').exists() for stem, ext in split):
    k += 1
  moved = []
  for (stem, ext), path in zip(split, paths):
    if path in existing:
      epath.Path(path).rename(f'{stem}.{k}{ext}')
      moved.append(f'{stem}.{k}{ext}')
  return moved


def _flat(config) -> dict:
  """{'a.b': value} of a nested config or dict."""
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f'{prefix}{k}.')
      else:
        out[f'{prefix}{k}'] = v

  walk(config.to_dict() if hasattr(config, 'to_dict') else config, '')
  return out


def _jsonable(tree):
  """`tree` as run.json holds it (tuples as lists, other objects as strings)."""
  return json.loads(json.dumps(tree, default=str))


def check_config(config, workdir: str) -> None:
  """Refuses to resume a workdir written by a different config (WorkdirError).

  Every key of `config` is compared with the value run.json holds. A key that run.json lacks (the
  run was written by an older jaxvision) matches when `config` holds the value the old run used
  without naming it: the default of its task, or for model.X the model's default for field X. A
  key that only run.json holds (one jaxvision has dropped) is not compared.

  Args:
    config: the experiment config.
    workdir: the resolved workdir.

  Raises:
    WorkdirError: a key outside `RESUMABLE_KEYS` differs, unless config.allow_config_change.
  """
  info = writers.read_json(epath.Path(workdir) / 'run.json')
  if info is None or config.allow_config_change:
    return
  old, new = _flat(info['config']), _flat(_jsonable(config.to_dict()))
  task = info['config'].get('task', config.task)
  default = {
    **(_flat(_jsonable(tasks.base_config(task).to_dict())) if task in tasks.TASKS else {}),
    **_flat({'model': _jsonable(models.defaults(info['config'].get('model', {}).get('name')))}),
  }
  for k in set(new) - set(old):
    if k in default:
      old[k] = default[k]
  differ = sorted(k for k in new if k not in RESUMABLE_KEYS and old.get(k, '<unset>') != new[k])
  if differ:
    shown = ', '.join(f'{k}: {old.get(k, "<unset>")!r} -> {new[k]!r}' for k in differ[:6])
    raise WorkdirError(
      f'{workdir} holds a run of another config ({shown}); use a new --workdir '
      f'or pass --config.allow_config_change=True'
    )


def check_data(config, workdir: str, fingerprints: dict) -> None:
  """Refuses to resume a workdir trained on other data: another dataset version or subset, other
  cluster ids (data.clusters; e.g. another machine's BLAS moved a border image). The run would go
  on, but not as the run it resumes.

  Args:
    config: the experiment config (allow_config_change).
    workdir: the resolved workdir.
    fingerprints: {'train', 'eval'}: the fingerprints of this run's splits.

  Raises:
    WorkdirError: a split's fingerprint differs from run.json's, unless
      config.allow_config_change.
  """
  info = writers.read_json(epath.Path(workdir) / 'run.json')
  if info is None or config.allow_config_change or 'data' not in info:
    return
  for split in ('train', 'eval'):
    old, new = info['data'].get(split), fingerprints[split]
    if old is not None and old != new:
      raise WorkdirError(
        f'{workdir} was trained on other {split} data ({old} -> {new}); use a new '
        f'--workdir or pass --config.allow_config_change=True'
      )
