"""GAN models and task, and the generative metrics (FD, KID)."""

import dataclasses
import json
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, init_variables, lowered_programs
from jaxvision import checkpoint, parallel, tasks, train
from jaxvision import config as config_lib
from jaxvision.evaluate import generative
from jaxvision.models import gan as gan_models
from jaxvision.tasks import gan


def _state_and_batch(make_config, name='dcgan', **overrides):
  config = make_config(name, **overrides)
  rng = np.random.default_rng(0)
  batch = {
    'image': jnp.asarray(rng.uniform(-1, 1, size=(16, 28, 28, 1)), jnp.float32),
    'label': jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
  }
  return config, gan.init(config, jax.random.PRNGKey(0), batch), batch


def test_sample_grids_compile_with_the_configs_cpu_convolutions(make_config):
  """The tasks' grid helpers jit through `parallel.jit`, as the train step: with
  cpu_convolutions='xla' (the DCGAN's) no convolution is left to YNNPACK, with 'ynnpack' (XLA's
  default) some are; one jitted function per config's options."""
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  import profile_step  # a script of benchmarks/, found through sys.path

  for convs in ('xla', 'ynnpack'):
    config, state, _ = _state_and_batch(make_config, cpu_convolutions=convs)
    sample = parallel.jit(gan._sample_fixed, config)
    assert sample is parallel.jit(gan._sample_fixed, config)
    z = jnp.zeros((4, state.model.latents))
    kinds = set(profile_step.op_kinds(sample.lower(state, z, None).compile().as_text()).values())
    assert ('conv (ynn)' in kinds) == (convs == 'ynnpack'), (convs, kinds)


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3), (64, 64, 3)])
@pytest.mark.parametrize('upsample', ['subpixel', 'transpose'])
def test_dcgan_generator_and_discriminator_shapes(shape, upsample):
  model = gan_models.DCGAN(
    latents=8, g_features=4, d_features=4, image_shape=shape, upsample=upsample
  )
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 8))
  variables = init_variables(model, jax.random.PRNGKey(0), z)
  images = jax.jit(lambda v, z: model.apply(v, z, train=False, method='generate'))(variables, z)
  chex.assert_shape(images, (2, *shape))
  # each image is its latent's: two latents, two different images, two different logits
  assert float(jnp.max(jnp.abs(images[0] - images[1]))) > 1e-4
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False, method='discriminate'))(
    variables, images
  )
  chex.assert_shape(logits, (2,))
  assert abs(float(logits[0] - logits[1])) > 1e-6
  assert set(variables['params']) == {'generator', 'discriminator'}


def test_dcgan_rejects_image_sizes_it_cannot_make():
  model = gan_models.DCGAN(image_shape=(30, 30, 1))
  with pytest.raises(ValueError, match='7 \\* 2\\^n or 4 \\* 2\\^n'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 100)))


@pytest.mark.parametrize(
  'name,overrides', [('gan', {}), ('dcgan', {}), ('cgan', {}), ('dcgan', {'model__info_codes': 10})]
)
def test_train_step_moves_each_network_only_through_its_own_optimizer(make_config, name, overrides):
  # With the discriminator's learning rate at 0, only G changes, and the other way round
  # (an InfoGAN's Q head belongs to D: it moves with D only).
  for frozen, moving in (('discriminator', 'generator'), ('generator', 'discriminator')):
    lr = {'gan__d_lr' if frozen == 'discriminator' else 'gan__g_lr': 1e-30}
    config, state, batch = _state_and_batch(make_config, name, **lr, **overrides)
    new, metrics = jax.jit(gan.train_step)(state, batch)
    chex.assert_trees_all_close(new.params[frozen], state.params[frozen], atol=1e-20)
    changed = jax.tree.map(
      lambda a, b: bool(jnp.any(a != b)), new.params[moving], state.params[moving]
    )
    assert all(jax.tree.leaves(changed)), changed
    assert np.isfinite(float(metrics['d_loss'])) and np.isfinite(float(metrics['g_loss']))


