"""Orbax checkpoints of the train state and the data iterator.

Each checkpoint step holds two items: `state` (the whole train state PyTree)
and `data` (the grain iterator position), so a resumed run sees exactly the
batches and random keys an uninterrupted one would. Restore targets carry
their shardings, so a checkpoint restores onto whatever mesh the run has now.
A latest checkpoint that cannot be read (truncated or missing files) is
skipped with one warning naming it, and the previous step is used; nothing
is deleted. A save that fails on an OS error (disk full, unwritable workdir),
in the call or in the background write, raises `SaveError`, one line; Orbax
writes a step to a temporary directory and renames it when complete, so the
steps saved before stay intact.
"""
import contextlib
import logging

from absl import logging as absl_logging
import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

# Orbax writes each replicated array in slices, one per replica, and compiles a slicing program
# for every array shape at the first save: ~70 programs, 3-4 s, for a small model on 8 CPU
# devices. Arrays whose slices would be under 1 MiB are written whole by one replica instead;
# larger ones are still written in parallel.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 1 << 20


def _register_array_handler() -> None:
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax warns about every override
  try:
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL), override=True)
  finally:
    absl_logging.set_verbosity(verbosity)


_register_array_handler()


class SaveError(Exception):
  """A checkpoint could not be written; the message is one line with the fix."""


def _os_error(e: BaseException) -> OSError | None:
  """The OSError behind an exception (orbax wraps the errors of its write threads), if any."""
  seen = set()
  while e is not None and id(e) not in seen:
    if isinstance(e, OSError):
      return e
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  return None


class Checkpointer:

  def __init__(self, directory: str, keep: int):
    self._manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, data_iterator=None) -> None:
    items = {'state': ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    with self._os_errors(step):
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, state_template, data_iterator=None, step: int | None = None):
    """Restores the newest readable step (or `step`) into the template's shapes
    and shardings; returns (step, state), or (None, template) if there is none."""
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state_template)
    steps = [step] if step is not None else self.all_steps()[::-1]
    for s in steps:
      items = {'state': ocp.args.StandardRestore(abstract)}
      if data_iterator is not None:
        items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = self._manager.restore(s, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except
        if step is not None:
          raise
        first = str(e).splitlines()[0] if str(e) else ''
        log.warning('checkpoint step %d in %s cannot be read (%s: %s); trying the previous one',
                    s, self._manager.directory, type(e).__name__, first[:300])
        continue
      return s, restored['state']
    return None, state_template

  def wait(self) -> None:
    with self._os_errors(None):
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _os_errors(self, step: int | None):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      cause = _os_error(e)
      if cause is None:
        raise
      good = [s for s in self.all_steps() if step is None or s < step]
      kept = f'steps {good} are intact' if good else 'no earlier checkpoint exists'
      raise SaveError(f'could not write a checkpoint{"" if step is None else f" of step {step}"} in '
                      f'{self._manager.directory}: {type(cause).__name__}: {cause}; free disk space '
                      f'or fix the workdir permissions, then run the same command again ({kept})') from e

  def close(self) -> None:
    self._manager.close()
