"""Variational autoencoders on binarised pixels, as pure functions over an explicit state.

    state = init(config, rng, sample_batch)
    state, metrics = train_step(state, batch, split)   # image f32[B,H,W,C] in [0,1], label i32[B]
    sums = eval_step(state, batch)              # neg_elbo, recon, kl (nats) summed + count
    sums = final_eval_step(state, batch)        # the same, plus nll_iwae when eval.iwae_k > 0
    images = sample(state, rng, n, labels=None) # mean images f32[n,H,W,C] in [0, 1]
    grids = sample_images(state, config, eval_batch)  # uint8 grids, written by the loop

Likelihood (`loss.likelihood`):
* 'bernoulli' (default, for digits): logits on binarised pixels. Training
  binarises dynamically, with a key from `fold_in(state.rng, state.step)`
  (drawn, like the posterior noise, through `parallel.batch_rows` with the step's
  `split`, and the gradients averaged by `parallel.batch_mean`, so the pmap path
  trains alike). Both are drawn for the whole batch, also when `optim.accum_steps`
  splits it into microbatches (`accumulate.accumulate`), so every image gets the
  same numbers whatever the accumulation.
  Evaluation binarises each test image once and for all: its key is a fixed key
  folded with a hash of the image's bytes, so every eval (and every eval batch
  size, sharding or resume) sees the same binary test set and the same
  posterior samples, and eval numbers are comparable.
* 'logistic' (for colour images): the 8-bit pixels themselves under a per-pixel
  logistic discretised into 256 bins (Salimans et al. 2017, without the
  mixture); the decoder gives a mean and a log-scale per pixel channel. Nats
  per image here are of 8-bit data: bits/dim = nats / (H*W*C * ln 2).

loss = recon + beta_t * KL, per image, where recon = -log p(x|z) with one
reparameterised z ~ q(z|x), KL = KL(q(z|x) || N(0, I)) in closed form and
beta_t ramps linearly from 0 to `loss.beta` over `loss.kl_warmup_steps`.
`neg_elbo` is always recon + KL (beta = 1). The IWAE bound
    nll_iwae = -log (1/k) sum_i p(x, z_i) / q(z_i|x),   z_i ~ q(z|x)
is computed in `lax.map`-ped chunks of `eval.iwae_chunk` samples per image
with a logsumexp, so k = 1000 fits in memory.
"""

import dataclasses
import math
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

_SAMPLE_SALT = 0x5A3D1E  # folded into PRNGKey(config.seed): the grid's latents
_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class VAEOptions:
  """The steps' fixed options, from `loss.*` and `eval.*` (static: part of the compiled steps)."""

  beta: float = 1.0
  kl_warmup_steps: int = 0
  iwae_k: int = 0
  iwae_chunk: int = 50
  likelihood: str = 'bernoulli'
  seed: int = 0
  lr: Any = None  # the learning-rate schedule, logged as train/lr
  accum_steps: int = 1  # microbatches per update (optim.accum_steps)