def test_both_networks_move_and_ema_follows_the_generator(make_config):
  _, state, batch = _state_and_batch(make_config, 'dcgan', gan__ema_decay=0.5)
  new, _ = jax.jit(gan.train_step)(state, batch)
  for part in ('generator', 'discriminator'):
    assert any(
      jax.tree.leaves(
        jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new.params[part], state.params[part])
      )
    )
  expected = jax.tree.map(
    lambda old, g: 0.5 * old + 0.5 * g, state.ema_params, new.params['generator']
  )
  chex.assert_trees_all_close(new.ema_params, expected, rtol=1e-6)
  assert new.batch_stats and int(new.step) == 1


@pytest.mark.parametrize('loss', ['bce', 'hinge'])
def test_losses_reward_the_right_side(loss):
  good_d = gan.d_loss(loss, jnp.full((4,), 5.0), jnp.full((4,), -5.0))
  bad_d = gan.d_loss(loss, jnp.full((4,), -5.0), jnp.full((4,), 5.0))
  assert good_d < bad_d
  assert gan.g_loss(loss, jnp.full((4,), 5.0)) < gan.g_loss(loss, jnp.full((4,), -5.0))
  if loss == 'bce':  # -log sigmoid(x) and -log(1 - sigmoid(x)) exactly
    np.testing.assert_allclose(
      gan.d_loss(loss, jnp.zeros(3), jnp.zeros(3)), 2 * np.log(2), rtol=1e-6
    )


def test_gan_state_checkpoint_round_trip(make_config, tmp_path):
  _, state, batch = _state_and_batch(make_config, 'cgan')
  state, _ = jax.jit(gan.train_step)(state, batch)
  ckpt = checkpoint.Checkpointer(str(tmp_path), 2)
  ckpt.save(1, state)
  ckpt.wait()
  _, fresh, _ = _state_and_batch(make_config, 'cgan')  # the step-0 state as the target
  step, restored = ckpt.restore(fresh)
  ckpt.close()
  assert step == 1 and int(restored.step) == 1
  chex.assert_trees_all_equal(
    jax.device_get(jax.tree.leaves(restored)), jax.device_get(jax.tree.leaves(state))
  )


def test_conditional_sample_grid_has_a_row_per_class(make_config):
  config, state, _ = _state_and_batch(make_config, 'cgan')
  grid = gan.sample_images(state, config, None)['samples']
  assert grid.dtype == np.uint8 and grid.shape[0] == 10 * 30 + 2  # 10 rows of 28 px + 2 px borders
  sample = jax.jit(gan.sample, static_argnums=2)
  samples = sample(state, jax.random.PRNGKey(0), 20)
  chex.assert_shape(samples, (20, 28, 28, 1))
  # without labels the classes cycle; the same latents with other labels give other images
  labels = jnp.arange(20) % 10
  np.testing.assert_array_equal(samples, sample(state, jax.random.PRNGKey(0), 20, labels))
  shifted = sample(state, jax.random.PRNGKey(0), 20, (labels + 1) % 10)
  assert float(jnp.min(jnp.max(jnp.abs(samples - shifted), axis=(1, 2, 3)))) > 1e-4


def test_infogan_codes_shape_the_images_and_q_learns_to_read_them(make_config):
  # G's images depend on the code; the code's cross-entropy, which G and Q both minimise,
  # falls well below log K within a few dozen steps; samples cycle through the codes.
  config, state, batch = _state_and_batch(
    make_config, 'dcgan', model__info_codes=10, gan__info_weight=2.0, optim__lr=2e-3
  )
  z = jnp.zeros((10, state.model.latents))
  images = state.model.apply(
    {'params': state.params, 'batch_stats': state.batch_stats},
    z,
    jnp.arange(10),
    train=False,
    method='generate',
  )
  assert float(jnp.min(jnp.abs(images[0] - images[1:]).max(axis=(1, 2, 3)))) > 1e-4
  step = jax.jit(gan.train_step)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics['code_loss']))
  assert losses[0] > 0.9 * np.log(10) and np.mean(losses[-5:]) < 0.5 * np.log(10), losses
  grid = gan.sample_images(state, config, None)['samples']
  assert grid.shape[0] == 10 * 30 + 2  # a row per code


