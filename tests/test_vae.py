"""VAE models, task maths, sample grids and the three configs end to end."""

import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from conftest import init_variables
from jaxvision import config as config_lib
from jaxvision import grids, tasks, train
from jaxvision.data import pipeline
from jaxvision.models import vae as vae_models
from jaxvision.tasks import vae

GRIDS = ('samples', 'reconstructions', 'interpolations')


def _batch(config, n=64, start=0):
  split = pipeline.load_split(config.data, 'test')
  batch = pipeline.preprocess(split.read(np.arange(start, start + n)), 'zero_one')
  batch['mask'] = np.ones((n,), np.float32)
  return batch


def _init(config, batch):
  return vae.init(config, jax.random.PRNGKey(config.seed), {k: v[:1] for k, v in batch.items()})


@pytest.mark.parametrize('name', ['vae', 'conv_vae', 'cvae'])
def test_smoke_preset_end_to_end(make_config, tmp_path, name):
  config = make_config(name)
  workdir = str(tmp_path)
  final = train.train_and_evaluate(config, workdir)
  assert set(final) == {'eval/neg_elbo', 'eval/recon', 'eval/kl', 'eval/nll_iwae'}
  assert all(np.isfinite(v) for v in final.values())
  assert final['eval/neg_elbo'] == pytest.approx(final['eval/recon'] + final['eval/kl'], rel=1e-5)
  assert 0 < final['eval/nll_iwae'] < 784 * math.log(2) * 2 and final['eval/kl'] >= 0
  for step in (3, 6):
    for g in GRIDS:
      png = Image.open(os.path.join(workdir, 'samples', f'{g}_step_{step}.png'))
      assert png.mode == 'L' and min(png.size) > 28
  rows = 10 if name == 'cvae' else 8  # one row per class for the conditional model
  assert Image.open(os.path.join(workdir, 'samples', 'samples_step_6.png')).size[1] == rows * 30 + 2
  acc = event_accumulator.EventAccumulator(workdir)
  acc.Reload()
  assert set(GRIDS) <= set(acc.Tags()['images'])
  assert {'train/neg_elbo', 'eval/neg_elbo', 'eval/nll_iwae'} <= set(acc.Tags()['scalars'])


def test_kl_and_log_densities_match_closed_forms():
  mean = jnp.array([[1.0, -2.0, 0.0]])
  var = jnp.array([[4.0, 1.0, 0.25]])
  want = 0.5 * np.sum(var + mean**2 - 1.0 - np.log(var))
  np.testing.assert_allclose(vae.kl_to_standard_normal(mean, jnp.log(var)), [want], rtol=1e-6)
  assert vae.kl_to_standard_normal(jnp.zeros((1, 5)), jnp.zeros((1, 5)))[0] == 0.0
  # KL = E_q[log q(z) - log p(z)], by Monte Carlo with the task's log densities
  z = mean + jnp.sqrt(var) * jax.random.normal(jax.random.PRNGKey(0), (200_000, 3))
  mc = jnp.mean(vae.log_normal(z, mean, jnp.log(var)) - vae.log_normal(z, 0.0, 0.0))
  assert float(mc) == pytest.approx(float(want), abs=0.03)
  # Bernoulli: log p(x) = sum x log s(l) + (1 - x) log(1 - s(l))
  logits = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 4, 1)) * 3
  x = (jax.random.uniform(jax.random.PRNGKey(2), logits.shape) < 0.5).astype(jnp.float32)
  p = 1 / (1 + np.exp(-np.asarray(logits, np.float64)))
  ref = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
  np.testing.assert_allclose(vae.log_bernoulli(logits, x), ref, rtol=1e-5)


