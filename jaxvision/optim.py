"""Optimizers and learning-rate schedules from `config.optim`, all optax."""
import jax
import optax


def schedule(optim_config, steps: int) -> optax.Schedule:
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


def make(optim_config, steps: int, freeze=()) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax transformation and its learning-rate schedule; parameters whose path matches a
  regex of `freeze` get zero updates (see jaxvision/transfer.py)."""
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
    from jaxvision import transfer  # pylint: disable=g-import-not-at-top
    patterns = transfer.compile_patterns(freeze, 'freeze')
    labels = lambda params: jax.tree.map(lambda f: 'frozen' if f else 'trained',
                                         transfer.frozen_mask(params, patterns))
    tx = optax.multi_transform({'trained': tx, 'frozen': optax.set_to_zero()}, labels)
  return tx, lr
