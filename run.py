"""jaxvision's command line.

  python run.py --config configs/cnn.py[:preset] [--workdir DIR] [--mode train|eval|sample|explain]


Overrides: --config.optim.lr=0.01 --config.train.steps=100 ...
Exit codes: 0 done, 1 unexpected error (traceback in WORKDIR/error.log), 2 bad input, 3 diverged,
4 could not write, 130 Ctrl-C and 143 SIGTERM (each after saving the current step).
"""

import os
import sys

from jaxvision import hugepages

if __name__ == '__main__':
  hugepages.reexec()  # malloc on huge pages: before anything is imported or allocated

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from jaxvision import cli  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file[:preset].', lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  'workdir',
  None,
  'Run directory (default: runs/<config>[_<preset>] in the current '
  'directory); relative and ~/... paths work.',
)
_MODE = flags.DEFINE_enum('mode', 'train', list(cli.MODES), 'What to do.')
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address',
  None,
  'Multi-host: host:port of process 0 (jax.distributed). Not needed on a '
  'TPU pod slice or in a SLURM job, whose environment says it.',
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: how many processes.')
_PROCESS_ID = flags.DEFINE_integer(
  'process_id', None, 'Multi-host: this process, 0 ... num_processes-1.'
)


def main(argv):
  del argv  # parse_flags refuses leftovers
  cli.init_distributed(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value
  )  # before any JAX
  workdir = _WORKDIR.value or os.path.join('runs', cli.config_name(flags.FLAGS['config']))
  sys.exit(cli.run(_CONFIG.value, workdir, _MODE.value))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=cli.parse_flags)
