"""Mixed precision, config.dtype='bfloat16': the models compute in bf16, while parameters,
optimizer state, BatchNorm statistics, the losses and the checkpoint stay float32; a bf16 run
tracks the float32 run of the same config."""

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from jax.extend import core

from conftest import load_config, run_py
from jaxvision import checkpoint, experiment, models, tasks, writers
from jaxvision.data import pipeline
from jaxvision.errors import ConfigError
from jaxvision.models import layers

BF16 = jnp.dtype(jnp.bfloat16)
F32 = jnp.dtype(jnp.float32)

# One smoke preset per model family of every task: classification (cnn, resnet, vit, attention,
# lstm, cnn_rnn), gan (MLP; DCGAN; conditional DCGAN, projection D), vae (MLP, conv,
# conditional) and diffusion.
CONFIGS = (
  'cnn',
  'resnet',
  'vit',
  'attention',
  'lstm',
  'cnn_rnn',
  'gan',
  'dcgan',
  'cgan',
  'vae',
  'conv_vae',
  'cvae',
  'diffusion',
)
TOKENS = {'model__vocab_size': 50, 'model__input_shape': (12,)}  # the LSTM on token ids

# The largest relative difference allowed between a bf16 train step's loss (and a GAN's d_loss
# and g_loss) and the float32 run's at the same step, over the first STEPS steps of each smoke
# preset, and between their eval losses on 200 test images after them. Measured (CPU, jax
# 0.10.2): train 0.32 % (cnn), a GAN's d_loss and g_loss <= 0.29 % (gan), every other loss
# <= 0.06 %; eval 0.12 % (cnn), <= 0.06 % for the others. 1 % leaves a 3x margin.
STEPS = 6
RTOL = 1e-2
EVAL_LOSSES = ('loss', 'd_loss', 'neg_elbo', 'recon')  # eval_step's sums, divided by the count


def _matmul_dtypes(jaxpr) -> list[tuple[str, ...]]:
  """(primitive, *operand dtypes) of every dot_general and conv_general_dilated in a jaxpr and
  its sub-jaxprs (loops, remat, custom VJPs)."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name in ('dot_general', 'conv_general_dilated'):
      out.append((eqn.primitive.name, *(str(v.aval.dtype) for v in eqn.invars)))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(sub, core.ClosedJaxpr):
          out += _matmul_dtypes(sub.jaxpr)
        elif isinstance(sub, core.Jaxpr):
          out += _matmul_dtypes(sub)
  return out


def _sample(name: str, config) -> dict:
  """A one-example batch of the shapes the config's data gives (for init)."""
  label = jnp.zeros((1,), jnp.int32)
  if config.model.get('vocab_size', 0):
    return {'tokens': jnp.ones((1, *config.model.input_shape), jnp.int32), 'label': label}
  shape = (4, 28, 28, 1) if name == 'cnn_rnn' else (28, 28, 1)
  return {'image': jnp.zeros((1, *shape)), 'label': label}


def _forward(task: str, state, sample: dict):
  """(f, args): the model's forward pass as the task's train step runs it (train mode, mutable
  BatchNorm statistics, dropout), on a batch of 4 of `sample`'s shapes."""
  model, rngs = state.model, {'dropout': jax.random.PRNGKey(1)}
  batch = {k: jnp.repeat(v, 4, axis=0) for k, v in sample.items()}
  if task == 'classification':
    x = batch.get('tokens', batch.get('image'))
    f = lambda v, x: model.apply(v, x, train=True, rngs=rngs, mutable=['batch_stats'])
    return f, (state.variables(), x)
  if task == 'gan':
    z = jnp.zeros((4, model.latents))
    y = batch['label'] if model.generator_classes else None
    v = {'params': state.params, 'batch_stats': state.batch_stats}
    f = lambda v, z: model.apply(v, z, y, train=True, rngs=rngs, mutable=['batch_stats'])
    return f, (v, z)
  y = batch['label'] if getattr(model, 'conditional', False) else None
  if task == 'vae':
    return (lambda p, x: model.apply({'params': p}, x, y)), (state.params, batch['image'])
  t = jnp.full((4,), 0.5)
  f = lambda p, x: model.apply({'params': p}, x, t, y, train=True, rngs=rngs)
  return f, (state.params, batch['image'])


