"""jaxvision command line: python run.py --config configs/cnn.py[:preset] [--workdir DIR] [--mode train|eval|sample|explain]

Overrides: --config.optim.lr=0.01 --config.train.steps=100 ...
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file[:preset].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<config name>).')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample', 'explain'], 'What to do.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'Multi-host: host:port of process 0 (jax.distributed). Not needed on a '
                                   'TPU pod slice or in a SLURM job, whose environment says it.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: how many processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: this process, 0 ... num_processes-1.')


def _parse(argv):
  from jaxvision import cli  # pylint: disable=g-import-not-at-top
  return cli.parse_flags(argv)


def main(argv):
  from jaxvision import cli  # pylint: disable=g-import-not-at-top
  del argv
  cli.init_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)  # before any JAX
  workdir = _WORKDIR.value or os.path.join('runs', cli.config_name(flags.FLAGS['config']))
  sys.exit(cli.run(_CONFIG.value, workdir, _MODE.value))


if __name__ == '__main__':
  flags.mark_flags_as_required(['config'])
  app.run(main, flags_parser=_parse)
