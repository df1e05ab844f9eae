"""What a task is: pure functions over an explicit state, and the config keys it owns.

    state = task.init(config, rng, sample_batch)
    state, metrics = task.train_step(state, batch, split)   # split: the pmap layout or None
    sums = task.eval_step(state, batch)                      # summed over the batch's real rows

The loop calls nothing else; the optional hooks are None when a task has none.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections

from jaxvision import config as config_lib
from jaxvision.errors import ConfigError

# Folded into PRNGKey(config.seed) for keys that must not depend on training (eval latents, the
# fixed binarisation of test images), so that evals at different steps compare.
EVAL_SALT = 0xE7A1

State = Any  # a flax.struct dataclass: every array that changes, plus static model and options
Batch = dict  # {'image' or 'tokens': [B, ...], 'label': i32[B]} (+ 'mask' f32[B] in evals)


@dataclasses.dataclass(frozen=True)
class Task:
  """A task of the loop.

  Attributes:
    name: what `config.task` says.
    config: its own config keys and their defaults (merged over `config.base()`).
    validate: checks of its own keys that need no data (raises errors.ConfigError).
    init: (config, rng, sample_batch) -> the initial state.
    train_step: (state, batch, split=None) -> (state, metrics); `split` is the pmap path's
      `parallel.BatchSplit`, None under jit.
    eval_step: (state, batch) -> metric sums over the batch's real rows, with their `count`.
    final_eval_step: replaces eval_step at the last step and in eval mode (expensive metrics).
    sample: (state, rng, n, labels=None) -> images in [0, 1]; generative tasks only.
    sample_images: (state, config, eval_batch) -> {name: uint8 grid}, written at every eval.
    one_optimizer: the state has one `tx`/`opt_state` over `params`, so `init_from` and `freeze`
      work.
  """

  name: str
  config: Callable[[], ml_collections.ConfigDict]
  validate: Callable[[ml_collections.ConfigDict], None]
  init: Callable[..., State]
  train_step: Callable[..., tuple[State, dict]]
  eval_step: Callable[[State, Batch], dict]
  final_eval_step: Callable[[State, Batch], dict] | None = None
  sample: Callable[..., Any] | None = None
  sample_images: Callable[..., dict] | None = None
  one_optimizer: bool = False


def check_batch(inputs, labels, ranks: tuple[int, ...] = (4,)) -> None:
  """Shape checks shared by the tasks: `inputs` of one of `ranks`, one label per example.

  Args:
    inputs: the batch's model input [B, ...].
    labels: its labels [B].
    ranks: the ranks `inputs` may have.

  Raises:
    AssertionError: (chex) a rank or shape that does not fit.
  """
  chex.assert_rank(inputs, set(ranks))
  chex.assert_shape(labels, inputs.shape[:1])


def generative_config() -> ml_collections.ConfigDict:
  """The keys every generative task has: FD/KID of samples at every eval, and --mode sample.

  Returns:
    A ConfigDict of `eval.fd_samples`, `eval.inception_weights` and `sample.n`.
  """
  c = ml_collections.ConfigDict()
  c.eval = ml_collections.ConfigDict(
    {
      'fd_samples': 0,  # samples for eval/fd and eval/kid at every eval; 0 = off
      'inception_weights': '',  # with fd_samples: an .npz of Inception-v3 variables -> eval/fid
      'fid_stats': '',  # with inception_weights: pytorch-fid's .npz of the real mu/sigma for it
    }
  )
  c.sample = ml_collections.ConfigDict({'n': 64})  # --mode sample: how many images to write
  return c


def validate_generative(config) -> None:
  """Checks the keys of `generative_config`.

  Args:
    config: an experiment config of a generative task.

  Raises:
    ConfigError: eval.fd_samples is negative or 1, or sample.n is below 1.
  """
  config_lib.check_range(
    'eval.fd_samples', config.eval.fd_samples, config_lib.AT_LEAST_0, ' (0: no FD/KID)'
  )
  if config.eval.fd_samples == 1:
    raise ConfigError(
      'eval.fd_samples=1 must be 0 (no FD/KID) or >= 2: a covariance needs two samples'
    )
  config_lib.check_range('sample.n', config.sample.n, config_lib.AT_LEAST_1)


def image_keys(images, seed: int) -> jax.Array:
  """One key per image from a fixed key and a hash of the image's 8-bit pixels: eval draws that
  are a function of the image and the seed alone, whatever the batch, sharding or step.

  Args:
    images: f32[B, ...] in [0, 1].
    seed: config.seed.

  Returns:
    B keys.
  """
  flat = jnp.round(images.reshape(images.shape[0], -1) * 255.0).astype(jnp.uint32)
  weights = jnp.arange(flat.shape[1], dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
  hashes = jnp.sum(flat * weights, axis=1, dtype=jnp.uint32)
  base = jax.random.fold_in(jax.random.PRNGKey(seed), EVAL_SALT)
  return jax.vmap(lambda h: jax.random.fold_in(base, h))(hashes)