@pytest.mark.parametrize('name', CONFIGS + ('lstm_tokens',))
def test_bf16_models_compute_in_bf16_and_return_float32(name):
  """Every matmul and convolution of the forward pass takes bf16 operands; what feeds the losses
  (logits, images, mean and logvar, decoder outputs, predictions) and the BatchNorm statistics
  come out float32, and the parameters and optimizer state are float32."""
  config = load_config(name.replace('_tokens', ''), dtype='bfloat16')
  if name == 'lstm_tokens':
    config.model.update({k.split('__')[1]: v for k, v in TOKENS.items()})
  sample = _sample(name, config)
  task = tasks.get(config.task)
  state = jax.eval_shape(lambda rng: task.init(config, rng, sample), jax.random.PRNGKey(0))
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {F32}
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert {x.dtype for x in floats} == {F32}  # optimizer moments, EMA copies, BatchNorm statistics

  f, args = _forward(config.task, state, sample)
  closed = jax.make_jaxpr(f)(*args)
  matmuls = _matmul_dtypes(closed.jaxpr)
  assert matmuls and all(d == 'bfloat16' for _, *dtypes in matmuls for d in dtypes), matmuls
  assert {x.dtype for x in jax.tree.leaves(closed.out_avals)} == {F32}


def test_model_dtype_is_not_a_config_model_key():
  """The computation dtype is the top-level config.dtype; a config file that sets model.dtype is
  refused in one line that names it."""
  config = load_config('cnn')
  config.model = ml_collections.ConfigDict({**config.model.to_dict(), 'dtype': 'bfloat16'})
  with pytest.raises(ConfigError, match=r'model.dtype is not a config key; .*--config.dtype='):
    tasks.validate(config)
  assert 'dtype' not in models.defaults('cnn')
  assert models.get(load_config('vit').model, 'bfloat16').dtype == BF16


def _run(name: str, dtype: str, workdir: str, tfds_dir: str):
  """The first STEPS train metrics of configs/<name>.py:smoke with `dtype`, the eval metrics
  after them on the first 200 test images, and the state at step 0 (params and their tree)."""
  config = load_config(name, tfds_dir=tfds_dir, dtype=dtype)
  config.data.eval_batch_size = 200
  exp = experiment.setup(config, workdir)
  init = jax.tree.map(np.asarray, exp.state.params)
  batches = iter(pipeline.train_dataset(exp.config, exp.train_split))
  state, metrics = exp.state, []
  for _ in range(STEPS):
    state, m = exp.train_step(state, exp.train_batch(next(batches)))
    metrics.append(jax.device_get(m))
  sums = jax.device_get(exp.eval_step(state, exp.train_batch(next(iter(exp.eval_batches())))))
  evals = {k: v / sums['count'] for k, v in sums.items() if k != 'count'}
  return metrics, evals, init, state


# Every task (classification, gan, vae, diffusion) and the classifiers' layer kinds (im2col convs,
# BatchNorm, residual blocks, LSTM); the other configs are checked by the jaxpr test above only
# (the ViT's smoke run, with its zero-initialised head, barely moves from its start).
TRACKED = ('cnn', 'resnet', 'lstm', 'dcgan', 'conv_vae', 'diffusion')


