"""Diffusion and flow matching: the objectives, the samplers against exact solutions, guidance,
the UNet, and the task through the loop (resume, pmap, FSDP and the end-to-end runs of its
presets are in test_faults, test_parallel and test_commands with the other tasks)."""

import dataclasses
import json
import os
import sys
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import ROOT, init_variables
from jaxvision import config as config_lib
from jaxvision import experiment, tasks, train
from jaxvision.errors import ConfigError
from jaxvision.models import unet
from jaxvision.tasks import diffusion

TINY = dict(
  model__channels=4,
  model__channel_mults=(1, 2),
  model__blocks=1,
  model__attention=(14,),
  model__groups=2,
)


def _state_and_batch(make_config, **overrides):
  config = make_config('diffusion', **{**TINY, **overrides})
  rng = np.random.default_rng(0)
  batch = {
    'image': jnp.asarray(rng.uniform(-1, 1, size=(8, 28, 28, 1)), jnp.float32),
    'label': jnp.asarray(rng.integers(0, 10, 8), jnp.int32),
  }
  init = jax.jit(lambda rng: diffusion.init(config, rng, batch))  # eager: ~12 s of op compiles
  return config, init(jax.random.PRNGKey(0)), batch


@pytest.mark.parametrize('schedule', diffusion.SCHEDULES)
def test_the_schedules_preserve_variance_and_run_from_data_to_noise(schedule):
  t = jnp.linspace(0.0, 1.0, 1001)
  alpha, sigma = diffusion.alpha_sigma(t, schedule)
  np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=1e-6)
  assert float(alpha[0]) == pytest.approx(1.0) and float(sigma[-1]) == pytest.approx(1.0, abs=1e-4)
  assert bool(jnp.all(jnp.diff(alpha) <= 0))
  if schedule == 'linear':  # DDPM's discrete alpha-bar: the product of 1 - beta_i, 1000 betas
    betas = np.linspace(1e-4, 0.02, 1000)
    discrete = np.sqrt(np.cumprod(1 - betas))
    np.testing.assert_allclose(alpha[1:], discrete, rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize('objective', diffusion.OBJECTIVES)
def test_the_targets_are_what_the_objectives_say(objective):
  """x_t and the target of each objective, and the inverse map from a perfect prediction back
  to (x0, eps)."""
  key = jax.random.PRNGKey(0)
  x = jnp.tanh(jax.random.normal(key, (4, 6, 6, 1)))
  eps = jax.random.normal(jax.random.fold_in(key, 1), x.shape)
  t = jnp.array([0.1, 0.4, 0.7, 0.95])
  x_t, target = diffusion.noised(objective, x, eps, t)
  tt = t[:, None, None, None]
  if objective == 'flow':
    np.testing.assert_allclose(x_t, (1 - tt) * x + tt * eps, rtol=1e-6)
    np.testing.assert_allclose(target, eps - x, rtol=1e-6)  # d x_t / dt on the straight path
    return
  alpha, sigma = (a[:, None, None, None] for a in diffusion.alpha_sigma(t))
  np.testing.assert_allclose(x_t, alpha * x + sigma * eps, rtol=1e-6)
  np.testing.assert_allclose(
    target, eps if objective == 'eps' else alpha * eps - sigma * x, rtol=1e-6
  )
  x0, eps_back = diffusion.denoised(objective, target, x_t, t)  # the prediction is exact
  np.testing.assert_allclose(x0, x, atol=1e-4)
  np.testing.assert_allclose(eps_back, eps, atol=1e-3)


@pytest.mark.parametrize(
  'objective, schedule', [('eps', 'cosine'), ('v', 'cosine'), ('v', 'linear'), ('flow', 'cosine')]
)
def test_the_gradient_is_that_of_the_mean_squared_error_of_the_objective(
  make_config, objective, schedule
):
  """train_step's gradient on a tiny UNet equals the one written out from the model's output:
  d/dtheta mean((f - target)^2) = 2 (f - target) / size, pulled back through the network (a vjp),
  with the step's own draws of t and the noise. One SGD step then lowers the loss."""
  config, state, batch = _state_and_batch(
    make_config,
    diffusion__objective=objective,
    diffusion__schedule=schedule,
    optim__name='sgd',
    optim__lr=0.05,
    optim__schedule='constant',
    optim__grad_clip=0.0,
    sample__sampler=diffusion.SAMPLERS[objective][0],
  )
  new, metrics = jax.jit(diffusion.train_step)(state, batch)
  t_key, eps_key, _, _ = jax.random.split(jax.random.fold_in(state.rng, state.step), 4)
  x = batch['image']
  t = jax.random.uniform(t_key, (x.shape[0],))
  eps = jax.random.normal(eps_key, x.shape)
  x_t, target = diffusion.noised(objective, x, eps, t, schedule)
  apply = lambda p: state.model.apply({'params': p}, x_t, t, None, train=True)

  @jax.jit  # one program: op by op, the UNet's vjp took ~30 s on 2 cores
  def written_out(params):
    out, pull_back = jax.vjp(apply, params)
    (grads,) = pull_back(2.0 * (out - target) / out.size)
    return out, jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)

  out, expected = written_out(state.params)
  assert float(metrics['loss']) == pytest.approx(float(jnp.mean((out - target) ** 2)), rel=1e-5)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), new.params, expected
  )
  # the updated params on the same draws (the same step): a lower loss
  _, after = jax.jit(diffusion.train_step)(new.replace(step=state.step), batch)
  assert float(after['loss']) < float(metrics['loss'])


