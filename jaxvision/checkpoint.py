"""Orbax checkpoints of the train state and the data iterator.

Each checkpoint step holds two items: `state` (the whole train state PyTree)
and `data` (the grain iterator position), so a resumed run sees exactly the
batches and random keys an uninterrupted one would. Restore targets carry
their shardings, so a checkpoint restores onto whatever mesh the run has now.

Nothing in a checkpoint directory is ever deleted by a failure:
- checkpoints whose arrays do not fit the model (another config, resumed with
  `allow_config_change`) are refused by `check_fits` before any compute, from
  Orbax's metadata, with `WorkdirError`;
- a step that cannot be read (truncated or missing files) is skipped with one
  warning, and when training resumes from an older step it is moved aside to
  `<checkpoints>_unreadable/<step>` (renamed, not deleted), so the run can save
  that step again;
- a save that fails on an OS error (disk full, unwritable workdir), in the
  call or in the background write, raises `SaveError`; Orbax writes a step to a
  temporary directory and renames it when complete, so the steps saved before
  stay intact.
"""

import contextlib
import gc
import hashlib
import logging
import os
import sys

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging as absl_logging
from etils import epath
from jax.experimental import multihost_utils

from jaxvision import paths
from jaxvision.errors import SaveError, WorkdirError

log = logging.getLogger(__name__)

# Orbax writes each replicated array in slices, one per replica, and compiles a slicing program
# for every array shape at the first save, which costs seconds for a small model on several CPU
# devices. Arrays whose slices would be under 1 MiB are written whole by one replica instead;
# larger ones are still written in parallel.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 1 << 20


@contextlib.contextmanager
def _quiet():
  """Orbax's warnings off: it warns about every handler override, every read-only option it
  adjusts and every metadata file an older step lacks."""
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


class _WithoutLateReads:
  """An unraisable hook that drops the RuntimeError('Event loop is closed') of a TensorStore read
  that finished after a failed restore had closed Orbax's event loop (TensorStore hands the
  result to `loop.call_soon_threadsafe` from its own thread, whenever the read ends), and passes
  every other unraisable exception to the hook it wraps."""

  def __init__(self, hook):
    self.hook = hook

  def __call__(self, unraisable) -> None:
    e = unraisable.exc_value
    if not (isinstance(e, RuntimeError) and str(e) == 'Event loop is closed'):
      self.hook(unraisable)


@contextlib.contextmanager
def _reads_that_may_fail():
  """A failed read of a step leaves Orbax coroutines holding the error; Python prints each one
  ("Exception ignored in: <coroutine ...>", a page of TensorStore spec) when they are collected.
  The step's error is reported once by `restore`, so those are collected here, silently; and
  from a failed read on, the reads still in flight may end at any time with nowhere to deliver
  their results, so `_WithoutLateReads` keeps their errors out of stderr for the process."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  failed = False
  try:
    yield
  except BaseException:
    failed = True
    raise
  finally:
    gc.collect()
    late = failed and not isinstance(hook, _WithoutLateReads)
    sys.unraisablehook = _WithoutLateReads(hook) if late else hook


def _short(e: BaseException) -> str:
  """An exception as one short line (TensorStore appends its whole spec to its messages)."""
  first = (str(e).strip().splitlines() or [''])[0].split('. See full TensorStore details')[0]
  return f'{type(e).__name__}: {first[:200]}'


def _register_array_handler() -> None:
  """jax.Array checkpoints with `MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL`."""
  with _quiet():
    ocp.type_handlers.register_type_handler(
      jax.Array,
      ocp.type_handlers.ArrayHandler(
        min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL
      ),
      override=True,
    )


_register_array_handler()


# TensorStore, which writes Orbax's arrays, raises ValueError with the storage's status first; these
# say that the storage refused or lost the write (a gs:// bucket deleted or not writable, the
# server unreachable), as an OSError does for a local disk.
_STORAGE_STATUSES = ('NOT_FOUND:', 'PERMISSION_DENIED:', 'UNAVAILABLE:', 'RESOURCE_EXHAUSTED:')


def _os_error(e: BaseException) -> BaseException | None:
  """The OSError behind an exception (orbax wraps the errors of its write threads), or
  TensorStore's error of a storage that refused the write; None if there is neither."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError) or (
      isinstance(e, ValueError) and str(e).startswith(_STORAGE_STATUSES)
    ):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