@struct.dataclass
class VAEState:
  """A VAE's state: step, params, optimizer state and key; the model, the optax transformation
  and the options are static."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model: nn.Module = struct.field(pytree_node=False)
  tx: optax.GradientTransformation = struct.field(pytree_node=False)
  opts: VAEOptions = struct.field(pytree_node=False)


LIKELIHOODS = ('bernoulli', 'logistic')


def config() -> ml_collections.ConfigDict:
  """The keys the VAE task adds to the shared ones.

  Returns:
    A ConfigDict of `loss.*`, `eval.iwae_k`, `eval.iwae_chunk` and the keys of
    `generative_config`.
  """
  c = generative_config()
  c.loss = ml_collections.ConfigDict(
    {
      'beta': 1.0,  # weight of the KL term
      'kl_warmup_steps': 0,  # the KL weight ramps from 0 to beta over these steps
      'likelihood': 'bernoulli',  # 'bernoulli' (binarised digits) | 'logistic' (8-bit colour)
    }
  )
  c.eval.iwae_k = 0  # importance samples of eval/nll_iwae at the final eval; 0 = off
  c.eval.iwae_chunk = 50  # samples per image decoded at once; must divide eval.iwae_k
  return c


def validate(config) -> None:
  """Checks the VAE task's own keys and the model it needs.

  Args:
    config: a VAE config.

  Raises:
    ConfigError: an unknown likelihood, data.scale other than zero_one, a model that is not a
      VAE, a `loss.*` or `eval.*` number out of range, or eval.iwae_chunk not dividing
      eval.iwae_k.
  """
  if config.loss.likelihood not in LIKELIHOODS:
    raise ConfigError(
      f'loss.likelihood={config.loss.likelihood!r} is not allowed; use one of: '
      f'{", ".join(LIKELIHOODS)}'
    )
  if config.data.scale != 'zero_one':
    raise ConfigError(
      f'task vae models 8-bit pixels in [0, 1] and needs data.scale=zero_one, '
      f'not {config.data.scale!r}'
    )
  if not hasattr(models.MODELS[config.model.name], 'conditional'):
    vaes = sorted(k for k, v in models.MODELS.items() if hasattr(v, 'conditional'))
    raise ConfigError(
      f'model.name={config.model.name!r} is not a VAE; use one of: {", ".join(vaes)}'
    )
  config_lib.check_ranges(
    config,
    {
      'loss.beta': config_lib.AT_LEAST_0,
      'loss.kl_warmup_steps': config_lib.AT_LEAST_0,
      'eval.iwae_k': config_lib.AT_LEAST_0,
      'eval.iwae_chunk': config_lib.AT_LEAST_1,
    },
    {'eval.iwae_k': ' (0: no IWAE bound)'},
  )
  if config.eval.iwae_k % config.eval.iwae_chunk:
    raise ConfigError(
      f'eval.iwae_chunk={config.eval.iwae_chunk} must divide eval.iwae_k={config.eval.iwae_k}'
    )
  validate_generative(config)


def init(config, rng, sample_batch) -> VAEState:
  """The initial state.

  Args:
    config: the experiment config.
    rng: the run's key (config.seed).
    sample_batch: a batch of one example, for the image shape.

  Returns:
    The VAEState at step 0.
  """
  likelihood = str(config.loss.likelihood)
  model = models.get(config.model, config.dtype).clone(
    image_shape=tuple(sample_batch['image'].shape[1:]), outputs=2 if likelihood == 'logistic' else 1
  )
  tx, lr = optim.make(config.optim, config.train.steps, tuple(config.freeze))
  opts = VAEOptions(
    beta=float(config.loss.beta),
    kl_warmup_steps=int(config.loss.kl_warmup_steps),
    iwae_k=int(config.eval.iwae_k),
    iwae_chunk=int(config.eval.iwae_chunk),
    likelihood=likelihood,
    seed=int(config.seed),
    lr=lr,
    accum_steps=int(config.optim.accum_steps),
  )
  init_rng, state_rng = jax.random.split(rng)
  params = models.init(model, init_rng, sample_batch['image'], _labels(model, sample_batch))[
    'params'
  ]
  return VAEState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=state_rng,
    model=model,
    tx=tx,
    opts=opts,
  )


def _labels(model, batch):
  """The batch's labels for the conditional model, else None."""
  return batch['label'] if model.conditional else None


def _check_batch(batch) -> None:
  """Images of rank 4, one label each."""
  check_batch(batch['image'], batch['label'])


# ------------------------------------------------------------------ the maths


def log_bernoulli(logits, x) -> jax.Array:
  """log p(x | logits) of binary pixels under independent Bernoullis.

  Args:
    logits: decoder logits f32[..., H, W, C].
    x: binary pixels f32[..., H, W, C] (0 or 1).

  Returns:
    f32[...]: summed over the last three axes (H, W, C).
  """
  axes = tuple(range(logits.ndim - 3, logits.ndim))
  return -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=axes)


