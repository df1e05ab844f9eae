"""Adversarial training as pure functions over an explicit state.

    state = init(config, rng, sample_batch)
    state, metrics = train_step(state, batch, split)   # image f32[B,H,W,C] in [-1, 1], label i32[B]
    sums = eval_step(state, batch)              # D on real test images and on as many fakes
    images = sample(state, rng, n, labels)      # f32[n,H,W,C] in [0, 1], from the EMA generator

One jitted step makes `gan.d_steps` discriminator updates, then one generator
update, each through its own optax transformation and state (Adam 2e-4,
b1 = 0.5 by default; `gan.g_lr` / `gan.d_lr` set them apart). Losses:
`gan.loss='bce'` — the minimax BCE objective for D and the non-saturating
-log D(G(z)) for G — or `'hinge'`. An exponential moving average of the
generator's parameters (`gan.ema_decay`) is kept in the state and used for
samples and metrics. With `model.info_codes` = K > 0 the GAN is an InfoGAN: G
also gets a uniform K-way code c, D's Q head predicts it, and both networks add
`gan.info_weight` x cross-entropy(Q(G(z, c)), c) to their losses (a lower
bound on the mutual information of c and the image). `gan.r1_gamma` > 0 adds
Mescheder et al.'s (2018) R1 penalty to D's loss, gamma / 2 x E ||grad_x D(x)||^2
on the real images. Randomness (latents, dropout) comes from
`fold_in(state.rng, state.step)`; under the pmap path the step's `split` draws
the latents through `parallel.batch_rows`, averages gradients and metrics by
`parallel.batch_mean` and goes to the models (BatchNorm axis, dropout rows; D on
[real; fake] sees two stacked batches), so the pmap path trains like the jit path.
`optim.accum_steps` = k > 1 makes every update from k microbatches (see `train_step`).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from jaxvision import config as config_lib
from jaxvision import grids, models, optim, parallel
from jaxvision.errors import ConfigError
from jaxvision.tasks.accumulate import accumulate
from jaxvision.tasks.task import (
  EVAL_SALT,
  Task,
  check_batch,
  generative_config,
  validate_generative,
)

LOSSES = ('bce', 'hinge')
_SAMPLE_SALT = 0x5A3
_COLS = 8
_STANDING_SALT = 0x57A7
_STANDING_BATCH = 2048


def config() -> ml_collections.ConfigDict:
  """The keys the GAN task adds to the shared ones.

  Returns:
    A ConfigDict of the `gan.*` keys and those of `generative_config`.
  """
  c = ml_collections.ConfigDict()
  c.gan = ml_collections.ConfigDict()
  c.gan.loss = 'bce'  # 'bce' (minimax D, non-saturating G) or 'hinge'
  c.gan.d_steps = 1  # discriminator updates per generator update
  c.gan.ema_decay = 0.999  # of the generator params used for samples and metrics
  c.gan.g_lr = 0.0  # 0 = optim.lr
  c.gan.d_lr = 0.0  # 0 = optim.lr
  c.gan.info_weight = 1.0  # InfoGAN (model.info_codes > 0): weight of the code's cross-entropy
  c.gan.r1_gamma = 0.0  # R1 penalty on D: gamma / 2 x E ||grad_x D(x_real)||^2; 0 = off
  c.update(generative_config())
  return c


@dataclasses.dataclass(frozen=True)
class GANOptions:
  """The train step's fixed options, from `gan.*` (static: part of the compiled step)."""

  loss: str = 'bce'
  d_steps: int = 1
  ema_decay: float = 0.999
  seed: int = 0
  g_lr: Any = None  # schedules, logged as train/g_lr and train/d_lr
  d_lr: Any = None
  info_weight: float = 1.0
  r1_gamma: float = 0.0
  accum_steps: int = 1  # microbatches per update (optim.accum_steps)