@pytest.mark.parametrize('name', TRACKED)
def test_bf16_smoke_run_tracks_the_float32_run(name, tfds_dir, tmp_path):
  f32, f32_evals, f32_init, _ = _run(name, 'float32', str(tmp_path / 'f32'), tfds_dir)
  bf16, bf16_evals, bf16_init, state = _run(name, 'bfloat16', str(tmp_path / 'bf16'), tfds_dir)
  jax.tree.map(np.testing.assert_array_equal, bf16_init, f32_init)  # the same initial params
  for key in ('loss', 'd_loss', 'g_loss'):
    if key in f32[0]:
      ours, theirs = [m[key] for m in bf16], [m[key] for m in f32]
      assert all(np.asarray(m[key]).dtype == F32 for m in bf16)
      np.testing.assert_allclose(ours, theirs, rtol=RTOL, err_msg=key)
  assert set(bf16_evals) == set(f32_evals)
  assert {v.dtype for v in bf16_evals.values()} == {F32}
  for key in set(EVAL_LOSSES) & set(f32_evals):
    np.testing.assert_allclose(bf16_evals[key], f32_evals[key], rtol=RTOL, err_msg=key)
  floats = [x for x in jax.tree.leaves(state) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert {x.dtype for x in floats} == {F32}  # params, optimizer state, BatchNorm statistics


def test_im2col_conv_and_max_pool_take_bf16():
  """layers.conv2d's im2col forward and custom backward on bf16 agree with XLA's bf16
  convolution and return bf16; so does the 2x2 max-pool's backward."""
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(keys[0], (5, 10, 10, 8), jnp.bfloat16)
  kernel = (0.2 * jax.random.normal(keys[1], (3, 3, 8, 16))).astype(jnp.bfloat16)
  g = jax.random.normal(keys[2], (5, 5, 5, 16), jnp.bfloat16)
  for padding in ('SAME', 'VALID', ((1, 1), (1, 1))):
    outs = {}
    for impl in ('xla', 'im2col'):
      conv = lambda x, k, impl=impl, padding=padding: layers.conv2d(
        x, k, strides=(2, 2), padding=padding, impl=impl, chunk=2
      )
      y, vjp = jax.vjp(conv, x, kernel)
      outs[impl] = (y, *vjp(g[:, : y.shape[1], : y.shape[2]]))
    for ours, theirs in zip(outs['im2col'], outs['xla']):
      assert ours.dtype == BF16 and ours.shape == theirs.shape
      np.testing.assert_allclose(
        np.asarray(ours, np.float32), np.asarray(theirs, np.float32), rtol=0.05, atol=0.05
      )
  y, vjp = jax.vjp(layers.max_pool_2x2, x)
  assert y.dtype == BF16 and vjp(y)[0].dtype == BF16


def test_bf16_run_end_to_end_saves_float32_checkpoints(clone_root, tfds_dir):
  """`python run.py --config configs/dcgan.py:smoke --config.dtype=bfloat16` trains, evaluates
  and samples (the grids at every eval) in bf16; its checkpoints hold exactly the arrays of the
  float32 state: float32 params, optimizer moments, EMA generator and BatchNorm statistics."""
  workdir = 'runs/dcgan_bf16'
  proc, _ = run_py(
    '--config',
    'configs/dcgan.py:smoke',
    '--config.dtype=bfloat16',
    '--workdir',
    workdir,
    cwd=clone_root,
    tfds_dir=tfds_dir,
  )
  assert proc.returncode == 0 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  workdir = os.path.join(clone_root, workdir)
  info = writers.read_json(os.path.join(workdir, 'run.json'))
  assert info['config']['dtype'] == 'bfloat16' and info['final_step'] == 6
  assert np.all(np.isfinite(list(info['final_metrics'].values())))
  assert os.path.exists(os.path.join(workdir, 'samples', 'samples_step_6.png'))

  saved = ocp.StandardCheckpointer().metadata(os.path.join(workdir, 'checkpoints', '6', 'state'))
  saved = checkpoint.leaf_specs(saved.item_metadata)
  config = load_config('dcgan')  # float32
  sample = {'image': jnp.zeros((1, 28, 28, 1)), 'label': jnp.zeros((1,), jnp.int32)}
  task = tasks.get(config.task)
  f32_state = jax.eval_shape(lambda rng: task.init(config, rng, sample), jax.random.PRNGKey(0))
  assert saved == checkpoint.leaf_specs(f32_state)
  params = [dtype for path, (_, dtype) in saved.items() if path.startswith('params/')]
  assert params and set(params) == {'float32'}
