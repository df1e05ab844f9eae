"""What run.py needs besides its flags: one-line errors, the workdir, the mode dispatch.

Whatever happens, the terminal gets one line and the process a documented exit code
(`jaxvision.errors`): bad input 2 before anything ran, a diverged run 3, a workdir or checkpoint
that could not be written 4, Ctrl-C 130 and SIGTERM 143 after saving the step they arrived in,
and anything unexpected 1, with its traceback in WORKDIR/error.log.
"""

import datetime
import glob
import logging as std_logging
import os
import sys
import tempfile
import traceback

import jax
from absl import flags, logging
from etils import epath
from ml_collections import config_flags

from jaxvision import config as config_lib
from jaxvision import errors, modes, paths, train, writers
from jaxvision import workdir as workdir_lib

MODES = ('train', 'eval', 'sample', 'explain')


def _fail(message: str) -> None:
  """Prints `error: message` and exits with the bad-input code (2)."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(errors.EXIT_BAD_INPUT)


def config_arg_of(argv) -> str | None:
  """The value of --config in argv (either spelling), or None.

  Args:
    argv: the command line, sys.argv style.

  Returns:
    'path.py[:preset]', or None when there is no --config.
  """
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def load_config_file(config_arg: str):
  """get_config(preset) of 'path.py[:preset]', or a one-line reason why it cannot be had.

  Args:
    config_arg: the --config value.

  Returns:
    (config, None), or (None, a one-line reason: no such file, or the error the file raised).
  """
  path, _, preset = config_arg.partition(':')
  if not os.path.isfile(path):
    where = os.path.dirname(path) or '.'
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(where, '*.py')))
    known = f'; {where}/ has {", ".join(names)}' if names else ''
    return None, f'--config {path}: no such file{known}'
  try:
    return config_lib.from_file(path, preset), None
  except Exception as e:
    first = (str(e).strip().splitlines() or [''])[0]
    return None, f'--config {config_arg}: {type(e).__name__}: {first}'


def unknown_override(argv, config) -> str | None:
  """The first --config.a.b=... whose key does not exist, with its siblings.

  Args:
    argv: the command line.
    config: the config the overrides apply to.

  Returns:
    A one-line message naming the unknown key and the keys at its level, or None.
  """
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.') :].split('=', 1)[0].split('.')
    node = config
    for i, part in enumerate(path):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in keys:
        where = '.'.join(path[:i]) or 'the top level'
        return (
          f'--config.{".".join(path)}: unknown config key {part!r}; keys at {where}: '
          f'{", ".join(sorted(keys))}'
        )
      node = node[part]
  return None


def parse_flags(argv):
  """absl flag parsing whose errors are one line on stderr and exit code 2.

  Args:
    argv: the command line.

  Returns:
    The arguments absl leaves ([program name] when there are no stray ones).
  """
  config_arg = config_arg_of(argv)
  config = None
  if config_arg:
    config, problem = load_config_file(config_arg)
    if problem:
      _fail(problem)
  try:
    rest = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    if config is not None:
      message = unknown_override(argv, config) or message
    _fail(message.replace('flag --config.', '--config.'))
  if len(rest) > 1:
    _fail(
      f'unexpected argument {rest[1]!r}; flags look like --config.train.steps=100 '
      f'(run.py --help lists them)'
    )
  return rest


def _cluster_environment() -> bool:
  """A multi-process job whose environment jax.distributed can read: a SLURM job of several tasks
  or a TPU pod slice of several hosts."""
  return int(os.environ.get('SLURM_NTASKS', '1') or 1) > 1 or ',' in os.environ.get(
    'TPU_WORKER_HOSTNAMES', ''
  )


def init_distributed(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
  """jax.distributed.initialize, before any other JAX call, when this is one process of many: the
  three flags together, or a cluster environment. A single-process run does nothing. Exits
  with code 2 when only some of the three flags are given or process_id is out of range.

  Args:
    coordinator_address: --coordinator_address, or None.
    num_processes: --num_processes, or None.
    process_id: --process_id, or None.
  """
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    _fail(
      '--coordinator_address, --num_processes and --process_id go together: give all three '
      '(or none in a SLURM job or on a TPU pod slice)'
    )
  if not (all(given) or _cluster_environment()):
    return
  if all(given) and not 0 <= process_id < num_processes:
    _fail(f'--process_id={process_id} must be in [0, --num_processes={num_processes})')
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU devices across processes
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def config_name(config_flag) -> str:
  """'configs/cnn.py:smoke' -> 'cnn_smoke' (the default workdir is runs/<this>).

  Args:
    config_flag: the --config flag holder.

  Returns:
    The config file's stem, with '_<preset>' when a preset is given.
  """
  path = config_flags.get_config_filename(config_flag)
  stem, _, preset = path.partition(':')
  name = os.path.splitext(os.path.basename(stem))[0]
  return f'{name}_{preset}' if preset else name


def _traceback_file(workdir: str | None) -> str:
  """Writes the current exception's traceback to WORKDIR/error.log (appended, with the time and
  command), or to a temporary file when the workdir cannot take it; returns where it went."""
  text = (
    f'--- {datetime.datetime.now().isoformat(timespec="seconds")} {" ".join(sys.argv)}\n'
    f'{traceback.format_exc()}\n'
  )
  if workdir:
    try:
      path = epath.Path(workdir)
      paths.makedirs(path)
      log = path / 'error.log'
      writers.append_text(log, text)  # gs://: the object rewritten whole (GCS cannot append)
      return os.fspath(log)
    except Exception:
      pass
  fd, log = tempfile.mkstemp(prefix='jaxvision-error-', suffix='.log')
  with os.fdopen(fd, 'w') as f:
    f.write(text)
  return log


def _one_line(e: BaseException) -> str:
  """The first line of an exception's message (500 characters at most), or its type's name."""
  return ((str(e).strip().splitlines() or [''])[0][:500]) or type(e).__name__


def _drop_orbax_errors(record) -> bool:
  """A logging filter: False for Orbax's ERROR records (the failures it then raises)."""
  return not (record.levelno == std_logging.ERROR and f'{os.sep}orbax{os.sep}' in record.pathname)