def test_discretized_logistic_is_a_distribution_over_256_levels():
  levels = jnp.arange(256, dtype=jnp.float32) / 255.0
  x = levels.reshape(1, 16, 16, 1)  # every 8-bit value once
  for mean, log_scale in ((0.1, -2.0), (-0.9, -4.5), (0.99, 0.5), (0.3, -7.0)):
    out = jnp.concatenate([jnp.full_like(x, mean), jnp.full_like(x, log_scale)], axis=-1)
    # log P of each level separately: sum over the image of one pixel per level
    per_level = jax.vmap(
      lambda xi, out=out: vae.log_discretized_logistic(out[:, :1, :1], xi.reshape(1, 1, 1, 1))
    )(levels)
    assert float(jnp.sum(jnp.exp(per_level))) == pytest.approx(1.0, abs=2e-3)
    # and the image's log P is the sum of its pixels' (one level per pixel)
    assert float(vae.log_discretized_logistic(out, x)[0]) == pytest.approx(
      float(jnp.sum(per_level)), rel=1e-4
    )
  # A wide logistic: each interior bin holds CDF(edge+) - CDF(edge-) of the continuous logistic.
  mean, scale = 0.2, 0.3
  out = jnp.concatenate(
    [jnp.full((1, 1, 1, 1), mean), jnp.full((1, 1, 1, 1), np.log(scale))], axis=-1
  )
  cdf = lambda t: 1.0 / (1.0 + np.exp(-(t - mean) / scale))
  for k in (1, 100, 254):
    want = np.log(cdf(2 * k / 255 - 1 + 1 / 255) - cdf(2 * k / 255 - 1 - 1 / 255))
    got = vae.log_discretized_logistic(out, jnp.full((1, 1, 1, 1), k / 255.0))[0]
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_logistic_likelihood_trains_on_colour_mock_data(make_config, tmp_path):
  """conv_vae:cifar10 as written (model shrunk) on TFDS mock data: 8-bit colour, no binarisation."""
  config = make_config(
    'conv_vae',
    'cifar10',
    data__download=True,
    data__tfds_dir=str(tmp_path / 'tfds'),
    data__batch_size=16,
    data__eval_batch_size=64,
    train__steps=2,
    train__log_every=1,
    train__eval_every=2,
    train__ckpt_every=2,
    model__features=(8, 8, 8),
    model__hidden=16,
    model__latents=4,
    eval__iwae_k=4,
    eval__iwae_chunk=2,
  )
  with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
    final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  # 8-bit logistic nats: far above a binary image's 3072 * log 2 bound would mean binarisation
  # leaked in
  assert (
    np.isfinite(final['eval/neg_elbo']) and final['eval/nll_iwae'] <= final['eval/neg_elbo'] + 1e-3
  )
  assert final['eval/neg_elbo'] > 3072 * np.log(2)
  assert (tmp_path / 'run' / 'samples' / 'samples_step_2.png').exists()


def test_eval_neg_elbo_is_recon_plus_kl_of_the_model(make_config):
  config = make_config('vae')
  batch = _batch(config, 16)
  state = _init(config, batch)
  sums = jax.jit(vae.eval_step)(state, batch)
  x, keys = vae.binarize_eval(jnp.asarray(batch['image']), config.seed)
  mean, logvar = state.model.apply({'params': state.params}, x, method='encode')
  eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 2), (state.model.latents,)))(
    keys
  )
  logits = state.model.apply(
    {'params': state.params}, mean + jnp.exp(0.5 * logvar) * eps, method='decode'
  )
  p = np.asarray(jax.nn.sigmoid(logits), np.float64)
  recon = -np.sum(np.where(np.asarray(x) > 0.5, np.log(p), np.log1p(-p)))
  kl = float(np.sum(0.5 * (np.exp(logvar) + mean**2 - 1 - logvar)))
  assert float(sums['recon']) == pytest.approx(recon, rel=1e-4)
  assert float(sums['kl']) == pytest.approx(kl, rel=1e-4)
  assert float(sums['count']) == 16


def test_eval_binarisation_is_fixed_per_image(make_config):
  config = make_config('vae')
  batch = _batch(config, 32)
  state = _init(config, batch)
  step = jax.jit(vae.final_eval_step)
  whole = step(state, batch)
  swapped = {k: np.concatenate([v[16:], v[:16]]) for k, v in batch.items()}
  halves = [
    step(state, {k: v[s] for k, v in swapped.items()}) for s in (slice(0, 16), slice(16, 32))
  ]
  for key in ('neg_elbo', 'nll_iwae'):
    assert float(halves[0][key] + halves[1][key]) == pytest.approx(float(whole[key]), rel=1e-5)
  x, _ = vae.binarize_eval(jnp.asarray(batch['image']), config.seed)
  assert set(np.unique(x)) == {0.0, 1.0}
  assert abs(float(x.mean()) - float(batch['image'].mean())) < 0.01


def test_loss_decreases_and_iwae_bound_is_tighter(make_config):
  config = make_config('vae', optim__lr=3e-3, eval__iwae_k=200, eval__iwae_chunk=50)
  batch = _batch(config, 64)
  state = _init(config, batch)
  train_step, final_eval = jax.jit(vae.train_step), jax.jit(vae.final_eval_step)
  before = final_eval(state, batch)
  for _ in range(60):
    state, metrics = train_step(state, batch)
  after = final_eval(state, batch)
  assert int(state.step) == 60 and np.isfinite(float(metrics['loss']))
  assert float(after['neg_elbo']) < float(before['neg_elbo']) - 64 * 50
  for sums in (before, after):  # IWAE-k <= ELBO, averaged over the images
    assert float(sums['nll_iwae']) < float(sums['neg_elbo'])
  assert float(after['nll_iwae']) > 0


