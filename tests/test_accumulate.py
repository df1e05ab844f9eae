"""Gradient accumulation (optim.accum_steps): k microbatches per update equal one step on the
whole batch; BatchNorm's documented difference; the pmap path; exact resume. The config errors
are in tests/test_bad_commands.py's table."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, assert_sigterm_at_4_then_resume_is, load_config
from jaxvision import experiment, tasks, train
from jaxvision.tasks import accumulate

# Plain SGD at a constant rate (its update is the gradient itself; Adam's first update is about
# sign(g), which turns float noise on near-zero gradients into full steps), no weight decay.
SGD = dict(optim__name='sgd', optim__schedule='constant', optim__weight_decay=0.0)
# Two steps with accum_steps=2 against accum_steps=1 on one device, smoke models without BatchNorm
# or dropout: measured at most 3.0e-8 apart in the params (VAE) and 2.3e-7 relative in the
# metrics (the GAN's d_real, 1.1e-7 with R1 and 2 D updates); the same at accum_steps=4. Only
# the order of float sums differs.
PARAMS = dict(rtol=1e-5, atol=2e-7)
METRICS = dict(rtol=1e-5, atol=1e-7)


def _batch(config) -> dict:
  """A fixed batch of data.batch_size random images in the config's pixel range, and labels."""
  rng = np.random.default_rng(0)
  low = -1.0 if config.data.scale == 'minus_one_one' else 0.0
  n = config.data.batch_size
  return {
    'image': jnp.asarray(rng.uniform(low, 1.0, (n, 28, 28, 1)), jnp.float32),
    'label': jnp.asarray(rng.integers(0, 10, n), jnp.int32),
  }


def _steps(config, batch, steps: int):
  """The state and metrics after `steps` jitted train steps on `batch` (one device)."""
  task = tasks.get(config.task)
  sample = jax.tree.map(lambda x: x[:1], batch)
  state = jax.jit(lambda rng: task.init(config, rng, sample))(jax.random.PRNGKey(0))
  step = jax.jit(task.train_step)
  metrics = None
  for _ in range(steps):
    state, metrics = step(state, batch)
  return jax.device_get(state), jax.device_get(metrics)


def test_microbatches_are_strided_rows():
  x = jnp.arange(12).reshape(6, 2)
  split = accumulate.microbatches({'x': x, 'none': None}, 3)
  assert split['none'] is None
  np.testing.assert_array_equal(split['x'][1], x[1::3])  # rows 1 and 4
  assert split['x'].shape == (3, 2, 2)


@pytest.mark.parametrize(
  'name, overrides',
  [
    ('cnn', dict(model__variant='plain')),  # shift augmentation on, drawn for the whole batch
    # MLP GAN: 2 D updates then G, each accumulated; R1 penalty
    ('gan', dict(model__d_dropout=0.0, gan__d_steps=2, gan__r1_gamma=1.0)),
    ('vae', {}),  # dynamic binarisation and posterior noise
    ('diffusion', {}),  # t, noise, no dropout
  ],
)
def test_accumulated_steps_equal_steps_on_the_whole_batch(make_config, name, overrides):
  batch = _batch(make_config(name))
  (whole, whole_metrics), (accum, accum_metrics) = (
    _steps(make_config(name, optim__accum_steps=k, **SGD, **overrides), batch, 2) for k in (1, 2)
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **PARAMS), accum.params, whole.params)
  assert accum_metrics.keys() == whole_metrics.keys()
  for key in whole_metrics:
    np.testing.assert_allclose(accum_metrics[key], whole_metrics[key], **METRICS, err_msg=key)


