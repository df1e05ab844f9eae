"""Stop signals as a request the loop checks between steps, agreed by every process.

SIGTERM (a preempted VM, a cluster's time limit, `kill`) and Ctrl-C (SIGINT) do not end the
process: they set a flag, and the loop saves the step it is on and exits (143 or 130).

One process: a Python signal handler sets the flag, which the loop reads once per step and
between eval batches (so a long eval stops early). Several processes (`jax.distributed`): the
signal may reach one host only, or the hosts at different steps, yet every process must save
the same step, since a checkpoint is written collectively. There JAX's preemption service
owns SIGTERM (its notifier tells the coordination service) and
`multihost_utils.reached_preemption_sync_point(step)`, called by every process at every step,
turns true at the same step everywhere. Ctrl-C keeps its default there (stop everything).
"""

import signal
import threading

import jax
from jax.experimental import multihost_utils

from jaxvision import errors

_NAMES = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'SIGINT'}
_CODES = {signal.SIGTERM: errors.EXIT_PREEMPTED, signal.SIGINT: errors.EXIT_INTERRUPTED}


def _synced() -> bool:
  """Several processes: JAX's preemption service (on by default) agrees on the stop step."""
  return jax.process_count() > 1


class StopRequest:
  """Context manager: while active, SIGTERM and SIGINT request a stop instead of ending the
  process."""

  def __init__(self):
    self.signum = None
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self  # signals are delivered to the main thread only: nothing to install
    ours = [] if _synced() else [signal.SIGTERM, signal.SIGINT]  # JAX's notifier owns SIGTERM
    for signum in ours:
      self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
    self.signum = signum

  @property
  def local(self) -> bool:
    """A signal reached this process (single-process runs only; checked between eval batches)."""
    return self.signum is not None

  def at_step(self, step: int) -> bool:
    """Whether to stop after `step`. Every process calls it once per step, in step order.

    Args:
      step: the step just taken.

    Returns:
      True at the same step on every process once a stop signal arrived.

    Raises:
      ConfigError: several processes, and the JAX preemption service is off.
    """
    if _synced():
      try:
        reached = multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError as e:  # jax_enable_preemption_service was turned off
        raise errors.ConfigError(
          f'a run of several processes needs the JAX preemption service to '
          f'save on SIGTERM ({e}); leave jax_enable_preemption_service on'
        ) from e
      if reached:
        self.signum = self.signum or signal.SIGTERM
        return True
      return False
    return self.signum is not None

  def error(self, step: int, workdir: str, saved: bool = True) -> errors.Preempted:
    """The exception that ends the run once the checkpoint of `step` is saved (`saved`), or
    before the first step of a new run (nothing to save).

    Args:
      step: the step whose checkpoint is saved.
      workdir: the workdir, for the message.
      saved: False: the signal came before anything was trained.

    Returns:
      A Preempted whose exit code is 143 (SIGTERM) or 130 (SIGINT); the caller raises it.
    """
    signum = self.signum or signal.SIGTERM
    if not saved:
      return errors.Preempted(
        f'{_NAMES[signum]} before the first step: nothing was trained; '
        f'run the same command again to start',
        _CODES[signum],
      )
    return errors.Preempted(
      f'{_NAMES[signum]} at step {step}: checkpoint saved in {workdir}; '
      f'run the same command again to resume',
      _CODES[signum],
    )