def run(config, workdir: str, mode: str) -> int:
  """Runs `mode` on `workdir` (as typed: resolved here, once); returns the exit code.

  Every exception ends as one line on stderr: a `jaxvision.errors.Error` with its own exit code,
  Ctrl-C with 130, anything else with 1 and its traceback in WORKDIR/error.log.

  Args:
    config: the experiment config.
    workdir: --workdir as typed.
    mode: one of `MODES`.

  Returns:
    The process's exit code: 0 after printing the metrics as 'key=value' on stdout.
  """
  if not flags.FLAGS['verbosity'].present:  # orbax's INFO chatter off; --verbosity=0 brings it back
    logging.set_verbosity(logging.WARNING)
  # Reading an unreadable checkpoint step leaves Orbax's asyncio tasks with errors that asyncio
  # prints when they are garbage-collected, dozens of lines each; the loop reports the step once.
  std_logging.getLogger('asyncio').setLevel(std_logging.CRITICAL)
  # gcsfs logs each failed request with its traceback before it retries or falls back (e.g. to
  # copy + delete where a server lacks GCS's moveTo), and Orbax each failed background write
  # before wait_until_finished raises it; what finally fails is reported once, below.
  std_logging.getLogger('gcsfs').setLevel(std_logging.CRITICAL)
  std_logging.getLogger('absl').addFilter(_drop_orbax_errors)
  resolved = None
  try:
    resolved = workdir_lib.resolve(workdir)
    run_mode = {
      'train': train.train_and_evaluate,
      'eval': modes.evaluate,
      'sample': modes.sample,
      'explain': modes.explain,
    }[mode]
    metrics = run_mode(config, resolved)
  except errors.Preempted as e:
    print(_one_line(e), file=sys.stderr)
    return e.exit_code
  except errors.Error as e:
    print(f'error: {_one_line(e)}', file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print(
      'error: interrupted by Ctrl-C; the checkpoints saved before are intact: run the same '
      'command again to resume from the last one',
      file=sys.stderr,
    )
    return errors.EXIT_INTERRUPTED
  except Exception as e:
    log = _traceback_file(resolved)
    print(
      f'error: {type(e).__name__}: {_one_line(e)} (the full traceback is in {log})', file=sys.stderr
    )
    return errors.EXIT_UNEXPECTED
  print(
    ' '.join(f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}' for k, v in metrics.items())
  )
  return 0
