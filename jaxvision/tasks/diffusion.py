"""Diffusion and flow matching as pure functions over an explicit state.

    state = init(config, rng, sample_batch)
    state, metrics = train_step(state, batch, split)  # image f32[B,H,W,C] in [-1, 1], label i32[B]
    sums = eval_step(state, batch)                    # the denoising loss on test images, summed
    images = sample(state, rng, n, labels)            # f32[n,H,W,C] in [0, 1], from the EMA net

Time is continuous, t in [0, 1] (data at 0, noise at 1). `diffusion.objective`:

* 'eps' and 'v': a variance-preserving diffusion, x_t = alpha_t x + sigma_t eps, with the
  `diffusion.schedule` 'cosine', alpha_t^2 = cos^2((t + s) / (1 + s) pi / 2) / cos^2(s / (1 + s)
  pi / 2), s = 0.008 (Nichol & Dhariwal 2021), or 'linear', DDPM's betas rising from 1e-4 to
  0.02 over 1000 steps, in continuous time alpha_t^2 = exp(-(0.1 t + 9.95 t^2)) (the VP SDE of
  Song et al. 2021). The network predicts the noise eps (Ho et al. 2020) or the velocity
  v = alpha_t eps - sigma_t x (Salimans & Ho 2022). Sampled with DDIM (deterministic, Song et al.
  2021) or DDPM's ancestral steps, on `sample.steps` equal steps of t.
* 'flow': rectified flow (Liu et al. 2022; Lipman et al.'s flow matching), x_t = (1 - t) x + t eps
  on straight paths; the network regresses their velocity eps - x. Sampled by integrating the
  ODE from t = 1 to 0 with Euler or Heun steps.

The loss is the mean squared error of the prediction, t ~ U(0, 1). An exponential moving
average of the weights (`diffusion.ema_decay`) samples. With `model.num_classes` = K > 0 the
network is conditional: labels are dropped (replaced by K, "no label") with probability
`diffusion.label_dropout` in training, and sampling with `sample.guidance` = w > 0 uses
classifier-free guidance (Ho & Salimans 2022), prediction = cond + w (cond - uncond); w = 0 is
the conditional model alone.

The samplers take any `predict(x, t)`, so the tests run them on exact (analytic) predictions.
Every random draw of a train step comes from `fold_in(state.rng, state.step)`, drawn through
`parallel.batch_rows` with the step's `split` so the pmap path trains like the jit path. t, the
noise and the dropped labels are drawn for the whole batch, also when `optim.accum_steps` splits
it into microbatches (`accumulate.accumulate`, whose dropout keys are per microbatch).
"""

import dataclasses
import math
from collections.abc import Callable
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
  Task,
  check_batch,
  generative_config,
  image_keys,
  validate_generative,
)

OBJECTIVES = ('eps', 'v', 'flow')
SCHEDULES = ('cosine', 'linear')  # of alpha_t for 'eps' and 'v'
SAMPLERS = {'eps': ('ddim', 'ddpm'), 'v': ('ddim', 'ddpm'), 'flow': ('euler', 'heun')}
_COSINE_S = 0.008
_BETA_0, _BETA_1 = 0.1, 20.0  # the linear schedule's betas 1e-4 ... 0.02, times 1000 steps
_MIN_ALPHA_BAR = 1e-5  # alpha_1 would be 0: the last step of noise keeps a trace of the image
_SAMPLE_SALT = 0xD1F  # folded into PRNGKey(config.seed): the grid's fixed noise
_COLS = 8


def config() -> ml_collections.ConfigDict:
  """The keys the diffusion task adds to the shared ones."""
  c = generative_config()
  c.diffusion = ml_collections.ConfigDict(
    {
      'objective': 'v',  # 'eps' | 'v' (variance-preserving diffusion) | 'flow' (rectified flow)
      'schedule': 'cosine',  # of the noise, for 'eps' and 'v': 'cosine' | 'linear' (DDPM's)
      'ema_decay': 0.999,  # of the weights that sample
      'label_dropout': 0.1,  # a conditional model: the share of labels replaced by "no label"
    }
  )
  c.sample.steps = 25  # sampler steps (Heun: two network calls each)
  c.sample.sampler = 'ddim'  # 'ddim' | 'ddpm' (eps, v); 'euler' | 'heun' (flow)
  c.sample.guidance = 0.0  # classifier-free guidance w of a conditional model; 0: none
  return c