def test_batchnorm_normalises_each_microbatch_and_updates_its_averages_in_turn(make_config):
  """The smoke CNN with BatchNorm and dropout, accum_steps=2, against its definition written
  out: microbatch i is rows i::2 with dropout key fold_in(step's dropout key, i), BatchNorm runs
  on it alone and the running averages go through both microbatches in order; the update is
  the mean gradient. Not the whole batch's step: its BatchNorm sees all 32 rows at once."""
  k = 2
  config = make_config('cnn', data__augment='none', optim__accum_steps=k, **SGD)
  batch = _batch(config)
  task = tasks.get('classification')
  state = jax.jit(lambda rng: task.init(config, rng, jax.tree.map(lambda x: x[:1], batch)))(
    jax.random.PRNGKey(0)
  )
  after, metrics = jax.device_get(jax.jit(task.train_step)(state, batch))

  dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))[1]

  def loss(params, batch_stats, x, labels, key):
    logits, updates = state.model.apply(
      {'params': params, 'batch_stats': batch_stats},
      x,
      train=True,
      rngs={'dropout': key},
      mutable=['batch_stats'],
    )
    targets = optax.smooth_labels(jax.nn.one_hot(labels, 10), config.loss.label_smoothing)
    return optax.softmax_cross_entropy(logits, targets).mean(), updates['batch_stats']

  batch_stats, grads, losses = state.batch_stats, [], []
  for i in range(k):
    (value, batch_stats), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(
      state.params,
      batch_stats,
      batch['image'][i::k],
      batch['label'][i::k],
      jax.random.fold_in(dropout_key, i),
    )
    grads.append(g)
    losses.append(value)
  lr = config.optim.lr
  want = jax.tree.map(lambda p, *g: p - lr * sum(g) / k, state.params, *grads)
  tight = dict(rtol=1e-5, atol=1e-7)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tight), after.params, want)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, **tight), after.batch_stats, batch_stats
  )
  np.testing.assert_allclose(metrics['loss'], np.mean(losses), rtol=1e-6)

  # The whole batch's step normalises with the statistics of all 32 rows and moves the running
  # averages once: the first BatchNorm's running means differ (measured: by up to 0.051).
  whole, _ = _steps(make_config('cnn', data__augment='none', **SGD), batch, 1)
  first = lambda s: s.batch_stats['BatchNorm_0']['mean']
  assert np.max(np.abs(first(after) - first(whole))) > 0.01


def test_infogan_with_batchnorm_in_the_generator_stays_close_to_the_whole_batch(make_config):
  """The DCGAN InfoGAN (code loss in D and G): G's BatchNorm normalises each microbatch (in the
  D update's fakes and in the G update), so two steps with accum_steps=2 are only near k = 1's
  (measured 3.4e-6 apart in the params, G's running statistics up to 0.12)."""
  batch = _batch(make_config('dcgan'))
  (whole, _), (accum, _) = (
    _steps(make_config('dcgan', model__info_codes=10, optim__accum_steps=k, **SGD), batch, 2)
    for k in (1, 2)
  )
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), accum.params, whole.params)
  stats = map(jax.tree_util.tree_leaves, (accum.batch_stats, whole.batch_stats))
  moved = [np.max(np.abs(a - b)) for a, b in zip(*stats)]
  assert max(moved) > 0.01


@pytest.fixture(scope='module')
def accumulated_run(tmp_path_factory, tfds_dir):
  """configs/cnn.py:smoke (BatchNorm, dropout, shift augmentation) with accum_steps=2 and SGD,
  uninterrupted, under jit on the 8 devices (each microbatch of 16 split 8 ways)."""
  config = load_config('cnn', 'smoke', tfds_dir, optim__accum_steps=2, **SGD)
  workdir = str(tmp_path_factory.mktemp('accumulated'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def test_sigterm_then_resume_with_accumulation_is_bitwise_the_uninterrupted_run(
  accumulated_run, tmp_path, monkeypatch
):
  config, whole = accumulated_run
  resumed = str(tmp_path / 'resumed')
  assert_sigterm_at_4_then_resume_is(whole, config, resumed, monkeypatch)


def test_pmap_accumulates_like_jit(accumulated_run, tmp_path):
  """Microbatch i is rows i::k of the global batch under jit and of each device's rows under
  pmap: the same rows, so BatchNorm's statistics and the dropout rows agree too."""
  config, whole = accumulated_run
  pmap = config.copy_and_resolve_references()
  pmap.parallel = 'pmap'
  workdir = str(tmp_path / 'pmap')
  train.train_and_evaluate(pmap, workdir)
  params = []
  for c, w in ((config, whole), (pmap, workdir)):
    exp = experiment.setup(c, w)
    params.append(jax.device_get(experiment.restore_latest(exp)[1].params))
  tolerance = dict(rtol=2e-4, atol=2e-5)  # tests/test_parallel.py's, for reduction order
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **tolerance), *params)


def test_accumulation_lowers_the_compiled_steps_temporaries():
  """benchmarks/fsdp_memory.py's measure on a small ViT, 16 images, one device: the same state,
  and the temporaries (activations, gradients) under 0.6x with 4 microbatches (measured 19.9 ->
  6.4 MiB; docs/performance.md#gradient-accumulation for ResNet-50 and ViT-B/16)."""
  sys.path.insert(0, ROOT)
  from benchmarks import fsdp_memory

  config = fsdp_memory.vit_config(
    32, patch=4, dim=128, depth=1, heads=4, mlp_dim=256, num_classes=10
  )
  memory = {}
  for k in (1, 4):
    config.optim.accum_steps = k
    memory[k] = fsdp_memory.measure(config, (1, 1, 1), 16)
  assert memory[4]['arguments'] == memory[1]['arguments']
  assert memory[4]['temporaries'] < 0.6 * memory[1]['temporaries'], memory