def log_discretized_logistic(out, x) -> jax.Array:
  """log P(x | out) of 8-bit pixels x in [0, 1] (C channels) under a logistic per pixel channel,
  discretised into 256 bins; out[..., :C] are the means and out[..., C:] the log-scales, both in
  the units of x mapped to [-1, 1]. Summed over the last three axes (H, W, C).

  Args:
    out: decoder output f32[..., H, W, 2C]: means, then log-scales (floored at -7).
    x: pixels f32[..., H, W, C], multiples of 1/255 in [0, 1].

  Returns:
    f32[...], the log-probability of each image in nats.
  """
  c = x.shape[-1]
  mean, log_scale = out[..., :c], jnp.maximum(out[..., c:], -7.0)
  centred = 2.0 * x - 1.0 - mean
  inv_scale = jnp.exp(-log_scale)
  upper = inv_scale * (centred + 1.0 / 255.0)  # bin edges, half a bin (1/255) either side
  lower = inv_scale * (centred - 1.0 / 255.0)
  log_cdf_upper = upper - jax.nn.softplus(upper)  # log sigmoid: the bin of 0 takes (-inf, upper]
  log_survival_lower = -jax.nn.softplus(
    lower
  )  # log (1 - sigmoid): the bin of 255 takes [lower, inf)
  delta = jax.nn.sigmoid(upper) - jax.nn.sigmoid(lower)
  middle = inv_scale * centred  # a bin too narrow for the difference: density times the bin width
  log_density = middle - log_scale - 2.0 * jax.nn.softplus(middle) + math.log(2.0 / 255.0)
  log_bin = jnp.where(delta > 1e-5, jnp.log(jnp.maximum(delta, 1e-12)), log_density)
  log_p = jnp.where(
    x < 0.5 / 255.0, log_cdf_upper, jnp.where(x > 254.5 / 255.0, log_survival_lower, log_bin)
  )
  return jnp.sum(log_p, axis=tuple(range(x.ndim - 3, x.ndim)))


def log_likelihood(likelihood: str, out, x) -> jax.Array:
  """log p(x | decoder output), summed per image.

  Args:
    likelihood: 'bernoulli' or 'logistic'.
    out: the decoder's output f32[..., H, W, C * outputs].
    x: the pixels it scores f32[..., H, W, C].

  Returns:
    f32[...], nats per image.
  """
  return log_bernoulli(out, x) if likelihood == 'bernoulli' else log_discretized_logistic(out, x)