@struct.dataclass
class GANState:
  """A GAN's state: both networks, one optimizer state each, the EMA generator; the model,
  the two optax transformations and the options are static."""

  step: jax.Array
  params: Any  # {'generator': ..., 'discriminator': ...}
  batch_stats: Any  # the generator's BatchNorm statistics ({} for the MLP GAN)
  g_opt_state: Any
  d_opt_state: Any
  ema_params: Any  # moving average of params['generator']
  rng: jax.Array
  model: nn.Module = struct.field(pytree_node=False)
  g_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  d_tx: optax.GradientTransformation = struct.field(pytree_node=False)
  opts: GANOptions = struct.field(pytree_node=False)


def validate(config) -> None:
  """Checks the GAN task's own keys and the model it needs.

  Args:
    config: a GAN config.

  Raises:
    ConfigError: the model is not a GAN, data.scale is not minus_one_one, freeze or init_from
      is set, an InfoGAN is conditional or has no info_weight, data.clusters differs from
      model.num_classes, or a `gan.*` number is out of range.
  """
  gans = sorted(
    k for k, v in models.MODELS.items() if hasattr(v, 'generate') and hasattr(v, 'discriminate')
  )
  if config.model.name not in gans:
    raise ConfigError(
      f'model.name={config.model.name!r} is not a GAN; use one of: {", ".join(gans)}'
    )
  if config.data.scale != 'minus_one_one':
    raise ConfigError(
      f'task gan generates tanh images and needs data.scale=minus_one_one, '
      f'not {config.data.scale!r}'
    )
  if config.gan.loss not in LOSSES:
    raise ConfigError(
      f'gan.loss={config.gan.loss!r} is not allowed; use one of: {", ".join(LOSSES)}'
    )
  if config.freeze or config.init_from.path:
    raise ConfigError(
      'freeze and init_from are not supported by task gan (two optimizers); leave them unset'
    )
  if config.model.get('info_codes', 0) and (
    config.model.num_classes or config.gan.info_weight <= 0
  ):
    raise ConfigError(
      f'model.info_codes={config.model.info_codes} (InfoGAN) needs an unconditional '
      f'model and gan.info_weight > 0; set model.num_classes=0, gan.info_weight=1'
    )
  if config.data.clusters and config.model.num_classes != config.data.clusters:
    raise ConfigError(
      f'data.clusters={config.data.clusters} (a self-conditioned GAN) needs '
      f'model.num_classes={config.data.clusters}, not {config.model.num_classes}'
    )
  config_lib.check_ranges(
    config,
    {
      'gan.d_steps': config_lib.AT_LEAST_1,
      'gan.ema_decay': config_lib.FRACTION,
      'gan.g_lr': config_lib.AT_LEAST_0,
      'gan.d_lr': config_lib.AT_LEAST_0,
      'gan.info_weight': config_lib.AT_LEAST_0,
      'gan.r1_gamma': config_lib.AT_LEAST_0,
    },
    {
      'gan.g_lr': ' (0: optim.lr)',
      'gan.d_lr': ' (0: optim.lr)',
      'gan.r1_gamma': ' (0: no R1 penalty)',
    },
  )
  validate_generative(config)


def _txs(config):
  """Two optimizers from config.optim, with gan.g_lr / gan.d_lr (0 = optim.lr) as their rates."""
  out = []
  for lr in (config.gan.g_lr, config.gan.d_lr):
    optim_config = config.optim.copy_and_resolve_references()
    optim_config.lr = lr or config.optim.lr
    out.append(optim.make(optim_config, config.train.steps))
  return out


