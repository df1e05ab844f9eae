"""The task registry: `config.task` names a `Task` (jaxvision/tasks/task.py).

Adding a task is one module that defines `TASK = Task(...)` and one line below.
"""

import ml_collections

from jaxvision import config as config_lib
from jaxvision import models
from jaxvision.errors import ConfigError
from jaxvision.tasks import classification, diffusion, gan, vae
from jaxvision.tasks.task import Task

TASKS: dict[str, Task] = {
  t.name: t for t in (classification.TASK, gan.TASK, vae.TASK, diffusion.TASK)
}


def get(name: str) -> Task:
  """The task called `name`.

  Args:
    name: config.task.

  Returns:
    The registered `Task`.

  Raises:
    ConfigError: there is no such task (the message lists them).
  """
  if name not in TASKS:
    raise ConfigError(f'task={name!r} is not allowed; use one of: {", ".join(sorted(TASKS))}')
  return TASKS[name]


def base_config(name: str) -> ml_collections.ConfigDict:
  """The keys every run shares (`config.base()`) and those of task `name`, with their defaults:
  what a config file starts from.

  Args:
    name: a task's name.

  Returns:
    A new ConfigDict with `task` = name.

  Raises:
    ConfigError: there is no such task.
  """
  c = config_lib.base()
  c.task = name
  for key, value in get(name).config().items():
    c[key] = value
  return c


def validate(config) -> None:
  """Every check of a config that needs no data and no devices: the shared keys, the model's
  name and fields, and the task's own keys.

  Args:
    config: an experiment config.

  Raises:
    ConfigError: (one line) the first key whose value cannot work.
  """
  config_lib.validate(config)
  task = get(config.task)
  missing = [key for key in _keys(task.config()) if not config_lib.has(config, key)]
  if missing:
    raise ConfigError(
      f'task={config.task!r} needs its keys ({", ".join(missing[:4])}, ...), which '
      f'this config lacks; start the config from tasks.base_config({config.task!r})'
    )
  config_lib.choice(config, 'model.name', sorted(models.MODELS))
  models.check_kwargs(config.model)
  task.validate(config)


def _keys(config, prefix: str = '') -> list[str]:
  """The dotted keys of the leaves of a ConfigDict."""
  out = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out += _keys(value, f'{prefix}{key}.')
    else:
      out.append(prefix + key)
  return out
