"""ResNet, ViT and the self-attention classifier: architecture, BatchNorm across
devices, ImageNet-style preprocessing, and every config preset end to end."""

import math

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from conftest import init_variables
from jaxvision import config as config_lib
from jaxvision import experiment, models, parallel, tasks, train
from jaxvision.data import images, pipeline
from jaxvision.models import attention, resnet, vit


def _param_count(module, shape):
  variables = jax.eval_shape(
    lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False)
  )
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize(
  'kwargs, shape, expected',
  [
    # The published parameter counts of the reference architectures.
    (dict(stage_sizes=(3, 3, 3), width=16, num_classes=10), (1, 32, 32, 3), 272_474),  # ResNet-20
    (
      dict(stage_sizes=(2, 2, 2, 2), width=64, stem='imagenet', num_classes=1000),
      (1, 224, 224, 3),
      11_689_512,
    ),  # ResNet-18 (torchvision)
    (
      dict(
        stage_sizes=(3, 4, 6, 3), width=64, stem='imagenet', block='bottleneck', num_classes=1000
      ),
      (1, 224, 224, 3),
      25_557_032,
    ),  # ResNet-50 (torchvision)
  ],
)
def test_resnet_matches_reference_parameter_counts(kwargs, shape, expected):
  assert _param_count(resnet.ResNet(**kwargs), shape) == expected


def test_vit_b16_parameter_count():
  model = vit.ViT(num_classes=1000, patch=16, dim=768, depth=12, heads=12, mlp_dim=3072)
  assert _param_count(model, (1, 224, 224, 3)) == 86_567_656  # ViT-B/16 of the paper


@pytest.mark.parametrize(
  'name, kwargs',
  [
    ('resnet', dict(stage_sizes=(1, 1), width=8)),
    ('resnet', dict(stage_sizes=(1, 1), width=8, block='bottleneck', stem='imagenet')),
    ('vit', dict(patch=7, dim=16, depth=1, heads=2, mlp_dim=32, pool='cls')),
    ('vit', dict(patch=4, dim=16, depth=1, heads=2, mlp_dim=32, pool='mean')),
    ('attention', dict(tokens='rows', dim=16, hidden=32)),
    ('attention', dict(tokens='patches', patch=7, dim=16, hidden=32)),
  ],
)
@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
def test_classifier_output_shapes(name, kwargs, shape):
  if shape[0] % kwargs.get('patch', 1):
    pytest.skip('covered by the patch error test')
  model = models.MODELS[name](num_classes=7, **kwargs)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, *shape))
  variables = init_variables(model, {'params': jax.random.PRNGKey(1)}, x, train=False)
  out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  chex.assert_shape(out, (3, 7))
  chex.assert_tree_all_finite(out)


def test_attention_pooling_weights_are_a_distribution_over_positions():
  model = attention.AttentionClassifier(tokens='rows', dim=16, hidden=32, pool_heads=3)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
  variables = init_variables(model, {'params': jax.random.PRNGKey(1)}, x, train=False)
  _, state = model.apply(variables, x, train=False, mutable=['intermediates'])
  (weights,) = state['intermediates']['attention_weights']
  chex.assert_shape(weights, (2, 28, 3))  # 28 rows, 3 pooling heads
  np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-5)