def init(config, rng, sample_batch) -> GANState:
  """The initial state: both networks, their optimizer states, the EMA generator.

  Args:
    config: the experiment config.
    rng: the run's key (config.seed).
    sample_batch: a batch of one example, for the image shape.

  Returns:
    The GANState at step 0.
  """
  model = models.get(config.model, config.dtype).clone(
    image_shape=tuple(sample_batch['image'].shape[1:])
  )
  (g_tx, g_lr), (d_tx, d_lr) = _txs(config)
  opts = GANOptions(
    loss=config.gan.loss,
    d_steps=int(config.gan.d_steps),
    ema_decay=float(config.gan.ema_decay),
    seed=int(config.seed),
    g_lr=g_lr,
    d_lr=d_lr,
    info_weight=float(config.gan.info_weight),
    r1_gamma=float(config.gan.r1_gamma),
    accum_steps=int(config.optim.accum_steps),
  )
  init_rng, state_rng = jax.random.split(rng)
  n = sample_batch['image'].shape[0]
  z = jnp.zeros((n, model.latents))
  y = jnp.zeros((n,), jnp.int32) if model.info_codes else _labels(model, sample_batch)
  variables = models.init(model, {'params': init_rng, 'dropout': init_rng}, z, y)
  params = variables['params']
  return GANState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables.get('batch_stats', {}),
    g_opt_state=g_tx.init(params['generator']),
    d_opt_state=d_tx.init(params['discriminator']),
    ema_params=params['generator'],
    rng=state_rng,
    model=model,
    g_tx=g_tx,
    d_tx=d_tx,
    opts=opts,
  )


def _labels(model, batch):
  """The batch's labels for a conditional model, else None."""
  return batch['label'] if model.num_classes else None


def _g_inputs(split, model, key, y, n: int):
  """G's second input: the labels of a conditional GAN, a uniform code of an InfoGAN, or None."""
  if not model.info_codes:
    return y
  draw = lambda s: jax.random.randint(jax.random.fold_in(key, 1), s, 0, model.info_codes)
  return parallel.batch_rows(split, draw, (n,))


def r1_penalty(discriminate, real) -> jax.Array:
  """E ||grad_x D(x)||^2 over the real images x (per image, summed over pixels).

  Args:
    discriminate: images [B, H, W, C] -> logits f32[B].
    real: the real images f32[B, H, W, C].

  Returns:
    f32[], the mean over the images of the squared gradient norm (without gamma / 2).
  """
  grads = jax.grad(lambda x: jnp.sum(discriminate(x)))(real)
  return jnp.mean(jnp.sum(jnp.square(grads).reshape(real.shape[0], -1), axis=-1))


def _code_loss(code_logits, codes) -> jax.Array:
  """InfoGAN's -E log Q(c | G(z, c)): the cross-entropy of the code head on the fakes."""
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(code_logits, codes))


def _check_batch(batch) -> None:
  """Images of rank 4, one label each."""
  check_batch(batch['image'], batch['label'])


# ------------------------------------------------------------------ losses


def d_loss(kind: str, real_logits, fake_logits) -> jax.Array:
  """D's loss on real and fake images.

  Args:
    kind: 'bce' (-log D(x) - log(1 - D(G(z)))) or 'hinge' (relu(1 - D(x)) + relu(1 + D(G(z)))).
    real_logits: D's logits f32[B] on real images.
    fake_logits: D's logits f32[B'] on generated images.

  Returns:
    f32[], the sum of the two batch means.
  """
  if kind == 'hinge':
    return jnp.mean(nn.relu(1.0 - real_logits)) + jnp.mean(nn.relu(1.0 + fake_logits))
  # BCE with targets 1 (real) and 0 (fake): -log D(x) - log(1 - D(G(z))).
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def g_loss(kind: str, fake_logits) -> jax.Array:
  """G's loss.

  Args:
    kind: 'bce' (the non-saturating -log D(G(z))) or 'hinge' (-D(G(z))).
    fake_logits: D's logits f32[B] on generated images.

  Returns:
    f32[], the batch mean.
  """
  if kind == 'hinge':
    return -jnp.mean(fake_logits)
  return jnp.mean(jax.nn.softplus(-fake_logits))  # non-saturating: -log D(G(z))


# -------------------------------------------------------------- the contract


def _generate(state, g_params, z, y, *, train: bool):
  """G(z) with the given generator params; in train mode also its new BatchNorm statistics."""
  variables = {'params': {'generator': g_params}, 'batch_stats': state.batch_stats}
  if not train or not state.batch_stats:
    return state.model.apply(variables, z, y, train=train, method='generate'), state.batch_stats
  images, updates = state.model.apply(
    variables, z, y, train=True, method='generate', mutable=['batch_stats']
  )
  return images, updates['batch_stats']