def mean_image(likelihood: str, out) -> jax.Array:
  """The decoder's mean image in [0, 1]: Bernoulli means, or the logistic's (clipped) means.

  Args:
    likelihood: 'bernoulli' or 'logistic'.
    out: the decoder's output f32[..., H, W, C * outputs].

  Returns:
    f32[..., H, W, C] in [0, 1].
  """
  if likelihood == 'bernoulli':
    return jax.nn.sigmoid(out)
  return jnp.clip((out[..., : out.shape[-1] // 2] + 1.0) / 2.0, 0.0, 1.0)


def kl_to_standard_normal(mean, logvar) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, I)), summed over the last axis.

  Args:
    mean: f32[..., latents].
    logvar: f32[..., latents].

  Returns:
    f32[...], nats.
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def log_normal(z, mean, logvar) -> jax.Array:
  """log N(z; mean, exp(logvar)), summed over the last axis.

  Args:
    z: f32[..., latents].
    mean: broadcastable to z.
    logvar: broadcastable to z.

  Returns:
    f32[...], nats.
  """
  return -0.5 * jnp.sum(_LOG_2PI + logvar + (z - mean) ** 2 * jnp.exp(-logvar), axis=-1)


def _elbo_terms(model, params, x, y, eps, likelihood: str):
  """Per-image recon = -log p(x|z) at z = mean + std * eps, and the analytic KL."""
  mean, logvar = model.apply({'params': params}, x, y, method='encode')
  z = mean + jnp.exp(0.5 * logvar) * eps
  out = model.apply({'params': params}, z, y, method='decode')
  return -log_likelihood(likelihood, out, x), kl_to_standard_normal(mean, logvar)


def binarize_eval(images, seed: int):
  """The fixed binarisation of a test image (a function of its pixels and the seed).

  Args:
    images: f32[B, H, W, C] in [0, 1].
    seed: config.seed.

  Returns:
    (binary images f32[B, H, W, C], one key per image (`task.image_keys`)).
  """
  keys = image_keys(images, seed)
  return jax.vmap(lambda k, x: jax.random.bernoulli(jax.random.fold_in(k, 0), x))(
    keys, images
  ).astype(jnp.float32), keys


def observe_eval(images, opts: VAEOptions):
  """What the likelihood scores of a test image (binarised once, or the pixels), and its keys.

  Args:
    images: f32[B, H, W, C] in [0, 1].
    opts: the state's options (likelihood, seed).

  Returns:
    (images to score f32[B, H, W, C], one key per image).
  """
  if opts.likelihood == 'bernoulli':
    return binarize_eval(images, opts.seed)
  return images, image_keys(images, opts.seed)


def nll_iwae(
  model, params, x, y, keys, k: int, chunk: int, likelihood: str = 'bernoulli'
) -> jax.Array:
  """Per-image IWAE bound with k samples (keys: one per image), chunk samples at a time.

  Args:
    model: the VAE.
    params: its parameters.
    x: the images the likelihood scores f32[B, H, W, C].
    y: labels i32[B] for the conditional model, else None.
    keys: one key per image; sample i of an image depends only on its key and i.
    k: importance samples per image; a multiple of `chunk`.
    chunk: samples decoded at once per image.
    likelihood: 'bernoulli' or 'logistic'.

  Returns:
    f32[B], -log (1/k) sum_i p(x, z_i) / q(z_i | x) in nats.
  """
  b = x.shape[0]
  mean, logvar = model.apply({'params': params}, x, y, method='encode')
  std = jnp.exp(0.5 * logvar)
  y_rep = None if y is None else jnp.repeat(y, chunk)

  def log_weights(i):  # [b, chunk]
    eps = jax.vmap(
      lambda key: jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(key, 1), i), (chunk, mean.shape[-1])
      )
    )(keys)
    z = mean[:, None] + std[:, None] * eps
    out = model.apply({'params': params}, z.reshape(b * chunk, -1), y_rep, method='decode')
    out = out.reshape(b, chunk, *out.shape[1:])
    log_px = log_likelihood(likelihood, out, jnp.broadcast_to(x[:, None], (b, chunk, *x.shape[1:])))
    return log_px + log_normal(z, 0.0, 0.0) - log_normal(z, mean[:, None], logvar[:, None])

  logw = jax.lax.map(log_weights, jnp.arange(k // chunk))  # [k/chunk, b, chunk]
  logw = jnp.moveaxis(logw, 0, 1).reshape(b, k)
  return -(jax.nn.logsumexp(logw, axis=1) - math.log(k))


# -------------------------------------------------------------- the contract


def kl_weight(opts: VAEOptions, step) -> jax.Array:
  """The KL weight beta_t: beta, ramped up linearly from 0 over kl_warmup_steps.

  Args:
    opts: the state's options (beta, kl_warmup_steps).
    step: i32[] the step.

  Returns:
    f32[] beta * min(1, step / kl_warmup_steps), or beta without warmup.
  """
  if opts.kl_warmup_steps <= 0:
    return jnp.asarray(opts.beta, jnp.float32)
  return opts.beta * jnp.minimum(1.0, step.astype(jnp.float32) / opts.kl_warmup_steps)


def train_step(
  state: VAEState, batch, split: parallel.BatchSplit | None = None
) -> tuple[VAEState, dict]:
  """One update of the (beta-weighted) negative ELBO on `batch`.

  Args:
    state: the VAEState.
    batch: {'image' f32[B, H, W, C] in [0, 1], 'label' i32[B]}.
    split: the pmap path's batch layout (None under jit).

  Returns:
    (the next state, {'loss', 'neg_elbo', 'recon', 'kl', 'beta', 'grad_norm', 'lr'}; nats):
    f32[] batch means per image of the loss (recon + beta_t * KL), recon + KL, recon and KL,
    then beta_t, the gradients' global norm and the learning rate (with opts.accum_steps > 1:
    over its microbatches, see `accumulate.accumulate`).
  """
  _check_batch(batch)
  bin_rng, z_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
  x = batch['image']
  if state.opts.likelihood == 'bernoulli':  # dynamic binarisation
    uniform = parallel.batch_rows(split, lambda s: jax.random.uniform(bin_rng, s, x.dtype), x.shape)
    x = (uniform < x).astype(jnp.float32)
  y = _labels(state.model, batch)
  eps = parallel.batch_rows(
    split, lambda s: jax.random.normal(z_rng, s), (x.shape[0], state.model.latents)
  )
  beta = kl_weight(state.opts, state.step)

  def loss_fn(params, rows, rng, carry):
    del rng  # no random draw inside: binarisation and noise are drawn for the batch above
    recon, kl = _elbo_terms(
      state.model, params, rows['x'], rows['y'], rows['eps'], state.opts.likelihood
    )
    loss = jnp.mean(recon + beta * kl)
    means = {'neg_elbo': jnp.mean(recon + kl), 'recon': jnp.mean(recon), 'kl': jnp.mean(kl)}
    return loss, ({'loss': loss, **means}, carry)

  grads, metrics, _ = accumulate(
    loss_fn, state.params, {'x': x, 'y': y, 'eps': eps}, state.opts.accum_steps
  )
  grads = parallel.batch_mean(split, grads)
  updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1, params=optax.apply_updates(state.params, updates), opt_state=opt_state
  )
  metrics = parallel.batch_mean(split, metrics)
  metrics.update(beta=beta, grad_norm=optax.global_norm(grads), lr=state.opts.lr(state.step))
  return new_state, metrics


def _eval(state: VAEState, batch, iwae: bool) -> dict:
  """The masked sums of eval_step, plus nll_iwae when `iwae` and eval.iwae_k > 0."""
  _check_batch(batch)
  x, keys = observe_eval(batch['image'], state.opts)
  y = _labels(state.model, batch)
  eps = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, 2), (state.model.latents,)))(
    keys
  )
  recon, kl = _elbo_terms(state.model, state.params, x, y, eps, state.opts.likelihood)
  mask = batch['mask']
  sums = {
    'neg_elbo': jnp.sum((recon + kl) * mask),
    'recon': jnp.sum(recon * mask),
    'kl': jnp.sum(kl * mask),
    'count': jnp.sum(mask),
  }
  if iwae and state.opts.iwae_k:
    nll = nll_iwae(
      state.model,
      state.params,
      x,
      y,
      keys,
      state.opts.iwae_k,
      state.opts.iwae_chunk,
      state.opts.likelihood,
    )
    sums['nll_iwae'] = jnp.sum(nll * mask)
  return sums