def test_kl_warmup_and_beta(make_config):
  config = make_config('vae', loss__beta=0.5, loss__kl_warmup_steps=10)
  batch = _batch(config, 8)
  state = _init(config, batch)
  assert float(vae.kl_weight(state.opts, jnp.int32(0))) == 0.0
  assert float(vae.kl_weight(state.opts, jnp.int32(5))) == pytest.approx(0.25)
  assert float(vae.kl_weight(state.opts, jnp.int32(50))) == pytest.approx(0.5)
  _, m = jax.jit(vae.train_step)(state.replace(step=jnp.int32(5)), batch)
  assert float(m['loss']) == pytest.approx(float(m['recon'] + 0.25 * m['kl']), rel=1e-5)


@pytest.mark.parametrize('name', ['vae', 'cvae'])
def test_fixed_latent_grid_does_not_depend_on_training_rng(make_config, name):
  config = make_config(name)
  batch = _batch(config, 64)
  state = _init(config, batch)
  first = vae.sample_images(state, config, batch)
  again = vae.sample_images(
    state.replace(rng=jax.random.PRNGKey(123), step=jnp.int32(77)), config, _batch(config, 64)
  )
  chex.assert_trees_all_equal(first, again)
  assert first['samples'].dtype == np.uint8 and first['samples'].shape[-1] == 1
  other_seed = vae.sample_images(state, make_config(name, seed=1), batch)
  assert not np.array_equal(first['samples'], other_seed['samples'])


def test_model_shapes_and_labels():
  x = jnp.zeros((3, 32, 32, 3))
  conv = vae_models.ConvVAE(latents=5, features=(8, 16), image_shape=(32, 32, 3), conv_impl='xla')
  v = init_variables(conv, jax.random.PRNGKey(0), x)
  logits, mean, logvar = jax.jit(conv.apply)(v, x)
  chex.assert_shape(logits, (3, 32, 32, 3))
  chex.assert_shape([mean, logvar], (3, 5))
  cond = vae_models.ConditionalVAE(latents=4, hidden=16)
  y = jnp.array([0, 3, 9])
  v = init_variables(cond, jax.random.PRNGKey(0), jnp.zeros((3, 28, 28, 1)), y)
  decode = jax.jit(lambda v, z, y: cond.apply(v, z, y, method='decode'))
  out = [decode(v, jnp.zeros((3, 4)), jnp.full((3,), c)) for c in (0, 9)]
  assert not np.allclose(out[0], out[1])  # the label reaches the decoder
  with pytest.raises(ValueError, match='needs labels'):
    cond.apply(v, jnp.zeros((3, 4)), method='decode')
  with pytest.raises(ValueError, match='divisible by 4'):
    vae_models.ConvVAE(image_shape=(30, 30, 1)).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 1))
    )


def test_grids():
  images = np.linspace(0, 1, 5 * 4 * 3 * 1).reshape(5, 4, 3, 1)
  grid = grids.make_grid(images, rows=2, pad=1, pad_value=7)
  assert grid.shape == (2 * 5 + 1, 3 * 4 + 1, 1) and grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[1:5, 1:4], grids.to_uint8(images[0]))
  np.testing.assert_array_equal(grid[6:10, 5:8], grids.to_uint8(images[4]))
  assert (grid[6:10, 9:12] == 7).all()  # the empty sixth cell
  z = grids.interpolation_latents(np.zeros((2, 3)), np.ones((2, 3)), 5)
  np.testing.assert_allclose(z[:5, 0], [0, 0.25, 0.5, 0.75, 1])


@pytest.mark.parametrize(
  'override, message',
  [
    ({'data__scale': 'minus_one_one'}, 'data.scale=zero_one'),
    ({'eval__iwae_k': 1000, 'eval__iwae_chunk': 300}, 'must divide'),
    ({'eval__iwae_k': -1}, 'eval.iwae_k=-1'),
    ({'model': None}, 'is not a VAE'),
    ({'task': None}, r"task='vae' needs its keys \(eval.fd_samples, "),
    ({'loss__beta': -1.0}, 'loss.beta'),
    (
      {'loss__likelihood': 'gaussian'},
      "loss.likelihood='gaussian' is not allowed; use one of: bernoulli, logistic",
    ),
  ],
)
def test_bad_configs_are_one_line_errors(make_config, override, message):
  if 'model' in override:  # a classifier in a VAE config
    config = make_config('vae')
    config.model = make_config('cnn').model
  elif 'task' in override:  # a classifier's config told it is a VAE
    config = make_config('cnn')
    config.task = 'vae'
  else:
    config = make_config('vae', **override)
  with pytest.raises(config_lib.ConfigError, match=message) as e:
    tasks.validate(config)
  assert '\n' not in str(e.value)