def ema_batch_stats(state: GANState):
  """BatchNorm statistics for the EMA generator ("standing statistics").

  The running statistics in the state belong to the raw generator; the averaged weights
  produce other activations, and sampling them with the raw statistics gives washed-out
  images. So the EMA generator's statistics are measured on one fixed batch of latents:
  running from zeros with momentum m, one train-mode pass leaves (1 - m) * batch statistic.

  Args:
    state: the GANState.

  Returns:
    The EMA generator's BatchNorm statistics (a fixed function of the EMA params and the
    seed), of the structure of `state.batch_stats`; {} for a generator without BatchNorm.
  """
  if not state.batch_stats:
    return state.batch_stats
  model = state.model
  key = jax.random.fold_in(jax.random.PRNGKey(state.opts.seed), _STANDING_SALT)
  z = jax.random.normal(key, (_STANDING_BATCH, model.latents))
  y = jnp.arange(_STANDING_BATCH) % model.generator_classes if model.generator_classes else None
  zeros = jax.tree.map(jnp.zeros_like, state.batch_stats)
  _, updates = model.apply(
    {'params': {'generator': state.ema_params}, 'batch_stats': zeros},
    z,
    y,
    train=True,
    method='generate',
    mutable=['batch_stats'],
  )
  return jax.tree.map(lambda v: v / (1.0 - model.bn_momentum), updates['batch_stats'])


def _generate_ema(state: GANState, z, y):
  """Images in [-1, 1] from the EMA generator with its own BatchNorm statistics."""
  return _generate(
    state.replace(batch_stats=ema_batch_stats(state)), state.ema_params, z, y, train=False
  )[0]


def _latents(split, key, n: int, latents: int):
  """z ~ N(0, I) f32[n, latents], drawn as the jit path draws them under pmap."""
  return parallel.batch_rows(split, lambda s: jax.random.normal(key, s), (n, latents))


def _discriminate(state, d_params, x, y, rng, *, train: bool, codes: bool = False):
  """D's logits; with codes=True (an InfoGAN) (logits, code logits)."""
  return state.model.apply(
    {'params': {'discriminator': d_params}},
    x,
    y,
    train=train,
    method='discriminate_codes' if codes else 'discriminate',
    rngs={'dropout': rng} if train else None,
  )