def params_sha256(params) -> str:
  """Bitwise fingerprint of a params PyTree (names, dtypes, shapes and bytes); a collective when
  the params are sharded over several processes (every process must call it).

  Args:
    params: a PyTree of arrays.

  Returns:
    The sha256 hex digest.
  """
  h = hashlib.sha256()
  if not all(getattr(x, 'is_fully_addressable', True) for x in jax.tree_util.tree_leaves(params)):
    params = multihost_utils.process_allgather(params, tiled=True)
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def _key_name(key) -> str:
  """One entry of a PyTree path (dict key, attribute or index) as a string."""
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def leaf_specs(tree) -> dict[str, tuple]:
  """{'params/Conv_0/kernel': (shape, dtype name)} for every array leaf of a state, an abstract
  state or Orbax's metadata tree of one (their paths name the same leaves).

  Args:
    tree: a PyTree whose leaves have `shape` and `dtype`.

  Returns:
    {'/'-joined path: (shape tuple, dtype name)}.
  """
  return {
    '/'.join(_key_name(k) for k in path): (tuple(leaf.shape), str(leaf.dtype))
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def _mismatch(saved: dict, wanted: dict) -> str | None:
  """A short description of how two leaf_specs differ, or None if they are the same."""
  missing, extra = sorted(set(wanted) - set(saved)), sorted(set(saved) - set(wanted))
  changed = sorted(
    (k for k in set(saved) & set(wanted) if saved[k] != wanted[k]),
    key=lambda k: (not k.startswith('params/'), k),
  )  # parameters first
  parts = [
    f'{k} is {saved[k][1]}{list(saved[k][0])} there, {wanted[k][1]}{list(wanted[k][0])} here'
    for k in changed[:2]
  ]
  if missing:
    parts.append(f'{len(missing)} arrays of this model are not there ({missing[0]}, ...)')
  if extra:
    parts.append(f'{len(extra)} arrays there are not in this model ({extra[0]}, ...)')
  return '; '.join(parts) or None


def steps_in(directory: str) -> list[int]:
  """The committed checkpoint steps in `directory`, oldest first ([] if it does not exist). It
  reads the directory only: no collective, no write, so any process may call it at any time.

  Args:
    directory: a checkpoint directory (WORKDIR/checkpoints).

  Returns:
    The step numbers, ascending.
  """
  if not epath.Path(directory).is_dir():
    return []
  return sorted(ocp.utils.checkpoint_steps(directory))


def check_fits(directory: str, abstract_state, workdir: str) -> None:
  """Checks, before any compute, that the checkpoints in `directory` fit the state, from the
  newest step whose metadata can be read (none readable: nothing to check).

  Args:
    directory: the checkpoint directory.
    abstract_state: the state's shapes and dtypes (`jax.eval_shape` of the task's init).
    workdir: the workdir, named in the message's fix.

  Raises:
    WorkdirError: (one line) the checkpoints hold arrays of other names, shapes or dtypes.
  """
  steps = steps_in(directory)
  for step in steps[::-1]:
    try:
      with _quiet(), _reads_that_may_fail():
        saved = ocp.StandardCheckpointer().metadata(os.path.join(directory, str(step), 'state'))
      if saved.item_metadata is None:  # Orbax could not read its arrays' metadata
        continue
      saved = leaf_specs(saved.item_metadata)
    except Exception:
      continue  # unreadable: Checkpointer.restore skips it
    difference = _mismatch(saved, leaf_specs(abstract_state))
    if difference:
      raise WorkdirError(
        f'the checkpoints in {directory} (steps {", ".join(map(str, steps))}) do not fit this '
        f'config: {difference}; train into another --workdir, or start the changed model from '
        f'their weights with --workdir NEW --config.init_from.path={workdir}'
      )
    return


class Checkpointer:
  """Saves and restores (state, data position) steps in one directory."""

  def __init__(self, directory: str, keep: int, read_only: bool = False, async_save: bool = True):
    """Opens (or creates) the directory.

    Args:
      directory: the checkpoint directory (WORKDIR/checkpoints).
      keep: the newest steps kept; older ones are deleted as new ones are saved.
      read_only: never write (the modes that only read a checkpoint).
      async_save: `save` returns once the arrays are copied off the devices and writes them in
        the background (Orbax's async checkpointing), so the write overlaps the next steps;
        False: `save` returns when the step is committed.

    Raises:
      SaveError: the directory cannot be created (an OS error).
    """
    self.directory = directory
    with self._os_errors(None), _quiet():
      options = (
        ocp.CheckpointManagerOptions(read_only=True)
        if read_only
        else ocp.CheckpointManagerOptions(
          max_to_keep=keep, create=True, enable_async_checkpointing=async_save
        )
      )
      self._manager = ocp.CheckpointManager(directory, options=options)

  def latest_step(self) -> int | None:
    """The newest saved step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """The saved steps, ascending."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_iterator=None) -> None:
    """Saves `step`: with async_save, starts the write and returns (`wait` blocks until it is
    committed); the state's buffers may be donated to the next step as soon as it returns.

    Args:
      step: the step number.
      state: the state PyTree (sharded arrays).
      data_iterator: the grain iterator whose position is saved with it, or None.

    Raises:
      SaveError: the write failed on an OS error (the steps saved before are intact).
    """
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._os_errors(step):
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(
    self, state_template, data_iterator=None, move_unreadable: bool = False, step: int | None = None
  ):
    """Restores the newest readable step into the template's shapes and shardings.

    Args:
      state_template: a state whose leaves carry the shapes, dtypes and shardings to restore to.
      data_iterator: a grain iterator to set to the step's position, or None.
      move_unreadable: move the steps newer than the one restored, which could not be read, to
        `<directory>_unreadable/` (training does, so that it can save those steps again).
      step: restore this step, or raise; None: the newest readable one.

    Returns:
      (step, state), or (None, state_template) when there is no checkpoint.

    Raises:
      WorkdirError: there are checkpoints, but none can be read.
    """
    abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_template
    )
    if step is not None:
      items = {'state': ocp.args.StandardRestore(abstract)}
      if data_iterator is not None:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
      return step, self._manager.restore(step, args=ocp.args.Composite(**items))['state']
    failed = []
    for step in self.all_steps()[::-1]:
      items = {'state': ocp.args.StandardRestore(abstract)}
      if data_iterator is not None:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        with _reads_that_may_fail():
          restored = self._manager.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:
        log.warning(
          'checkpoint step %d in %s cannot be read (%s); trying the previous one',
          step,
          self.directory,
          _short(e),
        )
        failed.append((step, _short(e)))
        continue
      if failed and move_unreadable:
        self._move_aside([s for s, _ in failed])
      return step, restored['state']
    if failed:
      raise WorkdirError(
        f'no checkpoint in {self.directory} can be read (step {failed[0][0]}: '
        f'{failed[0][1]}); nothing was changed: train into another --workdir'
      )
    return None, state_template

  def _move_aside(self, steps: list[int]) -> None:
    """Renames unreadable step directories out of Orbax's sight (nothing is deleted)."""
    aside = epath.Path(f'{os.fspath(self.directory).rstrip("/")}_unreadable')
    if jax.process_index() == 0:
      with self._os_errors(None):
        paths.makedirs(aside)
        for step in steps:
          target, n = aside / str(step), 1
          while target.exists():
            target, n = aside / f'{step}.{n}', n + 1
          (epath.Path(self.directory) / str(step)).rename(target)
          log.warning('moved the unreadable checkpoint step %d to %s', step, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices('jaxvision: unreadable checkpoints moved aside')
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until every started save is written; SaveError if a background write failed."""
    with self._os_errors(None):
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _os_errors(self, step: int | None):
    """An exception caused by an OSError (or a storage's refusal, see `_os_error`) becomes a
    one-line SaveError naming the intact steps."""
    try:
      yield
    except Exception as e:
      cause = _os_error(e)
      if cause is None:
        raise
      try:  # read again: a deleted gs:// bucket holds none any more
        good = [s for s in steps_in(self.directory) if step is None or s < step]
      except Exception:
        good = []
      kept = f'steps {good} are intact' if good else 'no earlier checkpoint exists'
      raise SaveError(
        f'could not write a checkpoint{"" if step is None else f" of step {step}"} in '
        f'{self.directory}: {_short(cause)}; free disk space '
        f'or fix the workdir permissions (a gs:// workdir: its bucket must exist and be '
        f'writable), then run the same command again ({kept})'
      ) from e

  def close(self) -> None:
    """Waits for pending saves and releases the manager; SaveError as `wait`."""
    with self._os_errors(None):
      self._manager.close()