def validate(config) -> None:
  """Checks the diffusion task's own keys and the model it needs; raises errors.ConfigError."""
  if config.model.name != 'unet':
    raise ConfigError(f"task diffusion needs model.name='unet', not {config.model.name!r}")
  if config.data.scale != 'minus_one_one':
    raise ConfigError(
      f'task diffusion models images in [-1, 1] and needs data.scale=minus_one_one, '
      f'not {config.data.scale!r}'
    )
  config_lib.choice(config, 'diffusion.objective', OBJECTIVES)
  config_lib.choice(config, 'diffusion.schedule', SCHEDULES)
  config_lib.choice(config, 'sample.sampler', SAMPLERS[config.diffusion.objective])
  config_lib.check_ranges(
    config,
    {
      'diffusion.ema_decay': config_lib.FRACTION,
      'diffusion.label_dropout': config_lib.FRACTION,
      'sample.steps': config_lib.AT_LEAST_1,
      'sample.guidance': config_lib.AT_LEAST_0,
    },
    {'sample.guidance': ' (0: the conditional model alone)'},
  )
  if config.sample.guidance and not config.model.get('num_classes', 0):
    raise ConfigError(
      f'sample.guidance={config.sample.guidance} needs a conditional model '
      f'(model.num_classes > 0); set --config.sample.guidance=0'
    )
  validate_generative(config)


@dataclasses.dataclass(frozen=True)
class DiffusionOptions:
  objective: str = 'v'
  schedule: str = 'cosine'
  ema_decay: float = 0.999
  label_dropout: float = 0.1
  sampler: str = 'ddim'
  steps: int = 25
  guidance: float = 0.0
  seed: int = 0
  lr: Any = None  # the learning-rate schedule, logged as train/lr
  accum_steps: int = 1  # microbatches per update (optim.accum_steps)


@struct.dataclass
class DiffusionState:
  step: jax.Array
  params: Any
  ema_params: Any  # moving average of params: the weights that sample
  opt_state: Any
  rng: jax.Array
  model: nn.Module = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  opts: DiffusionOptions = struct.field(pytree_node=False)


def init(config, rng, sample_batch) -> DiffusionState:
  """The initial state: the network, its EMA copy and the optimizer state.

  Args:
    config: the experiment config.
    rng: the run's key (config.seed).
    sample_batch: a batch of one example, for the image shape.

  Returns:
    The DiffusionState at step 0.
  """
  model = models.get(config.model, config.dtype).clone(
    image_shape=tuple(sample_batch['image'].shape[1:])
  )
  tx, lr = optim.make(config.optim, config.train.steps, tuple(config.freeze))
  opts = DiffusionOptions(
    objective=config.diffusion.objective,
    schedule=config.diffusion.schedule,
    ema_decay=float(config.diffusion.ema_decay),
    label_dropout=float(config.diffusion.label_dropout),
    sampler=config.sample.sampler,
    steps=int(config.sample.steps),
    guidance=float(config.sample.guidance),
    seed=int(config.seed),
    lr=lr,
    accum_steps=int(config.optim.accum_steps),
  )
  init_rng, state_rng = jax.random.split(rng)
  x = sample_batch['image']
  y = _labels(model, sample_batch)
  params = models.init(model, init_rng, x, jnp.zeros(x.shape[:1]), y, train=False)['params']
  return DiffusionState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    ema_params=params,
    opt_state=tx.init(params),
    rng=state_rng,
    model=model,
    tx=tx,
    opts=opts,
  )


