"""What run.py needs besides its flags: one-line errors and the mode dispatch."""
import importlib.util
import os
import sys

from absl import flags, logging

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3  # a NaN/Inf train metric; the last good checkpoint is kept
EXIT_SAVE_FAILED = 4  # a checkpoint could not be written (disk full, unwritable); earlier steps intact
EXIT_PREEMPTED = 143  # 128 + SIGTERM, as if the signal had ended the process


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(EXIT_BAD_INPUT)


def _unknown_override(argv, config_arg: str) -> str | None:
  """Finds the first --config.a.b=... whose key does not exist, with its siblings."""
  path, _, preset = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location('_config_for_error', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(preset) if preset else module.get_config()
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0].split('.')
    node = config
    for i, part in enumerate(path):
      keys = list(node.keys()) if hasattr(node, 'keys') else []
      if part not in keys:
        where = '.'.join(path[:i]) or 'the top level'
        return (f'--config.{".".join(path)}: unknown config key {part!r}; keys at {where}: '
                f'{", ".join(sorted(keys))}')
      node = node[part]
  return None


def parse_flags(argv):
  """absl flag parsing whose errors are one line on stderr and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    config_arg = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
    if config_arg is None and '--config' in argv[:-1]:
      config_arg = argv[argv.index('--config') + 1]
    if config_arg:
      try:
        message = _unknown_override(argv, config_arg) or message
      except Exception:  # pylint: disable=broad-except
        pass  # keep absl's own message
    _fail(message.replace('flag --config.', '--config.'))


def _cluster_environment() -> bool:
  """A multi-process job whose environment jax.distributed can read: a SLURM job of several tasks
  or a TPU pod slice of several hosts."""
  return (int(os.environ.get('SLURM_NTASKS', '1') or 1) > 1
          or ',' in os.environ.get('TPU_WORKER_HOSTNAMES', ''))


def init_distributed(coordinator_address: str | None, num_processes: int | None,
                     process_id: int | None) -> None:
  """jax.distributed.initialize, before any other JAX call, when this is one process of many: the
  three flags together, or a cluster environment. A single-process run does nothing."""
  given = [v is not None for v in (coordinator_address, num_processes, process_id)]
  if any(given) and not all(given):
    _fail('--coordinator_address, --num_processes and --process_id go together: give all three '
          '(or none in a SLURM job or on a TPU pod slice)')
  if not (all(given) or _cluster_environment()):
    return
  if all(given) and not 0 <= process_id < num_processes:
    _fail(f'--process_id={process_id} must be in [0, --num_processes={num_processes})')
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU devices across processes
  jax.distributed.initialize(coordinator_address, num_processes, process_id)


def config_name(config_flag) -> str:
  """'configs/cnn.py:smoke' -> 'cnn_smoke' (the default workdir is runs/<this>)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path = config_flags.get_config_filename(config_flag)
  stem, _, preset = path.partition(':')
  name = os.path.splitext(os.path.basename(stem))[0]
  return f'{name}_{preset}' if preset else name


def run(config, workdir: str, mode: str) -> int:
  """Runs the mode; returns the exit code. Known bad input ends in one line."""
  from jaxvision import config as config_lib, parallel, train  # pylint: disable=g-import-not-at-top
  from jaxvision.data import pipeline  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS['verbosity'].present:  # orbax's INFO chatter off; --verbosity=0 brings it back
    logging.set_verbosity(logging.WARNING)
  from jaxvision import checkpoint  # pylint: disable=g-import-not-at-top
  one_line = (config_lib.ConfigError, pipeline.DataError, parallel.MeshError, train.WorkdirError)
  try:
    if mode == 'train':
      metrics = train.train_and_evaluate(config, workdir)
    elif mode == 'sample':
      metrics = train.sample(config, workdir)
    elif mode == 'explain':
      from jaxvision.evaluate import explain  # pylint: disable=g-import-not-at-top
      metrics = explain.explain(config, workdir)
    else:
      metrics = train.evaluate(config, workdir)
  except one_line as e:
    _fail(str(e))
  except train.Diverged as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_DIVERGED
  except checkpoint.SaveError as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_SAVE_FAILED
  except train.Preempted as e:
    print(str(e), file=sys.stderr)
    return EXIT_PREEMPTED
  print(' '.join(f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}' for k, v in metrics.items()))
  return 0
