"""Every config's default runs on 8 devices without an override: its train and eval steps
compile for an 8-way mesh (the eval batch is padded to the mesh and masked)."""

import glob
import os

import jax
import numpy as np
import pytest

from conftest import ROOT, load_config
from jaxvision import experiment

NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, 'configs', '*.py')))
DEFAULT_PRESET = {'transfer': 'pretrain', 'augment': 'real'}  # their get_config() defaults


def _abstract_batch(exp, rows: int, eval_batch: bool) -> dict:
  split = exp.train_split
  dtype = np.int32 if split.input_key == 'tokens' else np.float32
  spec = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=exp.batch_sharding)
  batch = {
    split.input_key: spec((rows, *split.image_shape), dtype),
    'label': spec((rows,), np.int32),
  }
  if eval_batch:
    batch['mask'] = spec((rows,), np.float32)
  return batch


@pytest.mark.parametrize('name', NAMES)
def test_the_default_config_compiles_on_8_devices(name, tfds_dir, tmp_path):
  assert jax.device_count() == 8
  config = load_config(name, DEFAULT_PRESET.get(name, ''), tfds_dir)
  if name == 'cas':
    samples = tmp_path / 'samples.npz'
    rng = np.random.default_rng(0)
    np.savez(
      samples,
      images=rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8),
      labels=np.arange(64) % 10,
    )
    config.data.synthetic.path = str(samples)
  exp = experiment.setup(config, str(tmp_path / 'w'))
  assert exp.mesh.devices.size == 8
  assert exp.eval_batch_size % 8 == 0 and 0 <= exp.eval_batch_size - config.data.eval_batch_size < 8
  exp.train_step.lower(exp.state, _abstract_batch(exp, config.data.batch_size, False)).compile()
  exp.eval_step.lower(exp.state, _abstract_batch(exp, exp.eval_batch_size, True)).compile()