def _labels(model, batch):
  return batch['label'] if model.num_classes else None


# ------------------------------------------------------------------ the maths


def alpha_sigma(t, schedule: str = 'cosine') -> tuple[jax.Array, jax.Array]:
  """(alpha_t, sigma_t) of the schedule at t in [0, 1]: alpha^2 + sigma^2 = 1."""
  if schedule == 'linear':
    alpha_bar = jnp.exp(-(_BETA_0 * t + 0.5 * (_BETA_1 - _BETA_0) * t**2))
  else:
    f = lambda u: jnp.cos((u + _COSINE_S) / (1 + _COSINE_S) * math.pi / 2) ** 2
    alpha_bar = f(t) / f(0.0)
  alpha_bar = jnp.clip(alpha_bar, _MIN_ALPHA_BAR, 1.0)
  return jnp.sqrt(alpha_bar), jnp.sqrt(1.0 - alpha_bar)


def _expand(a, x):
  """a[B] broadcast against x[B, ...]."""
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def noised(objective: str, x, eps, t, schedule: str = 'cosine') -> tuple[jax.Array, jax.Array]:
  """The noisy images at t and the network's regression target.

  Args:
    objective: 'eps', 'v' or 'flow'.
    x: f32[B, ...] clean images in [-1, 1].
    eps: f32[B, ...] standard normal noise.
    t: f32[B] in [0, 1].
    schedule: of 'eps' and 'v'.

  Returns:
    (x_t, target), both like x.
  """
  if objective == 'flow':
    tt = _expand(t, x)
    return (1.0 - tt) * x + tt * eps, eps - x
  alpha, sigma = (_expand(a, x) for a in alpha_sigma(t, schedule))
  x_t = alpha * x + sigma * eps
  return x_t, eps if objective == 'eps' else alpha * eps - sigma * x


def denoised(objective: str, out, x_t, t, schedule: str = 'cosine') -> tuple[jax.Array, jax.Array]:
  """(x0, eps) that a diffusion network's output implies at (x_t, t); x0 clipped to [-1, 1] and
  eps made consistent with it (x_t = alpha x0 + sigma eps)."""
  alpha, sigma = (_expand(a, x_t) for a in alpha_sigma(t, schedule))
  x0 = (x_t - sigma * out) / alpha if objective == 'eps' else alpha * x_t - sigma * out
  x0 = jnp.clip(x0, -1.0, 1.0)
  return x0, (x_t - alpha * x0) / sigma


def ddim(
  predict: Callable,
  objective: str,
  x,
  steps: int,
  eta: float = 0.0,
  rng=None,
  schedule: str = 'cosine',
):
  """DDIM from t = 1 to 0 in `steps` equal steps of t; eta = 1 is DDPM's ancestral sampler.

  Args:
    predict: (x_t f32[B, ...], t f32[B]) -> the network's output ('eps' or 'v').
    objective: 'eps' or 'v'.
    x: f32[B, ...] the noise at t = 1.
    steps: how many steps.
    eta: 0 (deterministic) ... 1 (DDPM).
    rng: the key of the fresh noise when eta > 0.
    schedule: the noise schedule the network was trained with.

  Returns:
    x at t = 0, f32[B, ...].
  """
  ts = jnp.linspace(1.0, 0.0, steps + 1)

  def step(i, x):
    t, t_next = jnp.full(x.shape[:1], ts[i]), jnp.full(x.shape[:1], ts[i + 1])
    x0, eps = denoised(objective, predict(x, t), x, t, schedule)
    a_bar, a_bar_next = alpha_sigma(t, schedule)[0] ** 2, alpha_sigma(t_next, schedule)[0] ** 2
    c = eta * jnp.sqrt((1 - a_bar_next) / (1 - a_bar) * (1 - a_bar / a_bar_next))
    x_next = _expand(jnp.sqrt(a_bar_next), x) * x0
    x_next = x_next + _expand(jnp.sqrt(jnp.maximum(1 - a_bar_next - c**2, 0.0)), x) * eps
    if eta:
      x_next = x_next + _expand(c, x) * jax.random.normal(jax.random.fold_in(rng, i), x.shape)
    return x_next

  return jax.lax.fori_loop(0, steps, step, x)


