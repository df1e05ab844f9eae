"""Transfer learning: start from another run's parameters or public weights; freeze parameter
subtrees.

  config.init_from.path     a workdir (its latest checkpoint), a checkpoint step dir, or its
                            state dir; or a weights file: a torchvision ResNet (.pth), a timm
                            ViT (.safetensors) or a big_vision ViT (.npz), converted by
                            jaxvision/pretrained for the configured model
  config.init_from.include  regexes over parameter paths ('Conv_0/kernel', 'BatchNorm_1/scale',
                            ...); default ('.*',): everything
  config.init_from.exclude  regexes of paths to leave freshly initialised (e.g. ('Dense_1/.*',):
                            the head)
  config.freeze             regexes of parameter paths that get no updates
                            (optax.multi_transform with set_to_zero); a frozen BatchNorm also
                            keeps its statistics

A path is matched with re.fullmatch. An included leaf whose shape differs from the new
model's (a head for another number of classes) keeps its fresh initialisation, and the run
prints one line naming those leaves. An included path that the checkpoint lacks is an error.
A weights file goes through the same merge after its conversion; run.json's init_from then
records the file, its format and its sha256.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util

from jaxvision import checkpoint, models, paths, pretrained
from jaxvision.errors import ConfigError
from jaxvision.optim import compile_patterns, frozen_mask, matches, path_str


def check_freeze(config, abstract_params) -> None:
  """config.freeze must be valid regexes that match at least one parameter.

  Args:
    config: the experiment config (freeze).
    abstract_params: the model's parameters (or their ShapeDtypeStructs).

  Raises:
    ConfigError: (one line) a bad regex, or patterns that match no parameter.
  """
  patterns = compile_patterns(config.freeze, 'freeze')
  if patterns and not any(jax.tree.leaves(frozen_mask(abstract_params, patterns))):
    paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(abstract_params)[0]]
    raise ConfigError(
      f'freeze={tuple(config.freeze)} matches no parameter; paths are: {", ".join(paths[:12])}'
    )


def _state_dir(path: str) -> str:
  """The `state` item of the checkpoint that `path` names: a workdir (its latest step), a
  checkpoint step directory, or that step's `state` directory; ConfigError if it holds none."""
  path = paths.resolve(path)  # local or gs://
  root = epath.Path(path)
  if not root.exists():
    raise ConfigError(
      f'init_from.path={path!r} does not exist; give a workdir of a finished run, a checkpoint '
      f'step directory or a weights file ({", ".join(pretrained.EXTENSIONS)})'
    )
  steps = checkpoint.steps_in(os.fspath(root / 'checkpoints'))
  if steps:  # a workdir: its latest complete step, as Orbax lists them
    return os.fspath(root / 'checkpoints' / str(steps[-1]) / 'state')
  if (root / 'state').is_dir():
    return os.fspath(root / 'state')
  if (root / '_METADATA').exists():
    return path
  raise ConfigError(
    f'init_from.path={path!r} holds no checkpoint; give a workdir of a finished run, '
    f'a checkpoint step directory or a weights file ({", ".join(pretrained.EXTENSIONS)})'
  )


def check_source(config) -> None:
  """Checks init_from before any compute.

  Args:
    config: the experiment config (init_from.*).

  Raises:
    ConfigError: a bad include/exclude regex, an init_from.path that holds no checkpoint, or a
      file of an unknown extension.
  """
  compile_patterns(config.init_from.include, 'init_from.include')
  compile_patterns(config.init_from.exclude, 'init_from.exclude')
  if pretrained.is_weights_file(config.init_from.path):
    pretrained.check_path(config.init_from.path)
  else:
    _state_dir(config.init_from.path)


def _flat(tree) -> dict:
  """{path_str name: leaf} of a PyTree ({} for None)."""
  return {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(tree or {})[0]}


def _read_source(config, params, batch_stats):
  """({collection: {name: array}}, info, source params tree) of init_from.path: a workdir's
  checkpoint, or a weights file converted for the model (its notes printed)."""
  path = config.init_from.path
  if not pretrained.is_weights_file(path):
    state_dir = _state_dir(path)
    source = ocp.StandardCheckpointer().restore(state_dir)
    sources = {c: _flat(source.get(c)) for c in ('params', 'batch_stats')}
    return sources, {'path': path, 'state_dir': state_dir}, source.get('params')
  model = {**models.defaults(config.model.name), **config.model.to_dict()}
  shapes = lambda tree: {k: tuple(v.shape) for k, v in _flat(tree).items()}
  target = {'params': shapes(params), 'batch_stats': shapes(batch_stats)}
  converted = pretrained.load(path, model, target)
  for note in converted.notes:
    print(f'init_from: {note}')
  info = {
    'path': path,
    'file': paths.resolve(path),
    'format': converted.format,
    'file_sha256': converted.sha256,
  }
  return (
    converted.variables,
    info,
    traverse_util.unflatten_dict(converted.variables['params'], sep='/'),
  )


def load_pretrained(config, params, batch_stats):
  """(params, batch_stats, info) with the included leaves taken from config.init_from.path.

  Args:
    config: the experiment config (init_from.*).
    params: the freshly initialised parameters.
    batch_stats: the freshly initialised BatchNorm statistics ({} if none); a statistic follows
      the include/exclude decision of its layer's `scale`.

  Returns:
    (params, batch_stats, info): the merged trees (leaves of another shape keep their fresh
    values) and what run.json records: path, counts, re-initialised leaves and the source
    params' sha256; with state_dir for a checkpoint, or file, format and file_sha256 for a
    weights file.

  Raises:
    ConfigError: the checkpoint lacks an included leaf, or no leaf was loaded; a weights file that
      cannot be read or does not fit the model (see jaxvision.pretrained.load).
  """
  include = compile_patterns(config.init_from.include, 'init_from.include')
  exclude = compile_patterns(config.init_from.exclude, 'init_from.exclude')
  sources, source_info, source_params = _read_source(config, params, batch_stats)
  loaded, reinit, missing = [], [], []

  def merge(tree, src, collection):
    def pick(path, leaf):
      name = path_str(path)
      owner = name.rsplit('/', 1)[0] + '/scale' if collection == 'batch_stats' else name
      if not matches(include, owner) or matches(exclude, owner):
        return leaf
      if name not in src:
        missing.append(f'{collection}/{name}')
        return leaf
      if tuple(src[name].shape) != tuple(leaf.shape):
        reinit.append(f'{collection}/{name}')
        return leaf
      loaded.append(f'{collection}/{name}')
      return jnp.asarray(np.asarray(src[name]), leaf.dtype)

    return jax.tree_util.tree_map_with_path(pick, tree)

  params = merge(params, sources['params'], 'params')
  batch_stats = merge(batch_stats, sources.get('batch_stats', {}), 'batch_stats')
  if missing:
    raise ConfigError(
      f'init_from.path={config.init_from.path!r} lacks {", ".join(missing[:6])}; '
      f'leave them out with --config.init_from.exclude'
    )
  if not loaded:
    raise ConfigError(
      f'init_from: no parameter of {config.init_from.path!r} matches the new model '
      f'(include={tuple(config.init_from.include)}, exclude={tuple(config.init_from.exclude)})'
    )
  if reinit:
    print(f'init_from: re-initialised (shape differs): {", ".join(reinit)}')
  info = {
    **source_info,
    'loaded': len(loaded),
    'reinitialised': reinit,
    'source_params_sha256': checkpoint.params_sha256(source_params),
  }
  return params, batch_stats, info