def test_vit_patch_embedding_is_a_strided_conv():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 3))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (7, 7, 3, 5))
  dense = vit.patchify(x, 7) @ kernel.reshape(-1, 5)
  conv = jax.lax.conv_general_dilated(
    x, kernel, (7, 7), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  np.testing.assert_allclose(dense, conv.reshape(2, 16, 5), rtol=1e-4, atol=1e-4)


def test_resnet_batchnorm_statistics_are_global_over_the_sharded_batch():
  """One train-mode forward on 8 devices (batch sharded) equals the same on 1 device."""
  model = resnet.ResNet(stage_sizes=(1,), width=4)
  x = (
    jax.random.normal(jax.random.PRNGKey(0), (16, 8, 8, 1)) * jnp.arange(16.0)[:, None, None, None]
  )
  variables = init_variables(model, jax.random.PRNGKey(1), x[:1], train=False)
  fwd = lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats'])
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharded = jax.jit(fwd)(variables, jax.device_put(x, NamedSharding(mesh, P('data'))))
  single = jax.jit(fwd)(variables, jax.device_put(x, jax.devices()[0]))
  # Each device holds 2 very different images: per-device statistics would differ a lot.
  chex.assert_trees_all_close(sharded, single, rtol=1e-4, atol=1e-5)


def _abstract_state(config):
  """The task's initial state of `config`, as shapes only."""
  size = config.data.image_size or 28
  channels = 3 if config.data.image_size else 1
  sample = {'image': jnp.zeros((1, size, size, channels)), 'label': jnp.zeros((1,), jnp.int32)}
  task = tasks.get(config.task)
  return jax.eval_shape(lambda rng: task.init(config, rng, sample), jax.random.PRNGKey(0))


@pytest.mark.parametrize(
  'name, preset, shrink',
  [
    ('resnet', 'smoke', {}),
    ('resnet', 'imagenet', dict(model__stage_sizes=(1, 1), model__width=8, data__image_size=32)),
    ('vit', 'smoke', dict(model__depth=2)),
  ],
)
def test_remat_keeps_the_state_tree_and_the_tensor_parallel_rules(
  make_config, name, preset, shrink
):
  """model.remat wraps each block in nn.remat under the block's own name: the same parameter
  paths and shapes, batch statistics and optimizer state (checkpoints restore across the
  switch), and for the ViT the same leaves split over the model axis."""
  off, on = (
    _abstract_state(make_config(name, preset, model__remat=remat, **shrink))
    for remat in (False, True)
  )
  paths = lambda state: [
    (jax.tree_util.keystr(p), x.shape)
    for p, x in jax.tree_util.tree_leaves_with_path((state.params, state.batch_stats))
  ]
  assert paths(on) == paths(off)
  assert any('block1' in p for p, _ in paths(on))
  chex.assert_trees_all_equal_shapes_and_dtypes(
    (on.params, on.batch_stats, on.opt_state), (off.params, off.batch_stats, off.opt_state)
  )
  if name == 'vit':
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=4, model=2)))
    specs = lambda state: [
      s.spec
      for s in jax.tree.leaves(parallel.state_sharding(mesh, state.params, vit.SHARDING_RULES))
    ]
    split = [s for s in specs(on) if parallel.MODEL_AXIS in jax.tree.leaves(tuple(s))]
    assert specs(on) == specs(off) and len(split) == 2 * 10  # 10 split leaves per block


@pytest.mark.parametrize(
  'name, parallel_mode, shrink',
  [
    ('resnet', 'jit', {}),
    ('resnet', 'pmap', {}),  # BatchNorm's statistics averaged over the pmap axis inside remat
    ('vit', 'jit', dict(model__depth=2, model__dropout=0.1)),
  ],
)
def test_remat_trains_the_same_steps(make_config, tmp_path, name, parallel_mode, shrink):
  """Two train steps as the loop runs them (experiment.setup's jitted or pmapped step on the 8
  devices) with model.remat on equal those with it off: loss, gradient norm, params, BatchNorm
  statistics, the momentum (the gradients); the ViT's dropout masks are the same. SGD with
  momentum, so that a parameter moves by its gradient (Adam's first update is lr x sign(grad):
  a near-zero gradient that differs by an ulp can flip it). Measured: the ViT bitwise equal; the
  ResNet's metrics equal, its state within 3.4e-8 (jit and pmap; all of it within rtol 1e-5 +
  atol 1e-8)."""
  results = {}
  for remat in (False, True):
    config = make_config(
      name,
      parallel=parallel_mode,
      optim__name='momentum',
      optim__lr=0.1,
      optim__schedule='constant',
      model__remat=remat,
      **shrink,
    )
    exp = experiment.setup(config, str(tmp_path / f'remat_{remat}'))
    batch = exp.train_batch(next(iter(pipeline.train_dataset(config, exp.train_split))))
    start = jax.device_get(exp.state)
    state, metrics = exp.place(exp.state), []
    for _ in range(2):
      state, m = exp.train_step(state, batch)
      metrics.append(jax.device_get(m))
    if name == 'vit' and remat:  # dropout is on: another key draws other masks
      other = exp.place(start.replace(rng=jax.random.PRNGKey(7)))
      assert float(exp.train_step(other, batch)[1]['grad_norm']) != metrics[0]['grad_norm']
    state = jax.device_get(exp.unplace(state))
    results[remat] = (metrics, state.params, state.batch_stats, state.opt_state)
    if name == 'resnet':  # the statistics were updated, with remat too
      assert not np.allclose(
        jax.tree.leaves(state.batch_stats)[0], jax.tree.leaves(start.batch_stats)[0]
      )
  off, on = results[False], results[True]
  chex.assert_trees_all_close(on[0], off[0], rtol=1e-6)
  chex.assert_trees_all_close(on[1:], off[1:], rtol=1e-5, atol=1e-7)
  if name == 'vit':
    chex.assert_trees_all_equal(on, off)