def flow_ode(predict: Callable, x, steps: int, method: str = 'heun'):
  """Integrates dx/dt = predict(x, t) from t = 1 (noise) to 0 in `steps` equal steps.

  Args:
    predict: (x_t f32[B, ...], t f32[B]) -> the velocity.
    x: f32[B, ...] the noise at t = 1.
    steps: how many steps.
    method: 'euler' (one call a step) or 'heun' (two: the trapezoid rule on Euler's guess).

  Returns:
    x at t = 0, f32[B, ...].
  """
  ts = jnp.linspace(1.0, 0.0, steps + 1)

  def step(i, x):
    t, t_next = jnp.full(x.shape[:1], ts[i]), jnp.full(x.shape[:1], ts[i + 1])
    dt = ts[i + 1] - ts[i]
    u = predict(x, t)
    guess = x + dt * u
    if method == 'euler':
      return guess
    return x + dt * 0.5 * (u + predict(guess, t_next))

  return jax.lax.fori_loop(0, steps, step, x)


# -------------------------------------------------------------- the contract


def _check_batch(batch) -> None:
  check_batch(batch['image'], batch['label'])


def _loss(model, params, opts, x, t, eps, y, rngs=None, train: bool = False):
  """Per-image mean squared error of the prediction, f32[B]."""
  x_t, target = noised(opts.objective, x, eps, t, opts.schedule)
  out = model.apply({'params': params}, x_t, t, y, train=train, rngs=rngs)
  return jnp.mean(jnp.square(out - target), axis=tuple(range(1, x.ndim)))


def train_step(
  state: DiffusionState, batch, split: parallel.BatchSplit | None = None
) -> tuple[DiffusionState, dict]:
  """One update of the denoising (or velocity) regression and of the EMA weights.

  Args:
    state: the DiffusionState.
    batch: {'image' f32[B, H, W, C] in [-1, 1], 'label' i32[B]}.
    split: the pmap path's batch layout (None under jit).

  Returns:
    (the next state, {'loss', 'grad_norm', 'lr'}); with opts.accum_steps > 1 over its
    microbatches (see `accumulate.accumulate`).
  """
  _check_batch(batch)
  opts, model = state.opts, state.model
  x = batch['image']
  n = x.shape[0]
  t_key, eps_key, drop_key, dropout_key = jax.random.split(
    jax.random.fold_in(state.rng, state.step), 4
  )
  t = parallel.batch_rows(split, lambda s: jax.random.uniform(t_key, s), (n,))
  eps = parallel.batch_rows(split, lambda s: jax.random.normal(eps_key, s), x.shape)
  y = _labels(model, batch)
  if y is not None and opts.label_dropout:
    dropped = parallel.batch_rows(
      split, lambda s: jax.random.bernoulli(drop_key, opts.label_dropout, s), (n,)
    )
    y = jnp.where(dropped, model.num_classes, y)
  train_model = model if split is None else model.clone(batch_split=split)

  def loss_fn(params, rows, rng, carry):
    per_image = _loss(
      train_model,
      params,
      opts,
      rows['x'],
      rows['t'],
      rows['eps'],
      rows['y'],
      {'dropout': rng},
      train=True,
    )
    loss = jnp.mean(per_image)
    return loss, ({'loss': loss}, carry)

  grads, metrics, _ = accumulate(
    loss_fn, state.params, {'x': x, 't': t, 'eps': eps, 'y': y}, opts.accum_steps, dropout_key
  )
  grads = parallel.batch_mean(split, grads)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = optax.incremental_update(params, state.ema_params, 1.0 - opts.ema_decay)
  new_state = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
  metrics = parallel.batch_mean(split, metrics)
  metrics.update(grad_norm=optax.global_norm(grads), lr=opts.lr(state.step))
  return new_state, metrics