def train_step(
  state: GANState, batch, split: parallel.BatchSplit | None = None
) -> tuple[GANState, dict]:
  """`gan.d_steps` discriminator updates, then one generator update and its EMA.

  With opts.accum_steps = k > 1 each update's gradient is the mean over k microbatches of the
  batch (`accumulate.accumulate`): every D update sums D's gradients over the microbatches with
  D's params fixed and updates D once; the G update then does the same for G against the updated
  D. The latents (and InfoGAN codes) are drawn for the whole batch first; G's BatchNorm
  normalises each microbatch and its running statistics are updated k times.

  Args:
    state: the GANState.
    batch: {'image' f32[B, H, W, C] in [-1, 1], 'label' i32[B]}.
    split: the pmap path's batch layout (None under jit).

  Returns:
    (the next state, {'loss', 'd_loss', 'g_loss', 'd_real', 'd_fake', gradient norms, rates, ...}):
    f32[] batch means of the last D update's and the G update's losses, D's mean probability
    on the real and the fake images, 'code_loss' for an InfoGAN and 'r1' with gan.r1_gamma.
  """
  _check_batch(batch)
  opts, model = state.opts, state.model
  real, y = batch['image'], _labels(model, batch)
  n = real.shape[0]
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), 2 * opts.d_steps + 2)
  g_params, d_params, d_opt_state = (
    state.params['generator'],
    state.params['discriminator'],
    state.d_opt_state,
  )
  # The models as this step runs them: under pmap they know the batch layout (for D on
  # [real; fake], two batches stacked).
  on = lambda stacked: (
    state if split is None else state.replace(model=model.clone(batch_split=split.stack(stacked)))
  )
  one, two = on(1), on(2)

  info = bool(model.info_codes)

  def d_loss_fn(d_params, rows, drop_rng, carry):  # D: fakes from the current G, no gradient into G
    real, y, c = rows['real'], rows['y'], rows['c']
    m = real.shape[0]
    fake = jax.lax.stop_gradient(_generate(one, g_params, rows['z'], c, train=True)[0])
    both = _discriminate(
      two,
      d_params,
      jnp.concatenate([real, fake]),
      None if y is None else jnp.concatenate([y, y]),
      drop_rng,
      train=True,
      codes=info,
    )
    both, code_loss = (both[0], _code_loss(both[1][m:], c)) if info else (both, 0.0)
    adversarial = total = d_loss(opts.loss, both[:m], both[m:])
    metrics = {
      'd_loss': adversarial,
      'd_real': jnp.mean(jax.nn.sigmoid(both[:m])),
      'd_fake': jnp.mean(jax.nn.sigmoid(both[m:])),
    }
    if info:
      total += opts.info_weight * code_loss
      metrics['code_loss'] = code_loss
    if opts.r1_gamma:
      penalty = r1_penalty(lambda x: _discriminate(one, d_params, x, y, drop_rng, train=True), real)
      total += 0.5 * opts.r1_gamma * penalty
      metrics['r1'] = penalty
    return total, (metrics, carry)

  for j in range(opts.d_steps):
    rows = {
      'real': real,
      'y': y,
      'z': _latents(split, keys[2 * j], n, model.latents),
      'c': _g_inputs(split, model, keys[2 * j], y, n),
    }
    d_grads, d_metrics, _ = accumulate(d_loss_fn, d_params, rows, opts.accum_steps, keys[2 * j + 1])
    d_grads = parallel.batch_mean(split, d_grads)
    d_updates, d_opt_state = state.d_tx.update(d_grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, d_updates)

  def g_loss_fn(g_params, rows, drop_rng, batch_stats):  # G: through the updated D, not updated
    c = rows['c']
    fake, batch_stats = _generate(
      one.replace(batch_stats=batch_stats), g_params, rows['z'], c, train=True
    )
    fake_logits = _discriminate(one, d_params, fake, rows['y'], drop_rng, train=True, codes=info)
    if not info:
      adversarial = g_loss(opts.loss, fake_logits)
      return adversarial, ({'g_loss': adversarial}, batch_stats)
    adversarial = g_loss(opts.loss, fake_logits[0])
    total = adversarial + opts.info_weight * _code_loss(fake_logits[1], c)
    return total, ({'g_loss': adversarial}, batch_stats)

  rows = {
    'y': y,
    'z': _latents(split, keys[-2], n, model.latents),
    'c': _g_inputs(split, model, keys[-2], y, n),
  }
  g_grads, g_metrics, batch_stats = accumulate(
    g_loss_fn, g_params, rows, opts.accum_steps, keys[-1], state.batch_stats
  )
  g_grads = parallel.batch_mean(split, g_grads)
  g_updates, g_opt_state = state.g_tx.update(g_grads, state.g_opt_state, g_params)
  g_params = optax.apply_updates(g_params, g_updates)
  ema = optax.incremental_update(g_params, state.ema_params, 1.0 - opts.ema_decay)

  new_state = state.replace(
    step=state.step + 1,
    params={'generator': g_params, 'discriminator': d_params},
    batch_stats=batch_stats,
    g_opt_state=g_opt_state,
    d_opt_state=d_opt_state,
    ema_params=ema,
  )
  dl, gl = d_metrics.pop('d_loss'), g_metrics['g_loss']
  metrics = parallel.batch_mean(split, {'loss': dl + gl, 'd_loss': dl, 'g_loss': gl, **d_metrics})
  metrics.update(
    g_grad_norm=optax.global_norm(g_grads),
    d_grad_norm=optax.global_norm(d_grads),
    g_lr=opts.g_lr(state.step),
    d_lr=opts.d_lr(state.step),
  )
  return new_state, metrics


