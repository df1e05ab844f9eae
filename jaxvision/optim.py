"""Optimizers and learning-rate schedules from `config.optim`, all optax; freezing parameters.

`freeze` patterns (and `init_from.include/exclude`, jaxvision/transfer.py) are regexes matched
with re.fullmatch against '/'-joined parameter paths such as 'Conv_0/kernel'.
"""

import re

import jax
import optax

from jaxvision.errors import ConfigError


def path_str(path) -> str:
  """A PyTree path as the patterns see it.

  Args:
    path: a path from `jax.tree_util.tree_flatten_with_path`.

  Returns:
    The '/'-joined keys, e.g. 'Conv_0/kernel'.
  """
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def compile_patterns(patterns, key: str) -> list:
  """Compiles a config's regexes.

  Args:
    patterns: regex strings.
    key: the config key they come from, for the message.

  Returns:
    The compiled patterns.

  Raises:
    ConfigError: a pattern is not a valid regex.
  """
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise ConfigError(f'{key} has a bad regex {p!r} ({e}); paths look like Conv_0/kernel') from e
  return out


def matches(patterns, path: str) -> bool:
  """Whether one of the compiled patterns matches the whole of `path`.

  Args:
    patterns: compiled regexes (`compile_patterns`).
    path: a '/'-joined parameter path.

  Returns:
    True if one `fullmatch`es.
  """
  return any(p.fullmatch(path) for p in patterns)


def frozen_mask(params, patterns):
  """True for every parameter leaf whose path matches one of the patterns.

  Args:
    params: a parameter PyTree (or its ShapeDtypeStructs).
    patterns: compiled regexes.

  Returns:
    A PyTree of bools of the structure of `params`.
  """
  return jax.tree_util.tree_map_with_path(lambda p, _: matches(patterns, path_str(p)), params)


def schedule(optim_config, steps: int) -> optax.Schedule:
  """The learning-rate schedule of config.optim.

  Args:
    optim_config: config.optim (lr, schedule, warmup_frac).
    steps: train.steps, the schedule's length.

  Returns:
    step -> learning rate: 'constant', 'cosine' (to 0), 'warmup_cosine' (linear warmup over
    warmup_frac of the steps, then cosine to 0) or 'onecycle' (warmup_frac, default 0.3).

  Raises:
    ValueError: an unknown schedule (`config.validate` refuses it first).
  """
  lr, name = optim_config.lr, optim_config.schedule
  warmup = int(optim_config.warmup_frac * steps)
  if name == 'constant':
    return optax.constant_schedule(lr)
  if name == 'cosine':
    return optax.cosine_decay_schedule(lr, steps)
  if name == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, steps, end_value=0.0)
  if name == 'onecycle':
    return optax.cosine_onecycle_schedule(steps, lr, pct_start=optim_config.warmup_frac or 0.3)
  raise ValueError(f'optim.schedule={name!r}')


def make(
  optim_config, steps: int, freeze=()
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation and its learning-rate schedule; parameters whose path matches a
  regex of `freeze` get zero updates (see jaxvision/transfer.py).

  Args:
    optim_config: config.optim.
    steps: train.steps.
    freeze: regexes of frozen parameter paths.

  Returns:
    (tx, schedule): the optimizer (with weight decay, gradient clipping and freezing as the
    config asks) and its learning-rate schedule.

  Raises:
    ValueError: an unknown optimizer (`config.validate` refuses it first).
    ConfigError: a bad `freeze` regex.
  """
  lr = schedule(optim_config, steps)
  c = optim_config
  if c.name == 'adam':
    tx = optax.adam(lr, b1=c.b1, b2=c.b2)
  elif c.name == 'adamw':
    tx = optax.adamw(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)
  elif c.name == 'sgd':
    tx = optax.sgd(lr)
  elif c.name == 'momentum':
    tx = optax.sgd(lr, momentum=c.momentum, nesterov=True)
  else:
    raise ValueError(f'optim.name={c.name!r}')
  if c.name in ('sgd', 'momentum') and c.weight_decay:
    tx = optax.chain(optax.add_decayed_weights(c.weight_decay), tx)
  if c.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip), tx)
  if freeze:
    patterns = compile_patterns(freeze, 'freeze')
    labels = lambda params: jax.tree.map(
      lambda f: 'frozen' if f else 'trained', frozen_mask(params, patterns)
    )
    tx = optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx, lr
