"""Image classification as pure functions over an explicit state.

    state = init(config, rng, sample_batch)
    state, metrics = train_step(state, batch)   # batch: image f32[B,H,W,C], label i32[B]
    sums = eval_step(state, batch)              # batch also has mask f32[B]; summed metrics

Everything that changes lives in `TrainState`; the model, the optax
transformation and the step's fixed options are static fields. Randomness
(augmentation, dropout) comes from `fold_in(state.rng, state.step)`, so a
step is a function of (state, batch) alone. `parallel.batch_mean` makes the
gradients and metrics global-batch means under the pmap path (under jit they
are already).
"""
import dataclasses
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from jaxvision import models, optim, parallel, transfer
from jaxvision.data import augment


@dataclasses.dataclass(frozen=True)
class StepOptions:
  augment: str = 'none'
  shift: int = 2
  fill: float = 0.0  # value of padded pixels: the background
  image_size: int = 0  # output size of augment='inception_crop'
  label_smoothing: float = 0.0
  freeze: tuple[str, ...] = ()  # regexes of frozen parameter paths (their BatchNorm stats stay too)
  lr: Any = None  # the learning-rate schedule, logged as train/lr


@struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  model: nn.Module = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  opts: StepOptions = struct.field(pytree_node=False)

  def variables(self, params=None):
    return {'params': self.params if params is None else params, 'batch_stats': self.batch_stats}


def init(config, rng, sample_batch) -> TrainState:
  model = models.get(config.model)
  tx, lr = optim.make(config.optim, config.train.steps, tuple(config.freeze))
  opts = StepOptions(augment=config.data.augment, shift=config.data.shift,
                     fill=-1.0 if config.data.scale == 'minus_one_one' else 0.0,
                     image_size=config.data.image_size,
                     label_smoothing=config.loss.label_smoothing, freeze=tuple(config.freeze), lr=lr)
  init_rng, state_rng = jax.random.split(rng)
  variables = models.init(model, {'params': init_rng, 'dropout': init_rng}, _inputs(sample_batch),
                          train=False)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params),
                    rng=state_rng, model=model, tx=tx, opts=opts)


def _inputs(batch):
  """The model input: token ids [B, L], images [B, H, W, C] or frame sequences [B, T, H, W, C]."""
  return batch['tokens'] if 'tokens' in batch else batch['image']


def _check_batch(batch) -> None:
  x = _inputs(batch)
  chex.assert_rank(x, 2 if 'tokens' in batch else {4, 5})
  chex.assert_shape(batch['label'], x.shape[:1])


def train_step(state: TrainState, batch) -> tuple[TrainState, dict]:
  _check_batch(batch)
  opts = state.opts
  aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  x = _inputs(batch)
  if 'image' in batch:  # augmentation is for pixels only
    x = augment.apply(opts.augment, aug_rng, x, opts.shift, opts.fill, opts.image_size)

  def loss_fn(params):
    logits, updates = state.model.apply(state.variables(params), x, train=True,
                                        rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    targets = optax.smooth_labels(jax.nn.one_hot(batch['label'], logits.shape[-1]),
                                  opts.label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.batch_mean(grads)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  batch_stats = updates.get('batch_stats', state.batch_stats)
  if opts.freeze:  # a frozen BatchNorm keeps its statistics as well as its scale and bias
    patterns = transfer.compile_patterns(opts.freeze, 'freeze')
    batch_stats = jax.tree_util.tree_map_with_path(
        lambda p, new, old: old if transfer.matches(patterns, transfer.path_str(p[:-1]) + '/scale') else new,
        batch_stats, state.batch_stats)
  new_state = state.replace(step=state.step + 1, params=optax.apply_updates(state.params, param_updates),
                            batch_stats=batch_stats,
                            opt_state=opt_state)
  metrics = parallel.batch_mean({'loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == batch['label'])})
  metrics.update(grad_norm=optax.global_norm(grads), lr=opts.lr(state.step))
  return new_state, metrics


def eval_step(state: TrainState, batch) -> dict:
  """Sums over the batch's real rows; the loop divides by `count`."""
  _check_batch(batch)
  logits = state.model.apply(state.variables(), _inputs(batch), train=False)
  mask = batch['mask']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  return {'loss': jnp.sum(loss * mask), 'accuracy': jnp.sum(correct * mask), 'count': jnp.sum(mask)}