def _gaussian_predictions(objective: str, s: float, schedule: str = 'cosine'):
  """The exact prediction of each objective when the data are N(0, s^2): x_t is Gaussian, so
  E[x0 | x_t] and E[eps | x_t] are linear in x_t."""

  def predict(x_t, t):
    tt = t.reshape(-1, *([1] * (x_t.ndim - 1)))
    if objective == 'flow':
      var = (1 - tt) ** 2 * s**2 + tt**2
      return (tt / var - (1 - tt) * s**2 / var) * x_t  # E[eps - x0 | x_t]
    alpha, sigma = (a.reshape(tt.shape) for a in diffusion.alpha_sigma(t, schedule))
    var = alpha**2 * s**2 + sigma**2
    x0, eps = alpha * s**2 / var * x_t, sigma / var * x_t
    return eps if objective == 'eps' else alpha * eps - sigma * x0

  return predict


@pytest.mark.parametrize(
  'objective, sampler, steps, tolerance, schedule',
  [
    ('eps', 'ddim', 1000, 2e-3, 'cosine'),
    ('v', 'ddim', 1000, 2e-3, 'cosine'),
    ('v', 'ddim', 1000, 4e-3, 'linear'),  # steeper at the ends: a larger first-order error
    ('flow', 'heun', 50, 2e-4, ''),
    ('flow', 'euler', 1000, 2e-3, ''),
  ],
)
def test_the_deterministic_samplers_invert_the_forward_process(
  objective, sampler, steps, tolerance, schedule
):
  """Data N(0, s^2) with s = 0.5 and the exact prediction: the noise at t = 1 maps to the data by
  the forward process's deterministic reverse, the probability-flow ODE, which keeps x_t divided
  by its standard deviation constant; DDIM with as many steps as a DDPM's training (1,000), and
  Heun's method with 50, land on its solution."""
  s = 0.5
  # |noise| < 1.9: the data stay inside [-1, 1], where the samplers clip their estimates of x0
  noise = jnp.clip(jax.random.normal(jax.random.PRNGKey(0), (256, 2, 2, 1)), -1.9, 1.9)
  predict = _gaussian_predictions(objective, s, schedule)
  if objective == 'flow':
    x0 = diffusion.flow_ode(predict, noise, steps, sampler)
    std_at_1 = 1.0
  else:
    x0 = diffusion.ddim(predict, objective, noise, steps, schedule=schedule)
    alpha_1, sigma_1 = diffusion.alpha_sigma(jnp.ones(()), schedule)
    std_at_1 = float(jnp.sqrt(alpha_1**2 * s**2 + sigma_1**2))
  np.testing.assert_allclose(x0, noise * s / std_at_1, atol=tolerance)


def test_ddpm_draws_the_data_distribution_from_the_exact_prediction():
  """The ancestral sampler (eta = 1) is stochastic, but with the exact prediction of N(0, s^2)
  its samples have the data's standard deviation."""
  s = 0.3
  noise = jax.random.normal(jax.random.PRNGKey(1), (4096, 1, 1, 1))
  x0 = diffusion.ddim(
    _gaussian_predictions('v', s), 'v', noise, 200, eta=1.0, rng=jax.random.PRNGKey(2)
  )
  assert float(jnp.std(x0)) == pytest.approx(s, rel=0.05)
  assert abs(float(jnp.corrcoef(x0.ravel(), noise.ravel())[0, 1])) < 0.3  # not the ODE's map


def test_guidance_zero_is_the_conditional_model_and_guidance_moves_the_samples(make_config):
  _, state, _ = _state_and_batch(
    make_config, model__num_classes=10, sample__guidance=0.0, sample__sampler='ddim'
  )
  # a trained-looking net: perturb the zero-initialised output layers so labels matter
  params = jax.tree.map(lambda p: p + 0.05 * jnp.sign(p + 0.1), state.ema_params)
  state = state.replace(ema_params=params)
  noise = jax.random.normal(jax.random.PRNGKey(3), (10, 28, 28, 1))
  labels = jnp.arange(10)
  plain = jax.jit(diffusion.generate)(state, noise, labels)
  conditional_only = lambda x, t: state.model.apply({'params': params}, x, t, labels, train=False)
  direct = jnp.clip((diffusion.ddim(conditional_only, 'v', noise, state.opts.steps) + 1) / 2, 0, 1)
  np.testing.assert_allclose(plain, direct, atol=1e-5)
  guided = state.replace(opts=dataclasses.replace(state.opts, guidance=2.0))
  assert float(jnp.max(jnp.abs(jax.jit(diffusion.generate)(guided, noise, labels) - plain))) > 1e-3


