"""Transfer learning (init_from, freeze) and class subsets of a split."""

import jax
import numpy as np
import pytest

from jaxvision import checkpoint, experiment, train
from jaxvision import config as config_lib
from jaxvision.data import pipeline


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory, tfds_dir):
  """A smoke CNN trained on digits 0-4: the source of every test here."""
  from conftest import load_config

  workdir = str(tmp_path_factory.mktemp('pretrain'))
  train.train_and_evaluate(load_config('transfer', 'smoke', tfds_dir), workdir)
  ckpt = checkpoint.Checkpointer(f'{workdir}/checkpoints', 3)
  exp = experiment.setup(load_config('transfer', 'smoke', tfds_dir), workdir)
  _, state = ckpt.restore(exp.state)
  ckpt.close()
  return workdir, jax.device_get(state)


def _smoke_finetune(make_config, **overrides):
  return make_config(
    'transfer', 'smoke', **{'data__classes': (5, 6, 7, 8, 9), 'data__per_class': 20, **overrides}
  )


def test_included_parameters_load_bitwise_and_excluded_ones_stay_fresh(
  make_config, pretrained, tmp_path
):
  source, src_state = pretrained
  config = _smoke_finetune(make_config, init_from__path=source, init_from__exclude=('Dense_1/.*',))
  exp = experiment.setup(config, str(tmp_path))
  fresh = experiment.setup(_smoke_finetune(make_config), str(tmp_path / 'fresh')).state
  state = jax.device_get(exp.state)
  np.testing.assert_array_equal(
    state.params['Conv_0']['kernel'], src_state.params['Conv_0']['kernel']
  )
  np.testing.assert_array_equal(
    state.batch_stats['BatchNorm_1']['mean'], src_state.batch_stats['BatchNorm_1']['mean']
  )
  np.testing.assert_array_equal(
    state.params['Dense_1']['kernel'], jax.device_get(fresh.params['Dense_1']['kernel'])
  )
  assert exp.transfer['loaded'] > 0 and exp.transfer['reinitialised'] == []
  assert exp.transfer['source_params_sha256'] == checkpoint.params_sha256(src_state.params)


def test_a_head_of_another_shape_is_reinitialised_with_one_printed_line(
  make_config, pretrained, tmp_path, capsys
):
  source, src_state = pretrained
  config = _smoke_finetune(
    make_config, init_from__path=source, model__num_classes=5, data__classes=(0, 1, 2, 3, 4)
  )
  exp = experiment.setup(config, str(tmp_path))
  out = capsys.readouterr().out.strip().splitlines()
  assert out == [
    'init_from: re-initialised (shape differs): params/Dense_1/bias, params/Dense_1/kernel'
  ]
  assert exp.state.params['Dense_1']['kernel'].shape == (32, 5)
  np.testing.assert_array_equal(
    jax.device_get(exp.state.params['Dense_0']['kernel']), src_state.params['Dense_0']['kernel']
  )


def test_frozen_layers_and_their_batchnorm_statistics_do_not_move(
  make_config, pretrained, tmp_path
):
  source, _ = pretrained
  config = _smoke_finetune(
    make_config, init_from__path=source, freeze=('Conv_.*', 'BatchNorm_[01]/.*')
  )
  exp = experiment.setup(config, str(tmp_path))
  before = jax.device_get(exp.state)
  state = exp.state
  for batch in [next(iter(pipeline.train_dataset(config, exp.train_split)))] * 3:
    state, _ = exp.train_step(state, batch)
  after = jax.device_get(state)
  for name in ('Conv_0', 'Conv_1', 'BatchNorm_0', 'BatchNorm_1'):
    for k in before.params[name]:
      np.testing.assert_array_equal(after.params[name][k], before.params[name][k])
  for name in ('BatchNorm_0', 'BatchNorm_1'):
    np.testing.assert_array_equal(after.batch_stats[name]['mean'], before.batch_stats[name]['mean'])
  for name in ('Dense_0', 'Dense_1'):
    assert not np.array_equal(after.params[name]['kernel'], before.params[name]['kernel'])
  assert not np.array_equal(
    after.batch_stats['BatchNorm_2']['mean'], before.batch_stats['BatchNorm_2']['mean']
  )


def test_subsets_are_the_first_n_of_each_kept_class(make_config):
  full = pipeline.load_split(make_config('cnn').data, 'train')
  labels = full.read(np.arange(full.size))['label']
  config = make_config('cnn', data__classes=(3, 7), data__per_class=4)
  sub = pipeline.load_split(config.data, 'train')
  expected = np.sort(
    np.concatenate([np.flatnonzero(labels == 3)[:4], np.flatnonzero(labels == 7)[:4]])
  )
  np.testing.assert_array_equal(sub.read(np.arange(8))['image'], full.read(expected)['image'])
  assert sub.size == 8 and 'classes=3,7,per_class=4' in sub.fingerprint
  test = pipeline.load_split(config.data, 'test')  # eval split: the classes, every example
  full_test = pipeline.load_split(make_config('cnn').data, 'test')
  assert test.size == int(np.isin(full_test.read(np.arange(full_test.size))['label'], (3, 7)).sum())


@pytest.mark.parametrize(
  'overrides, match',
  [
    (dict(freeze=('Conv_(',)), 'freeze has a bad regex'),
    (dict(freeze=('Nope_.*',)), 'matches no parameter'),
    (dict(init_from__path='/nonexistent/run'), 'does not exist'),
    (dict(init_from__path='/'), 'holds no checkpoint'),
  ],
)
def test_bad_transfer_settings_fail_in_one_line(make_config, tmp_path, overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match) as e:
    experiment.setup(_smoke_finetune(make_config, **overrides), str(tmp_path))
  assert '\n' not in str(e.value)


def test_missing_source_parameters_are_named(make_config, pretrained, tmp_path):
  source, _ = pretrained
  config = make_config('resnet', init_from__path=source)  # no ResNet parameter exists in a CNN run
  with pytest.raises(config_lib.ConfigError, match=r'lacks params/conv_stem/kernel'):
    experiment.setup(config, str(tmp_path))
