"""Saliency and integrated gradients, and `--mode explain`."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxvision import config as config_lib
from jaxvision import experiment, modes, train
from jaxvision.evaluate import explain


@pytest.fixture(scope='module')
def trained(tmp_path_factory, tfds_dir):
  from conftest import load_config

  workdir = str(tmp_path_factory.mktemp('explain'))
  config = load_config(
    'cnn', 'smoke', tfds_dir, train__steps=30, train__eval_every=30, train__ckpt_every=30
  )
  train.train_and_evaluate(config, workdir)
  exp = experiment.setup(config, workdir)
  _, state = experiment.restore_latest(exp)
  return config, workdir, state


def _logit_fn(state):
  return lambda v: state.model.apply(state.variables(), v, train=False)


def test_saliency_is_the_gradient_of_the_target_logit(trained):
  _, _, state = trained
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 28, 28, 1))
  target = jnp.array([1, 4, 7])
  sal = explain.saliency(_logit_fn(state), x, target)
  for i in range(3):
    g = jax.grad(lambda v, i=i: _logit_fn(state)(v[None])[0, target[i]])(x[i])
    np.testing.assert_allclose(sal[i], jnp.max(jnp.abs(g), -1), rtol=1e-5, atol=1e-7)


def test_integrated_gradients_are_complete_within_one_percent(trained):
  """Attributions sum to f(x) - f(baseline) (BatchNorm in eval mode, 512 intervals)."""
  _, _, state = trained
  fn = _logit_fn(state)
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 28, 28, 1))
  target = jnp.argmax(fn(x), -1)
  baseline = jnp.zeros((28, 28, 1))
  ig = jax.jit(lambda x, t: explain.integrated_gradients(fn, x, t, baseline, 512))(x, target)
  delta = jnp.take_along_axis(fn(x) - fn(jnp.zeros_like(x)), target[:, None], 1)[:, 0]
  np.testing.assert_allclose(ig.reshape(4, -1).sum(1), delta, rtol=0.01)
  # Too coarse a path misses it: the check has teeth.
  coarse = explain.integrated_gradients(fn, x, target, baseline, 1)
  assert not np.allclose(coarse.reshape(4, -1).sum(1), delta, rtol=0.01)


def test_explain_mode_writes_one_figure_per_image_and_a_summary(trained):
  config, workdir, _ = trained
  config = config.copy_and_resolve_references()
  config.explain.n = 5
  out = modes.explain(config, workdir)
  assert out['explained'] == 5 and out['max_completeness_error'] < 0.01
  files = sorted(f for f in os.listdir(os.path.join(workdir, 'explain')) if f.endswith('.png'))
  assert len(files) == 5 and files[0].startswith('000_true')
  with Image.open(os.path.join(workdir, 'explain', files[0])) as im:
    assert im.size == (3 * 28 * 4 + 16, 28 * 4 + 22)  # three 4x panels side by side + a title line
  with open(os.path.join(workdir, 'explain', 'summary.json'), encoding='utf-8') as f:
    summary = json.load(f)
  assert [r['index'] for r in summary['images']] == list(range(5))
  assert all(
    f'_true{r["true"]}_pred{r["pred"]}.png' in files[r['index']] for r in summary['images']
  )


def test_explain_refuses_generative_tasks_in_one_line(make_config, tmp_path):
  with pytest.raises(config_lib.ConfigError, match='explains classifiers'):
    modes.explain(make_config('vae'), str(tmp_path))