def eval_step(state: VAEState, batch) -> dict:
  """Sums over the batch's real rows of neg_elbo, recon, kl (nats); the loop divides by count.

  Args:
    state: the VAEState.
    batch: {'image' f32[B, H, W, C] in [0, 1], 'label' i32[B], 'mask' f32[B]}.

  Returns:
    {'neg_elbo', 'recon', 'kl', 'count'}: f32[] sums over the rows whose mask is 1, with one
    posterior sample per image fixed by the image (`observe_eval`).
  """
  return _eval(state, batch, iwae=False)


def final_eval_step(state: VAEState, batch) -> dict:
  """eval_step plus the IWAE bound `nll_iwae` (eval.iwae_k samples) when eval.iwae_k > 0.

  Args:
    state: the VAEState.
    batch: as `eval_step` takes it.

  Returns:
    The sums of `eval_step`, and 'nll_iwae' f32[] (summed over the real rows) when
    eval.iwae_k > 0.
  """
  return _eval(state, batch, iwae=True)


def sample(state: VAEState, rng, n: int, labels=None) -> jax.Array:
  """n mean images in [0, 1] decoded from z ~ N(0, I).

  Args:
    state: the VAEState.
    rng: the latents' key.
    n: how many images (static under jit).
    labels: i32[n] labels for the conditional model; None: cycled through the classes.

  Returns:
    Images f32[n, H, W, C] in [0, 1].
  """
  if state.model.conditional and labels is None:
    labels = jnp.arange(n) % state.model.num_classes
  z = jax.random.normal(rng, (n, state.model.latents))
  return mean_image(
    state.opts.likelihood, state.model.apply({'params': state.params}, z, labels, method='decode')
  )


# ------------------------------------------------------------------- grids