def _eval_latents(state: GANState, n: int) -> jax.Array:
  """The eval's latents f32[n, latents]: a function of the seed, the same at every eval."""
  key = jax.random.fold_in(jax.random.PRNGKey(state.opts.seed), EVAL_SALT)
  return jax.random.normal(key, (n, state.model.latents))


def eval_step(state: GANState, batch) -> dict:
  """D's loss and mean probabilities on the real test images and on as many EMA-generator
  fakes (latents fixed by the seed, so evals at different steps compare).

  Args:
    state: the GANState.
    batch: {'image' f32[B, H, W, C] in [-1, 1], 'label' i32[B], 'mask' f32[B]}.

  Returns:
    {'d_loss' (BCE), 'd_real', 'd_fake', 'count'}: f32[] sums over the rows whose mask is 1.
  """
  _check_batch(batch)
  real, y, mask = batch['image'], _labels(state.model, batch), batch['mask']
  z = _eval_latents(state, real.shape[0])
  fake = _generate_ema(
    state, z, _cycled(state.model, real.shape[0]) if state.model.info_codes else y
  )
  d = state.params['discriminator']
  real_logits = _discriminate(state, d, real, y, None, train=False)
  fake_logits = _discriminate(state, d, fake, y, None, train=False)
  per_image_d_loss = jax.nn.softplus(-real_logits) + jax.nn.softplus(fake_logits)
  return {
    'd_loss': jnp.sum(per_image_d_loss * mask),
    'd_real': jnp.sum(jax.nn.sigmoid(real_logits) * mask),
    'd_fake': jnp.sum(jax.nn.sigmoid(fake_logits) * mask),
    'count': jnp.sum(mask),
  }


def _cycled(model, n: int):
  """i32[n] labels or codes 0, 1, ..., K-1, 0, 1, ... (an even share of each)."""
  return jnp.arange(n) % model.generator_classes


def sample(state: GANState, rng, n: int, labels=None) -> jax.Array:
  """n images in [0, 1] from the EMA generator; a conditional model cycles through the classes,
  an InfoGAN through its codes (an even share of each: the uniform prior, stratified).

  Args:
    state: the GANState.
    rng: the latents' key.
    n: how many images (static under jit).
    labels: i32[n] labels (or codes) for G; None: cycled, or none for an unconditional model.

  Returns:
    Images f32[n, H, W, C] in [0, 1].
  """
  if state.model.generator_classes and labels is None:
    labels = _cycled(state.model, n)
  z = jax.random.normal(rng, (n, state.model.latents))
  return (_generate_ema(state, z, labels) + 1.0) / 2.0


def _sample_fixed(state: GANState, z, y):
  """Images in [0, 1] of the EMA generator for given latents and labels."""
  return (_generate_ema(state, z, y) + 1.0) / 2.0


def sample_images(state: GANState, config, batch) -> dict:
  """uint8 grid 'samples' from latents fixed at the start of the run (a function of the seed);
  for a conditional model one row per class (an InfoGAN: per code), the same latent down each
  column.

  Args:
    state: the GANState.
    config: the experiment config (seed).
    batch: an eval batch (unused).

  Returns:
    {'samples': uint8[h, w, C]}, the grid of 8 x 8 images, or K rows of 8.
  """
  del batch
  num_classes = state.model.generator_classes
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _SAMPLE_SALT)
  if num_classes:
    z = jnp.tile(jax.random.normal(key, (_COLS, state.model.latents)), (num_classes, 1))
    y = jnp.repeat(jnp.arange(num_classes), _COLS)
  else:
    z, y = jax.random.normal(key, (_COLS * _COLS, state.model.latents)), None
  images = np.asarray(parallel.jit(_sample_fixed, config)(state, z, y))
  return {'samples': grids.make_grid(images, num_classes or _COLS)}


TASK = Task(
  name='gan',
  config=config,
  validate=validate,
  init=init,
  train_step=train_step,
  eval_step=eval_step,
  sample=sample,
  sample_images=sample_images,
)
