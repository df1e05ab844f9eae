"""Explanations of a classifier's predictions: vanilla-gradient saliency and integrated gradients.

  python run.py --config configs/cnn.py --workdir W --mode explain [--config.explain.n=16]

writes, for the first `explain.n` test images, `W/explain/<i>_true<t>_pred<p>.png`
(image | saliency | integrated gradients, with the labels) and `W/explain/summary.json`
(per image: labels, f(x) - f(baseline), the sum of the attributions and their relative gap).

Integrated gradients (Sundararajan et al. 2017) integrate the gradient of the target
logit along the straight path from a baseline (the data's background: 0, or -1 for
data in [-1, 1]) to x, with the trapezoid rule on `explain.steps` (512) intervals, all path
points of an image in one batched, jitted call. Completeness — the attributions sum to
f(x) - f(baseline) — holds up to the quadrature error, which the summary reports.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np


def saliency(logit_fn, x, target):
  """|d logit_target / d x| maxed over channels: f32[B, H, W]. logit_fn: [B, ...] -> [B, classes]."""
  grads = _input_grads(logit_fn, x, target)
  return jnp.max(jnp.abs(grads), axis=-1)


def _input_grads(logit_fn, x, target):
  def one(xi, ti):
    return jax.grad(lambda v: logit_fn(v[None])[0, ti])(xi)
  return jax.vmap(one)(x, target)


def integrated_gradients(logit_fn, x, target, baseline, steps: int):
  """Attributions f32[B, H, W, C] whose sum over pixels approximates f(x) - f(baseline)."""
  alphas = jnp.linspace(0.0, 1.0, steps + 1)
  weights = jnp.full((steps + 1,), 1.0 / steps).at[jnp.array([0, steps])].set(0.5 / steps)

  def one(xi, ti):
    path = baseline + alphas[:, None, None, None] * (xi - baseline)[None]
    grads = jax.vmap(jax.grad(lambda v: logit_fn(v[None])[0, ti]))(path)
    return jnp.tensordot(weights, grads, axes=1) * (xi - baseline)

  return jax.lax.map(lambda args: one(*args), (x, target))


def _panel(values: np.ndarray, signed: bool) -> np.ndarray:
  """A map as RGB uint8: magnitude in grey, or positive red / negative blue when signed."""
  scale = np.max(np.abs(values)) or 1.0
  v = values / scale
  if not signed:
    g = np.round(np.clip(v, 0, 1) * 255).astype(np.uint8)
    return np.stack([g, g, g], -1)
  rgb = np.zeros((*v.shape, 3), np.float32)
  rgb[..., 0] = np.clip(v, 0, 1)
  rgb[..., 2] = np.clip(-v, 0, 1)
  return np.round(rgb * 255).astype(np.uint8)


def _figure(image: np.ndarray, sal: np.ndarray, ig: np.ndarray, title: str, zoom: int = 4):
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  img = np.clip(image, 0, 1)
  img = np.round((img if img.shape[-1] == 3 else np.repeat(img[..., :1], 3, -1)) * 255).astype(np.uint8)
  panels = [img, _panel(sal, signed=False), _panel(ig.sum(-1), signed=True)]
  h, w = img.shape[:2]
  canvas = Image.new('RGB', (3 * w * zoom + 4 * 4, h * zoom + 22), (255, 255, 255))
  for i, p in enumerate(panels):
    canvas.paste(Image.fromarray(p).resize((w * zoom, h * zoom), Image.NEAREST), (4 + i * (w * zoom + 4), 18))
  ImageDraw.Draw(canvas).text((4, 3), title + '   image | saliency | integrated gradients', fill=(0, 0, 0))
  return canvas


def explain(config, workdir: str) -> dict:
  """The `--mode explain` entry point (see the module docstring)."""
  from jaxvision import config as config_lib, train  # pylint: disable=g-import-not-at-top
  from jaxvision import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from jaxvision.data import pipeline  # pylint: disable=g-import-not-at-top
  if config.task != 'classification':
    raise config_lib.ConfigError(f'--mode explain explains classifiers; task {config.task!r} is not one')
  exp = train.setup(config, workdir, restoring=True)
  if exp.eval_split.input_key != 'image' or len(exp.eval_split.image_shape) != 3:
    raise config_lib.ConfigError(f'--mode explain needs single images; {config.data.name} gives '
                                 f'{exp.eval_split.input_key} of shape {exp.eval_split.image_shape}')
  step, state = train.restore_latest(exp)
  n = min(int(config.explain.n), exp.eval_split.size)
  batch = pipeline.preprocess(exp.eval_split.read(np.arange(n)), config.data.scale)
  x, labels = jnp.asarray(batch['image']), jnp.asarray(batch['label'])
  logit_fn = lambda v: state.model.apply(state.variables(), v, train=False)
  logits = jax.jit(logit_fn)(x)
  pred = jnp.argmax(logits, -1)
  baseline = jnp.full(x.shape[1:], -1.0 if config.data.scale == 'minus_one_one' else 0.0)
  sal = jax.jit(lambda x, t: saliency(logit_fn, x, t))(x, pred)
  ig = jax.jit(lambda x, t: integrated_gradients(logit_fn, x, t, baseline, int(config.explain.steps)))(x, pred)
  f_base = jax.jit(logit_fn)(jnp.broadcast_to(baseline, x.shape))
  delta = np.asarray(jnp.take_along_axis(logits - f_base, pred[:, None], 1)[:, 0])
  total = np.asarray(ig.reshape(n, -1).sum(1))
  images = x if config.data.scale == 'zero_one' else (x + 1.0) / 2.0
  out = os.path.join(workdir, 'explain')
  rows = []
  if jax.process_index() == 0:
    for moved in workdir_lib.set_aside(out):
      print(f'moved the earlier explanations to {moved}', file=sys.stderr)
    os.makedirs(out, exist_ok=True)
  for i in range(n):
    t, p = int(labels[i]), int(pred[i])
    rows.append({'index': i, 'true': t, 'pred': p, 'f_x_minus_f_baseline': float(delta[i]),
                 'sum_attributions': float(total[i]),
                 'completeness_error': float(abs(total[i] - delta[i]) / max(abs(delta[i]), 1e-12))})
    if jax.process_index() == 0:
      _figure(np.asarray(images[i]), np.asarray(sal[i]), np.asarray(ig[i]), f'true {t}  pred {p}').save(
          os.path.join(out, f'{i:03d}_true{t}_pred{p}.png'))
  summary = {'step': step, 'steps': int(config.explain.steps), 'images': rows,
             'max_completeness_error': max(r['completeness_error'] for r in rows)}
  if jax.process_index() == 0:
    with open(os.path.join(out, 'summary.json'), 'w', encoding='utf-8') as f:
      json.dump(summary, f, indent=1)
  return {'step': step, 'explained': n, 'max_completeness_error': summary['max_completeness_error'],
          'written': out}