def test_r1_penalty_is_the_squared_input_gradient_and_enters_d_loss_only(make_config):
  # For a linear D(x) = <w, x> the penalty is ||w||^2 for every image.
  w = jax.random.normal(jax.random.PRNGKey(1), (28, 28, 1))
  real = jax.random.normal(jax.random.PRNGKey(2), (5, 28, 28, 1))
  penalty = gan.r1_penalty(lambda x: jnp.sum(x * w, axis=(1, 2, 3)), real)
  np.testing.assert_allclose(penalty, jnp.sum(w**2), rtol=1e-5)
  # In the step: another D update than without it, and the penalty reported.
  _, state, batch = _state_and_batch(make_config, 'dcgan')
  _, with_r1, _ = _state_and_batch(make_config, 'dcgan', gan__r1_gamma=10.0)
  plain, _ = jax.jit(gan.train_step)(state, batch)
  new, metrics = jax.jit(gan.train_step)(with_r1, batch)
  assert float(metrics['r1']) > 0
  diff = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))),
    new.params['discriminator'],
    plain.params['discriminator'],
  )
  assert max(jax.tree.leaves(diff)) > 1e-6


def test_gan_validation_is_one_line(make_config):
  for overrides, match in (
    (dict(data__scale='zero_one'), 'minus_one_one'),
    (dict(gan__loss='wasserstein'), 'gan.loss'),
    (dict(model__info_codes=10, model__num_classes=10), 'unconditional'),
    (dict(gan__r1_gamma=-1.0), 'r1_gamma'),
    (dict(model__name='cnn'), 'not a GAN'),
  ):
    config = make_config('dcgan', **overrides)
    if overrides.get('model__name') == 'cnn':
      config.model = tasks.base_config('gan').model  # {'name': 'cnn'}
    with pytest.raises(config_lib.ConfigError, match=match):
      tasks.validate(config)


# ---------------------------------------------------------------- FD / KID


def test_frechet_distance_of_a_set_with_itself_is_zero():
  f = np.random.default_rng(0).normal(size=(500, 16))
  assert abs(generative.frechet_distance(f, f)) < 1e-6


def test_frechet_distance_matches_the_closed_form_for_gaussians():
  rng = np.random.default_rng(1)
  d = 6
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  a = rng.normal(size=(d, d))
  s1 = a @ a.T + np.eye(d)
  s2 = np.diag(rng.uniform(0.5, 2.0, d))
  # Commuting case: diagonal covariances give sum((sqrt(v1) - sqrt(v2))^2).
  v1, v2 = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
  closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  assert generative.gaussian_frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(
    closed
  )
  # General case: tr((S1 S2)^1/2) = tr((S2^1/2 S1 S2^1/2)^1/2).
  r = np.sqrt(s2)
  w, _ = np.linalg.eigh(r @ s1 @ r)
  general = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(w))
  assert generative.gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(general, rel=1e-6)
  # From samples, the estimate converges to the population value.
  x = rng.multivariate_normal(mu1, s1, 40000)
  y = rng.multivariate_normal(mu2, s2, 40000)
  assert generative.frechet_distance(x, y) == pytest.approx(general, rel=0.05)


def test_kid_is_unbiased_on_identical_distributions_and_positive_when_they_differ():
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))
  same = generative.kernel_inception_distance(x, y, subsets=20, subset_size=500)
  shifted = generative.kernel_inception_distance(x, y + 0.5, subsets=20, subset_size=500)
  assert abs(same) < 0.02 * shifted and shifted > 0
  # Unbiased: identical sets give ~0 (a biased estimator would give a clearly positive value).
  assert (
    abs(generative.kernel_inception_distance(x, x, subsets=5, subset_size=1000)) < 0.01 * shifted
  )


# ------------------------------------------------------- synthetic training data