def eval_step(state: DiffusionState, batch) -> dict:
  """The EMA network's loss on test images, summed over the batch's real rows; each image's t
  and noise are a function of its pixels and the seed, so every eval scores the same problem.

  Args:
    state: the DiffusionState.
    batch: {'image', 'label', 'mask'}.

  Returns:
    {'loss': sum, 'count': real rows}.
  """
  _check_batch(batch)
  x, mask = batch['image'], batch['mask']
  keys = image_keys((x + 1.0) / 2.0, state.opts.seed)
  t = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 3)))(keys)
  eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 4), x.shape[1:]))(keys)
  loss = _loss(state.model, state.ema_params, state.opts, x, t, eps, _labels(state.model, batch))
  return {'loss': jnp.sum(loss * mask), 'count': jnp.sum(mask)}


def _predictor(state: DiffusionState, y, guidance: float) -> Callable:
  """predict(x, t) of the EMA network, with classifier-free guidance w = `guidance`."""
  model, params = state.model, {'params': state.ema_params}
  if y is None or not guidance:
    return lambda x, t: model.apply(params, x, t, y, train=False)
  null = jnp.full_like(y, model.num_classes)

  def predict(x, t):
    both = model.apply(
      params,
      jnp.concatenate([x, x]),
      jnp.concatenate([t, t]),
      jnp.concatenate([y, null]),
      train=False,
    )
    cond, uncond = jnp.split(both, 2)
    return cond + guidance * (cond - uncond)

  return predict


def generate(state: DiffusionState, noise, labels=None, rng=None) -> jax.Array:
  """Images in [0, 1] from the noise at t = 1, with the state's sampler, steps and guidance.

  Args:
    state: the DiffusionState (its EMA weights and `opts.sampler`, `steps`, `guidance`).
    noise: f32[n, H, W, C] standard normal.
    labels: i32[n] of a conditional model.
    rng: DDPM's fresh noise.

  Returns:
    f32[n, H, W, C] in [0, 1].
  """
  opts = state.opts
  predict = _predictor(state, labels, opts.guidance)
  if opts.objective == 'flow':
    x = flow_ode(predict, noise, opts.steps, opts.sampler)
  else:
    eta = 1.0 if opts.sampler == 'ddpm' else 0.0
    x = ddim(predict, opts.objective, noise, opts.steps, eta, rng, opts.schedule)
  return jnp.clip((x + 1.0) / 2.0, 0.0, 1.0)


def sample(state: DiffusionState, rng, n: int, labels=None) -> jax.Array:
  """n images in [0, 1]; a conditional model cycles through the classes."""
  if state.model.num_classes and labels is None:
    labels = jnp.arange(n) % state.model.num_classes
  noise_key, step_key = jax.random.split(rng)
  noise = jax.random.normal(noise_key, (n, *state.model.image_shape))
  return generate(state, noise, labels, step_key)


def sample_images(state: DiffusionState, config, batch) -> dict:
  """uint8 grid 'samples' from noise fixed at the start of the run (a function of the seed); for
  a conditional model one row per class, the same noise down each column."""
  del batch
  num_classes = state.model.num_classes
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _SAMPLE_SALT)
  rows = num_classes or _COLS
  noise = jax.random.normal(key, ((1 if num_classes else rows) * _COLS, *state.model.image_shape))
  labels = None
  if num_classes:  # row r: class r; column c: the same noise in every row
    noise = jnp.tile(noise, (num_classes, 1, 1, 1))
    labels = jnp.repeat(jnp.arange(num_classes), _COLS)
  images = parallel.jit(generate, config)(state, noise, labels, jax.random.fold_in(key, 1))
  return {'samples': grids.make_grid(np.asarray(images), rows)}


TASK = Task(
  name='diffusion',
  config=config,
  validate=validate,
  init=init,
  train_step=train_step,
  eval_step=eval_step,
  sample=sample,
  sample_images=sample_images,
)
