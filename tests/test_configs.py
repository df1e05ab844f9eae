"""Every config file has a `smoke` preset that validates, and unknown presets are refused."""

import glob
import os

import numpy as np
import pytest

from conftest import ROOT, load_config
from jaxvision import config as config_lib
from jaxvision import models, tasks, train, writers

NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))


def _fake_samples(path):
  rng = np.random.default_rng(0)
  np.savez(
    path, images=rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8), labels=np.arange(64) % 10
  )
  return str(path)


@pytest.mark.parametrize('name', ['resnet', 'vit'])
def test_the_resnet_and_vit_configs_name_every_field_of_their_model(name):
  """`--config.model.X=...` only sets a key the config names: these two name every field, so the
  public-weight fields (padding, frozen_batchnorm, gelu) and remat can be set on the command
  line, and they hold the model's defaults."""
  config = config_lib.from_file(os.path.join(ROOT, 'configs', f'{name}.py'))
  fields = {f.name for f in models._fields(models.MODELS[config.model.name])}
  assert fields <= set(config.model) and models.defaults(name).items() >= {
    (k, v) for k, v in config.model.items() if k in ('padding', 'frozen_batchnorm', 'gelu', 'remat')
  }


@pytest.mark.parametrize('name', NAMES)
def test_unknown_preset_is_refused(name):
  with pytest.raises(ValueError, match='no_such_preset'):
    load_config(name, 'no_such_preset')


def test_cas_smoke_trains_only_on_the_samples_and_a_finetune_starts_from_it(make_config, tmp_path):
  config = make_config('cas', data__synthetic__path=_fake_samples(tmp_path / 'samples.npz'))
  final = train.train_and_evaluate(config, str(tmp_path / 'w'))
  # Noise images with cycling labels carry no information about real digits: near chance.
  assert final['eval/accuracy'] < 0.3 and np.isfinite(final['eval/loss'])
  info = writers.read_json(str(tmp_path / 'w' / 'run.json'))
  assert '+synthetic[only]/n=64/' in info['data']['train']
  # augment.py:finetune's path: the 1,000 real digits, starting from that CAS run's weights.
  finetune = make_config('augment', init_from__path=str(tmp_path / 'w'))
  train.train_and_evaluate(finetune, str(tmp_path / 'ft'))
  loaded = writers.read_json(str(tmp_path / 'ft' / 'run.json'))['init_from']
  assert loaded['loaded'] > 0 and loaded['source_params_sha256'] == info['final_params_sha256']


def test_cas_with_an_empty_samples_path_is_refused():
  # An explicit empty path passes the required-value check; the CAS mode still needs samples.
  with pytest.raises(
    config_lib.ConfigError, match='data.synthetic.mode=only needs data.synthetic.path'
  ):
    tasks.validate(load_config('cas', data__synthetic__path=''))


@pytest.mark.parametrize(
  'preset, key', [('synthetic', 'data.synthetic.path'), ('finetune', 'init_from.path')]
)
def test_augment_presets_name_the_path_they_need(preset, key):
  with pytest.raises(config_lib.ConfigError, match=f'{key} is required by this config'):
    tasks.validate(load_config('augment', preset))
  tasks.validate(load_config('augment', preset, **{key.replace('.', '__'): 'runs/x'}))


def test_augment_smoke_adds_the_samples_to_1000_real_digits(make_config, tmp_path):
  config = make_config(
    'augment',
    data__synthetic__path=_fake_samples(tmp_path / 'samples.npz'),
    data__synthetic__mode='add',
  )
  final = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert np.isfinite(final['eval/loss'])
  train_data = writers.read_json(str(tmp_path / 'w' / 'run.json'))['data']['train']
  assert 'per_class=100' in train_data and 'synthetic[add]' in train_data