def test_the_unet_keeps_the_shape_and_reads_time_and_labels():
  model = unet.UNet(channels=8, channel_mults=(1, 2, 2), blocks=1, groups=4, num_classes=10)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 28, 28, 1))
  t = jnp.array([0.2, 0.8])
  y = jnp.array([3, 10])  # 10: no label
  variables = init_variables(model, jax.random.PRNGKey(1), x, t, y, train=False)
  # the output layers start at zero (the network starts as "predict 0"); make them count
  variables = jax.tree.map(lambda p: p + 0.05, variables)
  apply = jax.jit(lambda v, x, t, y: model.apply(v, x, t, y, train=False))
  out = apply(variables, x, t, y)
  assert out.shape == x.shape
  assert float(jnp.max(jnp.abs(apply(variables, x, t[::-1], y) - out))) > 1e-4
  assert float(jnp.max(jnp.abs(apply(variables, x, t, y[::-1]) - out))) > 1e-4
  with pytest.raises(ValueError, match='halves the image 2 times'):
    unet.UNet(channel_mults=(1, 2, 2), image_shape=(30, 30, 1)).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 30, 30, 1)), jnp.zeros((1,)), train=False
    )


@pytest.mark.parametrize(
  'overrides, message',
  [
    (dict(diffusion__objective='score'), "diffusion.objective='score' is not allowed"),
    (dict(diffusion__objective='flow'), "sample.sampler='ddpm' is not allowed; use one of: euler"),
    (dict(sample__steps=0), 'sample.steps=0 must be >= 1'),
    (dict(sample__guidance=1.0), 'sample.guidance=1.0 needs a conditional model'),
    (dict(sample__guidance=-1.0, model__num_classes=10), 'sample.guidance=-1.0 must be >= 0'),
    (dict(diffusion__label_dropout=1.0), 'diffusion.label_dropout=1.0 must be in [0, 1)'),
    (dict(data__scale='zero_one'), 'needs data.scale=minus_one_one'),
  ],
)
def test_bad_diffusion_values_are_one_line(make_config, overrides, message):
  with pytest.raises(
    config_lib.ConfigError, match=message.replace('[', r'\[').replace(')', r'\)')
  ) as e:
    tasks.validate(make_config('diffusion', **overrides))
  assert '\n' not in str(e.value)


def test_the_cifar10_preset_trains_on_mock_data(make_config, tmp_path):
  """The colour preset as written (only the network shrunk, a few train and sampler steps) on TFDS
  mock data."""
  config = make_config(
    'diffusion',
    'cifar10',
    data__download=True,
    data__tfds_dir=str(tmp_path / 'tfds'),
    model__channels=8,
    model__channel_mults=(1, 2),
    model__attention=(16,),
    model__groups=4,
    data__batch_size=16,
    data__eval_batch_size=16,
    train__steps=2,
    train__log_every=1,
    train__eval_every=2,
    train__ckpt_every=2,
    sample__steps=2,  # the grid's 64 images: 25 steps of this UNet on 32x32 took ~100 s here
  )
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    exp = experiment.setup(config, str(tmp_path / 'run'))
    final = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert exp.train_split.image_shape == (32, 32, 3) and np.isfinite(final['eval/loss'])
  assert (tmp_path / 'run' / 'samples' / 'samples_step_2.png').exists()


def test_the_task_refuses_another_model(make_config):
  """A config whose fields happen to fit another model still needs the UNet."""
  config = make_config('diffusion', **TINY)
  with config.unlocked():
    config.model.name = 'dcgan'
  with pytest.raises(ConfigError, match="task diffusion needs model.name='unet', not 'dcgan'"):
    diffusion.validate(config)


@pytest.mark.parametrize('counts', [(1000, 1000), (1000, 8000)])
def test_fd_curves_label_the_runs_sample_count(tmp_path, counts):
  """`benchmarks/sampler_steps.py --curves` labels the FD axis with the runs' eval.fd_samples
  (read from each run.json), and with no count where the runs differ."""
  sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
  import sampler_steps  # a script of benchmarks/, found through sys.path

  paths = []
  for i, n in enumerate(counts):
    run = tmp_path / f'run{i}'
    run.mkdir()
    (run / 'run.json').write_text(json.dumps({'config': {'eval': {'fd_samples': n}}}))
    events = [{'step': s, 'eval/fd': 1.0 / s, 'eval/fd_floor': 0.1} for s in (100, 200)]
    (run / 'metrics.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in events))
    paths.append(str(run / 'metrics.jsonl'))
  ax = mock.MagicMock()
  with (
    mock.patch.object(sampler_steps, '_pyplot') as pyplot,
    mock.patch.object(sampler_steps, '_save'),
  ):
    pyplot.return_value.subplots.return_value = (mock.MagicMock(), ax)
    sampler_steps.plot_curves(paths, str(tmp_path / 'curves.png'))
  want = 'eval/fd (1,000 samples)' if len(set(counts)) == 1 else 'eval/fd'
  ax.set_ylabel.assert_called_once_with(want)
  assert [c.args[1] for c in ax.plot.call_args_list] == [[0.01, 0.005]] * 2
