"""Task registry: `config.task` names a module with pure `init`, `train_step`
and `eval_step` (and `sample` for generative tasks)."""
from jaxvision.tasks import classification

TASKS = {
    'classification': classification,
}


def get(name: str):
  return TASKS[name]