def test_resize_center_crop_keeps_the_centre():
  image = np.zeros((60, 90, 3), np.uint8)
  image[25:35, 40:50] = 255  # a bright square in the centre
  out = images.resize_center_crop(image, 32, 28)
  assert out.shape == (28, 28, 3)
  assert out[14, 14].min() > 200 and out[0, 0].max() < 10


@pytest.mark.parametrize('name', ['resnet', 'vit', 'attention', 'lstm', 'cnn_rnn'])
def test_every_classifier_fits_a_fixed_batch(make_config, tmp_path, name):
  """The smoke preset's model, through the loop's own jitted step on the 8-device mesh, cuts its
  loss on one batch of real data by 30 % within 80 steps: the model, its loss and its gradients work
  together (the end-to-end runs of the smoke presets are tests/test_commands.py)."""
  config = make_config(
    name,
    optim__name='adam',
    optim__lr=3e-3,
    optim__schedule='constant',
    data__augment='none',
    loss__label_smoothing=0.0,
    train__steps=40,
  )
  if 'dropout' in config.model:
    config.model.dropout = 0.0 if isinstance(config.model.dropout, float) else (0.0, 0.0)
  exp = experiment.setup(config, str(tmp_path))
  batch = exp.train_batch(next(iter(pipeline.train_dataset(config, exp.train_split))))
  state, losses = exp.state, []
  for _ in range(80):
    state, metrics = exp.train_step(state, batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.7 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize(
  'name, preset, dataset, shrink',
  [
    ('resnet', 'cifar10', 'cifar10', dict(model__stage_sizes=(1, 1), model__width=8)),
    (
      'vit',
      'cifar10',
      'cifar10',
      dict(model__dim=16, model__depth=1, model__heads=2, model__mlp_dim=32),
    ),
  ],
)
def test_dataset_presets_train_on_mock_data(make_config, tmp_path, name, preset, dataset, shrink):
  """The cifar10 presets as written (only the model shrunk, few steps) on TFDS mock data (the
  imagenet preset: tests/test_imagenet_pipeline.py, on data in imagenet2012's own format)."""
  config = make_config(
    name,
    preset,
    data__download=True,
    data__tfds_dir=str(tmp_path / 'tfds'),
    data__batch_size=16,
    data__eval_batch_size=16,
    train__steps=2,
    train__log_every=1,
    train__eval_every=2,
    train__ckpt_every=2,
    **shrink,
  )
  assert config.data.name == dataset
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert np.isfinite(final['eval/loss'])


def test_vit_patch_that_does_not_divide_the_image_is_one_line(make_config):
  config = make_config('vit', model__patch=5)
  with pytest.raises(config_lib.ConfigError, match='do not divide into 5x5 patches') as e:
    experiment.setup(config, '/nonexistent/never-written')
  assert '\n' not in str(e.value)
