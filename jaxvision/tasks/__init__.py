"""Task registry: `config.task` names a module with pure `init`, `train_step`
and `eval_step` (and `sample` for generative tasks). Optional hooks the loop
and `config.validate` use when a task has them: `validate(config)`,
`final_eval_step(state, batch)` (the eval at the last step and in eval mode,
for expensive metrics) and `sample_images(state, config, eval_batch)` (uint8
grids written at every eval)."""
from jaxvision.tasks import classification, gan, vae

TASKS = {
    'classification': classification,
    'gan': gan,
    'vae': vae,
}


def get(name: str):
  return TASKS[name]