_COLS = 8  # images per grid row
_RECON_ROWS = 4  # pairs of rows: test images, then their reconstructions
_INTERP_ROWS, _INTERP_STEPS = 8, 10


def fixed_latents(config, n: int, latents: int) -> jax.Array:
  """The grid's latents: a function of config.seed only (not of training), so every
  eval and every resumed run decodes the same z.

  Args:
    config: the experiment config (seed).
    n: how many latents.
    latents: their size.

  Returns:
    f32[n, latents] ~ N(0, I).
  """
  return jax.random.normal(
    jax.random.fold_in(jax.random.PRNGKey(config.seed), _SAMPLE_SALT), (n, latents)
  )


def _decode_probs(state: VAEState, z, y):
  """Mean images in [0, 1] decoded from z."""
  return mean_image(
    state.opts.likelihood, state.model.apply({'params': state.params}, z, y, method='decode')
  )


def _encode_mean(state: VAEState, x, y):
  """The posterior means f32[B, latents] of images x."""
  return state.model.apply({'params': state.params}, x, y, method='encode')[0]


def sample_images(state: VAEState, config, batch) -> dict:
  """uint8 grids: 'samples' (fixed latents; for a conditional model one row per class),
  'reconstructions' (rows of test images, each followed by its reconstruction) and
  'interpolations' (each row decodes a line between the posterior means of two test images).

  Args:
    state: the VAEState.
    config: the experiment config (seed).
    batch: this process's first eval batch; its first 32 images and labels are used.

  Returns:
    {'samples', 'reconstructions', 'interpolations'}: uint8[h, w, C] grids.

  Raises:
    ValueError: the batch has fewer than 32 images (raise data.eval_batch_size).
  """
  model = state.model
  num_classes = getattr(model, 'num_classes', 0) if model.conditional else 0
  rows = num_classes or _COLS
  z = (
    fixed_latents(config, _COLS, model.latents)
    if num_classes
    else fixed_latents(config, rows * _COLS, model.latents)
  )
  y = None
  if num_classes:  # row r: class r; column c: the same latent z[c] in every row
    z = jnp.tile(z, (num_classes, 1))
    y = jnp.repeat(jnp.arange(num_classes), _COLS)
  decode, encode = parallel.jit(_decode_probs, config), parallel.jit(_encode_mean, config)
  samples = decode(state, z, y)

  need = max(_RECON_ROWS * _COLS, 2 * _INTERP_ROWS)
  real, labels = np.asarray(batch['image'])[:need], np.asarray(batch['label'])[:need]
  if real.shape[0] < need:
    raise ValueError(
      f'sample_images needs {need} eval images per process, got {real.shape[0]}; '
      f'raise data.eval_batch_size'
    )
  y_real = jnp.asarray(labels) if model.conditional else None
  x_bin, _ = observe_eval(jnp.asarray(real), state.opts)
  recon = decode(state, encode(state, x_bin, y_real), y_real)
  pairs = np.stack(
    [
      np.asarray(x_bin).reshape(_RECON_ROWS, _COLS, *real.shape[1:]),
      np.asarray(recon).reshape(_RECON_ROWS, _COLS, *real.shape[1:]),
    ],
    axis=1,
  )

  means = np.asarray(encode(state, x_bin, y_real))
  z_line = grids.interpolation_latents(
    means[:_INTERP_ROWS], means[_INTERP_ROWS : 2 * _INTERP_ROWS], _INTERP_STEPS
  )
  y_line = None if y_real is None else jnp.repeat(y_real[:_INTERP_ROWS], _INTERP_STEPS)
  line = decode(state, jnp.asarray(z_line), y_line)
  return {
    'samples': grids.make_grid(np.asarray(samples), rows),
    'reconstructions': grids.make_grid(pairs.reshape(-1, *real.shape[1:]), 2 * _RECON_ROWS),
    'interpolations': grids.make_grid(np.asarray(line), _INTERP_ROWS),
  }


TASK = Task(
  name='vae',
  config=config,
  validate=validate,
  init=init,
  train_step=train_step,
  eval_step=eval_step,
  final_eval_step=final_eval_step,
  sample=sample,
  sample_images=sample_images,
  one_optimizer=True,
)
