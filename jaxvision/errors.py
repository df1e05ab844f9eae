"""Every exception jaxvision raises on purpose, and the exit code `run.py` gives it.

Each message is one line that says what failed and what to do. This module imports nothing of
jaxvision, so every other module may raise these.
"""

EXIT_UNEXPECTED = 1  # anything else: one line on the terminal, the traceback in WORKDIR/error.log
EXIT_BAD_INPUT = 2  # a config value, path, dataset, mesh or workdir that cannot work; nothing ran
EXIT_DIVERGED = 3  # a NaN/Inf train metric; the checkpoints before it are kept
EXIT_SAVE_FAILED = 4  # the workdir or a checkpoint could not be written; earlier steps intact
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), after saving the current step
EXIT_PREEMPTED = 143  # SIGTERM, after saving the current step (128 + 15, as if the signal ended it)


class Error(Exception):
  """Base class; `exit_code` is what `run.py` exits with."""

  exit_code = EXIT_UNEXPECTED


class BadInput(Error, ValueError):
  """Input that cannot work, found before any compute."""

  exit_code = EXIT_BAD_INPUT


class ConfigError(BadInput):
  """A config value that cannot work."""


class DataError(BadInput):
  """A dataset that cannot be read."""


class MeshError(BadInput):
  """A device mesh that does not fit the devices."""


class WorkdirError(BadInput):
  """The workdir holds something this run must not touch (another config, other data,
  checkpoints that do not fit this model), or is not a directory."""


class Diverged(Error, FloatingPointError):
  """A train metric became NaN or Inf; no checkpoint of the diverged state was written."""

  exit_code = EXIT_DIVERGED


class SaveError(Error):
  """The workdir or a checkpoint could not be written."""

  exit_code = EXIT_SAVE_FAILED


class Preempted(Error):
  """A stop signal arrived; the checkpoint of the step in the message is saved."""

  def __init__(self, message: str, exit_code: int = EXIT_PREEMPTED):
    super().__init__(message)
    self.exit_code = exit_code
