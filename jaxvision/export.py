"""Exports a classifier run as the domain feature network of the generative metrics.

python run.py --config configs/cnn.py:domain --workdir WORKDIR
python -m jaxvision.export WORKDIR        # writes jaxvision/assets/mnist10k_domain_cnn.{npz,json}
"""

import json
import os
import sys

import ml_collections
from etils import epath

from jaxvision import checkpoint, experiment, paths, tasks, writers
from jaxvision import config as config_lib
from jaxvision import workdir as workdir_lib
from jaxvision.evaluate import generative


def export_domain_features(workdir: str, path: str = generative.DOMAIN_WEIGHTS) -> dict:
  """Writes the latest checkpoint of a classifier run as the feature network.

  Args:
    workdir: a finished `configs/cnn.py:domain` run.
    path: where the .npz of its variables goes; its provenance goes to the .json beside it.

  Returns:
    The provenance written to the .json: command, model fields, step, params sha256, test metrics.

  Raises:
    errors.BadInput: the run's config or workdir cannot be used (see `experiment.setup`), e.g.
      WorkdirError when it holds no checkpoint.
  """
  workdir = workdir_lib.resolve(workdir)  # Orbax restores from absolute paths only
  info = writers.read_json(epath.Path(workdir) / 'run.json')
  # the run's config over today's defaults: keys added since keep their defaults; the model's
  # fields are the run's own (the defaults hold only the model's name)
  config = config_lib.merge_known(tasks.base_config(info['config']['task']), info['config'])
  config.model = ml_collections.ConfigDict(
    {k: tuple(v) if isinstance(v, list) else v for k, v in info['config']['model'].items()}
  )
  exp = experiment.setup(config, workdir, restoring=True)
  step, state = experiment.restore_latest(exp)
  variables = {'params': state.params, 'batch_stats': state.batch_stats}
  path = paths.resolve(path)  # local or gs://
  paths.makedirs(epath.Path(path).parent)
  writers.save_npz(path, **generative.flatten_variables(variables))
  model = {k: v for k, v in config.model.to_dict().items() if k not in ('name', 'conv_impl')}
  model = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
  meta = {
    'made_by': 'python run.py --config configs/cnn.py:domain --workdir WORKDIR; '
    'python -m jaxvision.export WORKDIR',
    'model': model,
    'step': step,
    'params_sha256': checkpoint.params_sha256(state.params),
    'test_metrics': info.get('final_metrics'),
    'data': info['data'],
    'git_commit': info['git_commit'],
  }
  writers.write_text(os.path.splitext(path)[0] + '.json', json.dumps(meta, indent=1))
  return meta


if __name__ == '__main__':
  print(json.dumps(export_domain_features(sys.argv[1]), indent=1))
