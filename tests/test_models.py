"""Model shapes and the classification task's pure functions."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from conftest import init_variables
from jaxvision import config as config_lib
from jaxvision import models, tasks
from jaxvision.models import cnn
from jaxvision.tasks import classification


def test_forced_cpu_devices():
  assert jax.device_count() == 8


@pytest.mark.parametrize('variant', cnn.VARIANTS)
@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
def test_cnn_output_shapes(variant, shape):
  model = cnn.CNN(num_classes=10, variant=variant)
  x = jnp.zeros((3, *shape))
  variables = init_variables(model, {'params': jax.random.PRNGKey(0)}, x, train=False)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  chex.assert_shape(out, (3, 10))
  assert ('batch_stats' in variables) == (variant == 'bn_dropout')
  # conv32 -> conv64 -> pool -> fc128 -> fc10
  kernels = [p.shape for p in jax.tree.leaves(variables['params']) if p.ndim in (2, 4)]
  h = (shape[0] - 4) // 2
  assert kernels == [(3, 3, shape[2], 32), (3, 3, 32, 64), (h * h * 64, 128), (128, 10)]


def test_conv_impls_share_parameters_and_outputs():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  fast, ref = cnn.CNN(conv_impl='im2col'), cnn.CNN(conv_impl='xla')
  variables = init_variables(fast, {'params': jax.random.PRNGKey(0)}, x, train=False)
  chex.assert_trees_all_equal_shapes(
    variables, jax.eval_shape(lambda: ref.init({'params': jax.random.PRNGKey(0)}, x, train=False))
  )
  np.testing.assert_allclose(
    fast.apply(variables, x, train=False),
    ref.apply(variables, x, train=False),
    rtol=1e-4,
    atol=1e-4,
  )


def test_models_init_draws_the_variables_of_model_init_bit_for_bit():
  # models.init draws every parameter flat and reshapes it (XLA:CPU compiles threefry's N-d
  # index arithmetic slowly); the variables must be model.init's own.
  model = cnn.CNN(num_classes=10, variant='bn_dropout')
  x = jnp.zeros((2, 28, 28, 1))
  rngs = {'params': jax.random.PRNGKey(3), 'dropout': jax.random.PRNGKey(4)}
  ours = jax.jit(lambda r: models.init(model, r, x, train=False))(rngs)
  theirs = jax.jit(lambda r: model.init(r, x, train=False))(rngs)
  chex.assert_trees_all_equal(ours, theirs)
  assert all(
    np.std(k) > 0 for k in jax.tree.leaves(ours['params']) if k.ndim > 1
  )  # random, not zeros
  one_key = jax.jit(lambda r: models.init(model, r, x, train=False))(
    jax.random.PRNGKey(3)
  )  # = {'params': r}
  chex.assert_trees_all_equal(one_key, ours)


def _state_and_batch(make_config, **overrides):
  config = make_config('cnn', **overrides)
  rng = np.random.default_rng(0)
  batch = {
    'image': jnp.asarray(rng.uniform(size=(32, 28, 28, 1)), jnp.float32),
    'label': jnp.asarray(rng.integers(0, 10, 32), jnp.int32),
  }
  return classification.init(config, jax.random.PRNGKey(0), batch), batch


def test_train_steps_lower_the_loss_on_a_fixed_batch(make_config):
  state, batch = _state_and_batch(
    make_config,
    optim__lr=3e-3,
    optim__schedule='constant',
    model__variant='plain',
    data__augment='none',
    loss__label_smoothing=0.0,
  )
  step = jax.jit(classification.train_step)
  losses = []
  for _ in range(25):
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 25


def test_train_step_randomness_comes_from_state_key_and_step(make_config):
  state, batch = _state_and_batch(make_config)
  step = jax.jit(classification.train_step)
  a, _ = step(state, batch)
  b, _ = step(state, batch)
  chex.assert_trees_all_equal(a.params, b.params)  # same state and batch: same result
  other, _ = step(state.replace(rng=jax.random.PRNGKey(7)), batch)
  assert not np.array_equal(jax.tree.leaves(other.params)[0], jax.tree.leaves(a.params)[0])


def test_eval_step_sums_only_real_rows(make_config):
  state, batch = _state_and_batch(make_config)
  full = classification.eval_step(state, {**batch, 'mask': jnp.ones(32)})
  half = classification.eval_step(state, {**batch, 'mask': jnp.arange(32) < 16})
  first = classification.eval_step(
    state, {k: v[:16] for k, v in batch.items()} | {'mask': jnp.ones(16)}
  )
  assert float(full['count']) == 32 and float(half['count']) == 16
  np.testing.assert_allclose(half['loss'], first['loss'], rtol=1e-5)
  np.testing.assert_allclose(half['accuracy'], first['accuracy'])


def test_model_registry_rejects_unknown_fields(make_config):
  config = make_config('cnn')
  with config.unlocked():
    config.model.widht = 3
  with pytest.raises(config_lib.ConfigError, match='model.widht is not a field of model .cnn.'):
    tasks.validate(config)
  assert isinstance(models.get(make_config('cnn').model), cnn.CNN)


@pytest.mark.parametrize('name', ['resnet', 'vit'])
def test_model_switches_must_be_bools(make_config, name):
  """model.remat (like every field typed bool) is True or False: a config that writes 1 or 'yes'
  is refused in one line, where the number checks would have taken 1 for a width. (An override
  of a key the config holds is type-checked by ml_collections already.)"""
  config = make_config(name)
  assert config.model.remat is False and models.defaults(name)['remat'] is False
  tasks.validate(config)
  config.model.remat = True
  tasks.validate(config)
  for bad in (1, 0, 'yes'):
    config.model = ml_collections.ConfigDict({**config.model.to_dict(), 'remat': bad})
    with pytest.raises(
      config_lib.ConfigError, match=rf'^model.remat={bad!r} must be True or False$'
    ):
      tasks.validate(config)
