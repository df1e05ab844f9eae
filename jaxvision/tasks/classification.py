"""Image (and token, and frame-sequence) classification as pure functions over an explicit state.

    state = init(config, rng, sample_batch)
    state, metrics = train_step(state, batch, split)   # batch: image f32[B,H,W,C], label i32[B]
    sums = eval_step(state, batch)                     # batch also has mask f32[B]; summed metrics

Everything that changes lives in `TrainState`; the model, the optax
transformation and the step's fixed options are static fields. Randomness
(augmentation, dropout) comes from `fold_in(state.rng, state.step)`, so a
step is a function of (state, batch) alone. Under the pmap path `split`
describes the batch layout and makes the gradients and metrics global-batch
means, the BatchNorm statistics global and the random draws those of the jit
path (see `parallel.BatchSplit`); under jit it is None. With `optim.accum_steps`
= k > 1 the step runs k microbatches of the augmented batch and makes one update
from their mean gradient (`accumulate.accumulate`: dropout keys per microbatch,
BatchNorm per microbatch).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from jaxvision import config as config_lib
from jaxvision import models, optim, parallel
from jaxvision.data import augment
from jaxvision.tasks.accumulate import accumulate
from jaxvision.tasks.task import Task, check_batch


def config() -> ml_collections.ConfigDict:
  """The keys classification adds to the shared ones.

  Returns:
    A ConfigDict of `loss.label_smoothing` and `explain.n` / `explain.steps` (--mode explain).
  """
  c = ml_collections.ConfigDict()
  c.loss = ml_collections.ConfigDict({'label_smoothing': 0.0})
  c.explain = ml_collections.ConfigDict(
    {
      'n': 16,  # --mode explain: test images explained
      'steps': 512,  # integrated-gradients intervals (512: completeness error < 1 % on the CNN)
    }
  )
  return c


def validate(config) -> None:
  """Checks classification's own keys.

  Args:
    config: a classification config.

  Raises:
    ConfigError: loss.label_smoothing outside [0, 1), or explain.n or explain.steps below 1.
  """
  config_lib.check_ranges(
    config,
    {
      'loss.label_smoothing': config_lib.FRACTION,
      'explain.n': config_lib.AT_LEAST_1,
      'explain.steps': config_lib.AT_LEAST_1,
    },
  )


@dataclasses.dataclass(frozen=True)
class ClassifierOptions:
  """The train step's fixed options, from the config (static: part of the compiled step)."""

  augment: str = 'none'
  shift: int = 2
  fill: float = 0.0  # value of padded pixels: the background
  label_smoothing: float = 0.0
  freeze: tuple[str, ...] = ()  # regexes of frozen parameter paths (their BatchNorm stats stay too)
  lr: Any = None  # the learning-rate schedule, logged as train/lr
  accum_steps: int = 1  # microbatches per update (optim.accum_steps)


