"""The modes besides training: `evaluate`, `sample` and `explain` a workdir's latest checkpoint.

Each reads the workdir and changes nothing in it but its own outputs: the eval
metrics appended to metrics.jsonl, WORKDIR/samples/step_<N>[.npz],
WORKDIR/explain/ (earlier outputs of the same kind are moved aside, not
overwritten). Each refuses a workdir without a checkpoint before any compute.
"""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from jaxvision import experiment, grids, parallel, paths, tasks, writers
from jaxvision import workdir as workdir_lib
from jaxvision.data import pipeline
from jaxvision.errors import ConfigError
from jaxvision.evaluate import explain as explain_lib
from jaxvision.evaluate import generative


def evaluate(config, workdir: str) -> dict:
  """`--mode eval`: evaluates the latest checkpoint of `workdir`; records and returns the
  metrics.

  Args:
    config: the experiment config.
    workdir: the resolved run directory.

  Returns:
    {'step', 'eval/<metric>', ...}; the metrics are also appended to metrics.jsonl.

  Raises:
    errors.BadInput: see `experiment.setup` (WorkdirError when there is no checkpoint).
  """
  exp = experiment.setup(config, workdir, restoring=True)
  step, state = experiment.restore_latest(exp)
  metrics = experiment.run_eval(exp, state, final=True)
  if jax.process_index() == 0:
    writer = writers.MetricWriter(workdir)
    writer.write(step, metrics)
    writer.close()
  return {'step': step, **metrics}


def sample(config, workdir: str) -> dict:
  """`--mode sample`: config.sample.n images from the latest checkpoint's generator, written to
  WORKDIR/samples/step_<N>/<i>.png and WORKDIR/samples/step_<N>.npz (uint8 images, labels; a
  self-conditioned GAN's cluster ids as `clusters`).

  Args:
    config: a generative task's config.
    workdir: the resolved run directory.

  Returns:
    {'step', 'samples', 'written'}: the checkpoint's step, the number of images and where they
    went.

  Raises:
    ConfigError: the task does not generate images.
    errors.BadInput: see `experiment.setup` (WorkdirError when there is no checkpoint).
  """
  task = tasks.get(config.task)
  if task.sample is None:
    generators = ', '.join(k for k, t in tasks.TASKS.items() if t.sample is not None)
    raise ConfigError(
      f'task {config.task!r} does not generate images; --mode sample is for the '
      f'generative tasks ({generators})'
    )
  exp = experiment.setup(config, workdir, restoring=True)
  step, state = experiment.restore_latest(exp)
  n = int(config.sample.n)
  num_classes = (
    getattr(state.model, 'num_classes', 0) if getattr(state.model, 'conditional', True) else 0
  )
  labels = np.arange(n) % num_classes if num_classes else None
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
  draw = generative.ChunkedSampler(
    task.sample,
    exp.batch_sharding,
    parallel.batch_size_per_shard(exp.mesh),
    compiler_options=parallel.compiler_options(config),
  )
  images = grids.to_uint8(draw(state, key, n, labels))
  out = os.fspath(epath.Path(workdir) / 'samples' / f'step_{step}')
  if jax.process_index() == 0:
    for moved in workdir_lib.set_aside(out, out + '.npz'):
      print(f'moved the earlier samples to {moved}', file=sys.stderr)
    paths.makedirs(out)
    for i, image in enumerate(images):
      writers.save_png(epath.Path(out) / f'{i:05d}.png', image)
    # a self-conditioned GAN's cluster ids are no class labels: saved apart, so CAS and
    # data.synthetic (which need 'labels') cannot take them for classes
    tag = 'clusters' if config.data.clusters else 'labels'
    writers.save_npz(out + '.npz', images=images, **({} if labels is None else {tag: labels}))
  return {'step': step, 'samples': n, 'written': out}


def explain(config, workdir: str) -> dict:
  """`--mode explain`: vanilla-gradient saliency and integrated gradients (Sundararajan et al.
  2017) of the latest checkpoint's predictions for the first `explain.n` test images.

  Args:
    config: a classification config.
    workdir: the resolved run directory.

  Returns:
    {'step', 'explained', 'max_completeness_error', 'written'}; WORKDIR/explain/ holds one figure
    per image (image | saliency | integrated gradients) and summary.json (per image: labels,
    f(x) - f(baseline), the sum of the attributions and their relative gap).

  Raises:
    ConfigError: the task is not classification, or the data are not single images.
    errors.BadInput: see `experiment.setup` (WorkdirError when there is no checkpoint).
  """
  if config.task != 'classification':
    raise ConfigError(f'--mode explain explains classifiers; task {config.task!r} is not one')
  exp = experiment.setup(config, workdir, restoring=True)
  if exp.eval_split.input_key != 'image' or len(exp.eval_split.image_shape) != 3:
    raise ConfigError(
      f'--mode explain needs single images; {config.data.name} gives '
      f'{exp.eval_split.input_key} of shape {exp.eval_split.image_shape}'
    )
  step, state = experiment.restore_latest(exp)
  n = min(int(config.explain.n), exp.eval_split.size)
  batch = pipeline.preprocess(exp.eval_split.read(np.arange(n)), config.data.scale)
  x, labels = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  logit_fn = lambda v: state.model.apply(state.variables(), v, train=False)
  logits = jax.jit(logit_fn)(x)
  pred = jnp.argmax(logits, -1)
  baseline = jnp.full(x.shape[1:], -1.0 if config.data.scale == 'minus_one_one' else 0.0)
  sal = jax.jit(lambda x, t: explain_lib.saliency(logit_fn, x, t))(x, pred)
  ig = jax.jit(
    lambda x, t: explain_lib.integrated_gradients(
      logit_fn, x, t, baseline, int(config.explain.steps)
    )
  )(x, pred)
  f_base = jax.jit(logit_fn)(jnp.broadcast_to(baseline, x.shape))
  delta = np.asarray(jnp.take_along_axis(logits - f_base, pred[:, None], 1)[:, 0])
  total = np.asarray(ig.reshape(n, -1).sum(1))
  images = x if config.data.scale == 'zero_one' else (x + 1.0) / 2.0
  out = os.fspath(epath.Path(workdir) / 'explain')
  rows = []
  if jax.process_index() == 0:
    for moved in workdir_lib.set_aside(out):
      print(f'moved the earlier explanations to {moved}', file=sys.stderr)
    paths.makedirs(out)
  for i in range(n):
    t, p = int(labels[i]), int(pred[i])
    rows.append(
      {
        'index': i,
        'true': t,
        'pred': p,
        'f_x_minus_f_baseline': float(delta[i]),
        'sum_attributions': float(total[i]),
        'completeness_error': float(abs(total[i] - delta[i]) / max(abs(delta[i]), 1e-12)),
      }
    )
    if jax.process_index() == 0:
      figure = explain_lib.figure(
        np.asarray(images[i]), np.asarray(sal[i]), np.asarray(ig[i]), f'true {t}  pred {p}'
      )
      writers.save_png(epath.Path(out) / f'{i:03d}_true{t}_pred{p}.png', figure)
  summary = {
    'step': step,
    'steps': int(config.explain.steps),
    'images': rows,
    'max_completeness_error': max(r['completeness_error'] for r in rows),
  }
  if jax.process_index() == 0:
    writers.write_text(epath.Path(out) / 'summary.json', json.dumps(summary, indent=1))
  return {
    'step': step,
    'explained': n,
    'max_completeness_error': summary['max_completeness_error'],
    'written': out,
  }