def test_synthetic_samples_join_or_replace_the_train_split(make_config, tmp_path):
  from jaxvision.data import pipeline

  rng = np.random.default_rng(0)
  path = str(tmp_path / 'fake.npz')
  np.savez(
    path, images=rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8), labels=np.arange(30) % 10
  )
  real = pipeline.load_split(make_config('cnn').data, 'train')
  added = pipeline.load_split(make_config('cnn', data__synthetic__path=path).data, 'train')
  only = pipeline.load_split(
    make_config('cnn', data__synthetic__path=path, data__synthetic__mode='only').data, 'train'
  )
  assert (added.size, only.size) == (real.size + 30, 30)
  np.testing.assert_array_equal(
    added.read(np.arange(real.size + 28, real.size + 30))['label'], [8, 9]
  )
  np.testing.assert_array_equal(added.read(np.arange(5))['image'], real.read(np.arange(5))['image'])
  assert 'synthetic[only]' in only.fingerprint and only.fingerprint != added.fingerprint
  test = pipeline.load_split(
    make_config('cnn', data__synthetic__path=path, data__synthetic__mode='only').data, 'test'
  )
  assert test.size == 2000  # the eval split stays real
  # real_fraction: the real split repeated so that it is about that share of the mixture
  mixed = make_config(
    'cnn', data__per_class=2, data__synthetic__path=path, data__synthetic__real_fraction=0.5
  )
  mixed = pipeline.load_split(mixed.data, 'train')  # 20 real, 30 fake: 2 copies of the real ones
  assert mixed.size == 70 and 'real_x2' in mixed.fingerprint
  labels = mixed.read(np.arange(70))['label']
  np.testing.assert_array_equal(labels[:20], labels[20:40])
  np.testing.assert_array_equal(labels[40:], np.arange(30) % 10)

  np.savez(path, images=np.zeros((3, 32, 32, 3), np.uint8), labels=np.zeros(3))
  with pytest.raises(pipeline.DataError, match='uint8 images of \\(32, 32, 3\\)'):
    pipeline.load_split(make_config('cnn', data__synthetic__path=path).data, 'train')
  np.savez(path, images=np.zeros((3, 28, 28, 1), np.uint8))
  with pytest.raises(pipeline.DataError, match='conditional generator'):
    pipeline.load_split(make_config('cnn', data__synthetic__path=path).data, 'train')


class _ImageBank:
  """A stand-in generator task whose 'samples' are drawn from a fixed bank of images."""

  @staticmethod
  def sample(state, rng, n, labels=None):
    del labels
    return state[jax.random.choice(rng, state.shape[0], (n,), replace=False)]


def _head(split, n: int):
  """The first n examples of a split, as a split."""
  read = split.read
  return dataclasses.replace(split, size=n, read=lambda idx: read(np.asarray(idx)))


def test_domain_features_separate_real_digits_from_noise(make_config):
  """FD on the committed domain features against a reference of 1,000 test digits. Two "generators"
  of real digits at the same sample size: 1,000 train digits (which the feature network was trained
  on) and 1,000 other test digits (which it never saw) score alike, within 2x of each other; noise
  scores over 20x either."""
  from jaxvision.data import pipeline

  features = generative.DomainFeatures()
  assert features.info['test_metrics']['eval/accuracy'] >= 0.98
  config = make_config('dcgan', eval__fd_samples=1000)
  train_split = pipeline.load_split(config.data, 'train')
  test_split = pipeline.load_split(config.data, 'test')
  reference = _head(test_split, 1000)
  metrics = generative.GenerativeMetrics(
    config, _ImageBank.sample, train_split, reference, features
  )
  images = lambda split, idx: jnp.asarray(split.read(idx)['image'], jnp.float32) / 255.0
  seen = metrics(images(train_split, np.arange(1000)))
  unseen = metrics(images(test_split, np.arange(1000, 2000)))
  noise = metrics(jax.random.uniform(jax.random.PRNGKey(0), (1000, 28, 28, 1)))
  assert 0.5 < unseen['eval/fd'] / seen['eval/fd'] < 2.0, (seen, unseen)
  for real in (seen, unseen):
    assert noise['eval/fd'] > 20 * real['eval/fd'] > 0
    assert noise['eval/kid'] > 20 * abs(real['eval/kid'])
  with pytest.raises(config_lib.ConfigError, match='28x28x1 digits'):
    bad = dataclasses.replace(train_split, image_shape=(32, 32, 3))
    generative.GenerativeMetrics(config, _ImageBank.sample, bad, reference, features)


def test_fd_and_kid_run_inside_training_with_a_real_generator(make_config, tmp_path):
  """The DCGAN smoke run with eval.fd_samples > 0: every eval reports FD, KID, precision and recall
  of the EMA generator's samples next to their real references, and run.json names the feature
  network; an untrained generator is far from the digits, and training moves it."""
  config = make_config('dcgan', eval__fd_samples=500)
  train.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'metrics.jsonl', encoding='utf-8') as f:
    evals = [e for e in map(json.loads, f) if 'eval/fd' in e]
  assert [e['step'] for e in evals] == [3, 6]
  for e in evals:
    assert e['eval/fd'] > 10 * e['eval/fd_floor'] > 0 and e['eval/kid'] > e['eval/kid_floor']
    assert e['eval/fd_half'] > 10 * e['eval/fd_halves'] > 0  # 500 samples against 500 test
    assert e['eval/precision'] < 0.5 * e['eval/precision_real']  # untrained: not yet digits
  for key in ('fd_floor', 'fd_halves', 'precision_real', 'recall_real'):
    assert evals[0][f'eval/{key}'] == evals[1][f'eval/{key}']  # the real data's, fixed
  info = json.loads((tmp_path / 'run.json').read_text())['feature_networks']['domain_features']
  assert info['params_sha256'] == generative.DomainFeatures().info['params_sha256']
  assert evals[0]['eval/fd'] != evals[1]['eval/fd']  # the generator moved