@struct.dataclass
class TrainState:
  """A classifier's state: the arrays that change (pytree leaves) and the static parts.

  Attributes:
    step: i32[] steps taken.
    params: the model's parameters.
    batch_stats: its BatchNorm statistics ({} without BatchNorm).
    opt_state: the optimizer's state.
    rng: the key that `fold_in(rng, step)` makes each step's keys from.
    model: the Flax module (static).
    tx: the optax transformation (static).
    opts: the step's options (static).
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  model: nn.Module = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  opts: ClassifierOptions = struct.field(pytree_node=False)

  def variables(self, params=None):
    """The model's variables.

    Args:
      params: parameters to use in place of the state's (the ones being differentiated).

    Returns:
      {'params', 'batch_stats'} for `model.apply`.
    """
    return {'params': self.params if params is None else params, 'batch_stats': self.batch_stats}


def init(config, rng, sample_batch) -> TrainState:
  """The initial state.

  Args:
    config: the experiment config.
    rng: the run's key (config.seed): it initialises the model and seeds the state's key.
    sample_batch: a batch of one example, for the input shape.

  Returns:
    The TrainState at step 0.
  """
  model = models.get(config.model, config.dtype)
  tx, lr = optim.make(config.optim, config.train.steps, tuple(config.freeze))
  opts = ClassifierOptions(
    augment=config.data.augment,
    shift=config.data.shift,
    fill=-1.0 if config.data.scale == 'minus_one_one' else 0.0,
    label_smoothing=config.loss.label_smoothing,
    freeze=tuple(config.freeze),
    lr=lr,
    accum_steps=int(config.optim.accum_steps),
  )
  init_rng, state_rng = jax.random.split(rng)
  variables = models.init(
    model, {'params': init_rng, 'dropout': init_rng}, _inputs(sample_batch), train=False
  )
  params = variables['params']
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get('batch_stats', {}),
    opt_state=tx.init(params),
    rng=state_rng,
    model=model,
    tx=tx,
    opts=opts,
  )


def _inputs(batch):
  """The model input: token ids [B, L], images [B, H, W, C] or frame sequences [B, T, H, W, C]."""
  return batch['tokens'] if 'tokens' in batch else batch['image']


def _check_batch(batch) -> None:
  """Token ids of rank 2, or images of rank 4 or frame sequences of rank 5, one label each."""
  check_batch(_inputs(batch), batch['label'], (2,) if 'tokens' in batch else (4, 5))


def train_step(
  state: TrainState, batch, split: parallel.BatchSplit | None = None
) -> tuple[TrainState, dict]:
  """One update on `batch`.

  Args:
    state: the TrainState.
    batch: {'image' f32[B, ...] or 'tokens' i32[B, L], 'label' i32[B]}.
    split: the pmap path's batch layout (None under jit).

  Returns:
    (the next state, {'loss', 'accuracy', 'grad_norm', 'lr'}): f32[] batch means of the loss
    and accuracy, the global norm of the gradients, the step's learning rate (with
    opts.accum_steps > 1: over its microbatches, see `accumulate.accumulate`).
  """
  _check_batch(batch)
  opts = state.opts
  aug_rng, dropout_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  x = _inputs(batch)
  if 'image' in batch:  # augmentation is for pixels only
    x = augment.apply(opts.augment, aug_rng, x, opts.shift, opts.fill, split)
  model = state.model if split is None else state.model.clone(batch_split=split)

  def loss_fn(params, rows, rng, batch_stats):
    logits, updates = model.apply(
      {'params': params, 'batch_stats': batch_stats},
      rows['x'],
      train=True,
      rngs={'dropout': rng},
      mutable=['batch_stats'],
    )
    targets = optax.smooth_labels(
      jax.nn.one_hot(rows['label'], logits.shape[-1]), opts.label_smoothing
    )
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, -1) == rows['label'])
    return loss, ({'loss': loss, 'accuracy': accuracy}, updates.get('batch_stats', batch_stats))

  grads, metrics, batch_stats = accumulate(
    loss_fn,
    state.params,
    {'x': x, 'label': batch['label']},
    opts.accum_steps,
    dropout_rng,
    state.batch_stats,
  )
  grads = parallel.batch_mean(split, grads)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  if opts.freeze:  # a frozen BatchNorm keeps its statistics as well as its scale and bias
    patterns = optim.compile_patterns(opts.freeze, 'freeze')
    batch_stats = jax.tree_util.tree_map_with_path(
      lambda p, new, old: (
        old if optim.matches(patterns, optim.path_str(p[:-1]) + '/scale') else new
      ),
      batch_stats,
      state.batch_stats,
    )
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, param_updates),
    batch_stats=batch_stats,
    opt_state=opt_state,
  )
  metrics = parallel.batch_mean(split, metrics)
  metrics.update(grad_norm=optax.global_norm(grads), lr=opts.lr(state.step))
  return new_state, metrics


def eval_step(state: TrainState, batch) -> dict:
  """Sums over the batch's real rows (`mask` 1) of loss and correct predictions, and `count`;
  the loop divides by the count.

  Args:
    state: the TrainState.
    batch: {'image' f32[B, ...] or 'tokens' i32[B, L], 'label' i32[B], 'mask' f32[B]}.

  Returns:
    {'loss', 'accuracy', 'count'}: f32[] sums over the rows whose mask is 1 (label smoothing is
    not applied here).
  """
  _check_batch(batch)
  logits = state.model.apply(state.variables(), _inputs(batch), train=False)
  mask = batch['mask']
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch['label'])
  correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
  return {'loss': jnp.sum(loss * mask), 'accuracy': jnp.sum(correct * mask), 'count': jnp.sum(mask)}


TASK = Task(
  name='classification',
  config=config,
  validate=validate,
  init=init,
  train_step=train_step,
  eval_step=eval_step,
  one_optimizer=True,
)