def test_ema_generator_gets_its_own_batchnorm_statistics(make_config):
  _, state, batch = _state_and_batch(make_config, 'dcgan')
  state, _ = jax.jit(gan.train_step)(state, batch)
  stats = gan.ema_batch_stats(state)
  # The same pass with momentum 0 leaves exactly the batch statistics in the running averages.
  model0 = state.model.clone(bn_momentum=0.0)
  key = jax.random.fold_in(jax.random.PRNGKey(state.opts.seed), gan._STANDING_SALT)
  z = jax.random.normal(key, (gan._STANDING_BATCH, model0.latents))
  _, updates = model0.apply(
    {'params': {'generator': state.ema_params}, 'batch_stats': state.batch_stats},
    z,
    train=True,
    method='generate',
    mutable=['batch_stats'],
  )
  chex.assert_trees_all_close(stats, updates['batch_stats'], rtol=1e-4, atol=1e-6)
  same = jax.tree.map(lambda a, b: bool(jnp.allclose(a, b)), stats, state.batch_stats)
  assert not all(jax.tree.leaves(same))  # not the raw generator's running statistics


def test_inception_fid_path_on_random_weights(tmp_path):
  """The optional FID network: a user-supplied weights file, 2048-d features, FID symmetric and ~0
  on a set against itself; a wrong file is refused in one line. (75x75 input to keep it fast.)"""
  from jaxvision.config import ConfigError
  from jaxvision.models import inception

  shapes = generative.flatten_variables(
    jax.eval_shape(
      inception.InceptionV3(resize=75).init, jax.random.PRNGKey(0), jnp.zeros((1, 75, 75, 3))
    )
  )
  rng = np.random.default_rng(0)  # random weights, without compiling the initialiser
  flat = {
    k: (
      np.ones(v.shape, np.float32)
      if k.endswith(('/var', '/scale'))
      else rng.normal(0.0, 0.05, v.shape).astype(np.float32)
    )
    for k, v in shapes.items()
  }
  # torchvision's inception_v3: 27,161,264 params, less fc (2,049,000) and AuxLogits (3,326,696)
  assert (
    sum(v.size for k, v in flat.items() if k.startswith('params/'))
    == 27_161_264 - 2_049_000 - 3_326_696
  )
  path = str(tmp_path / 'inception.npz')
  np.savez(path, **flat)
  features = generative.InceptionFeatures(path, batch=6, resize=75)
  a, b = rng.uniform(size=(12, 28, 28, 1)), rng.uniform(size=(12, 32, 32, 3)) ** 2
  fa = features(a)
  with lowered_programs() as lowered:  # images of another size lower their resize, not the network
    fb = features(b)
  assert len(lowered) == 1 and 'preprocess' in lowered[0], lowered
  assert fa.shape == (12, 2048) and fb.shape == (12, 2048) and np.isfinite(fa).all()
  assert generative.frechet_distance(fa, fb) == pytest.approx(
    generative.frechet_distance(fb, fa), rel=1e-9
  )
  assert abs(generative.frechet_distance(fa, fa)) < 1e-6 * generative.frechet_distance(fa, fb)
  del flat['params/Mixed_7c/branch_pool/conv/kernel']
  np.savez(path, **flat)
  with pytest.raises(ConfigError, match='Mixed_7c/branch_pool/conv/kernel is missing') as e:
    generative.InceptionFeatures(path)
  assert '\n' not in str(e.value)
  with pytest.raises(ConfigError, match="eval.inception_weights='/no/such.npz' is not a file") as e:
    generative.InceptionFeatures('/no/such.npz')
  assert '\n' not in str(e.value)
