"""Explanations of a classifier's predictions: vanilla-gradient saliency and integrated gradients.

  python run.py --config configs/cnn.py --workdir W --mode explain [--config.explain.n=16]

(the mode itself is `modes.explain`)

writes, for the first `explain.n` test images, `W/explain/<i>_true<t>_pred<p>.png`
(image | saliency | integrated gradients, with the labels) and `W/explain/summary.json`
(per image: labels, f(x) - f(baseline), the sum of the attributions and their relative gap).

Integrated gradients (Sundararajan et al. 2017) integrate the gradient of the target
logit along the straight path from a baseline (the data's background: 0, or -1 for
data in [-1, 1]) to x, with the trapezoid rule on `explain.steps` (512) intervals, all path
points of an image in one batched, jitted call. Completeness — the attributions sum to
f(x) - f(baseline) — holds up to the quadrature error, which the summary reports.
"""

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw


def saliency(logit_fn, x, target):
  """Vanilla-gradient saliency: |d logit_target / d x| maxed over channels.

  Args:
    logit_fn: images [B, H, W, C] -> logits [B, classes].
    x: images f32[B, H, W, C].
    target: i32[B] the class whose logit is explained, per image.

  Returns:
    f32[B, H, W].
  """
  grads = _input_grads(logit_fn, x, target)
  return jnp.max(jnp.abs(grads), axis=-1)


def _input_grads(logit_fn, x, target):
  """d logit_fn(x_i)[target_i] / d x_i for every image i: f32[B, H, W, C]."""

  def one(xi, ti):
    return jax.grad(lambda v: logit_fn(v[None])[0, ti])(xi)

  return jax.vmap(one)(x, target)


def integrated_gradients(logit_fn, x, target, baseline, steps: int):
  """Integrated gradients, with the trapezoid rule; one image's path points in one batch.

  Args:
    logit_fn: images [B, H, W, C] -> logits [B, classes].
    x: images f32[B, H, W, C].
    target: i32[B] the class whose logit is explained, per image.
    baseline: f32[H, W, C], the path's start (the data's background).
    steps: intervals of the path; steps + 1 points per image are evaluated at once.

  Returns:
    Attributions f32[B, H, W, C] whose sum over pixels approximates f(x) - f(baseline).
  """
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


def figure(image: np.ndarray, sal: np.ndarray, ig: np.ndarray, title: str, zoom: int = 4):
  """image | saliency | integrated gradients, side by side under `title`, as a PIL image.

  Args:
    image: f32[H, W, 1|3] in [0, 1] (clipped).
    sal: saliency f32[H, W], in grey.
    ig: attributions f32[H, W, C], summed over channels: positive red, negative blue.
    title: the line above the panels.
    zoom: pixels per image pixel (nearest neighbour).

  Returns:
    The RGB `PIL.Image.Image`.
  """
  img = np.clip(image, 0, 1)
  img = np.round((img if img.shape[-1] == 3 else np.repeat(img[..., :1], 3, -1)) * 255).astype(
    np.uint8
  )
  panels = [img, _panel(sal, signed=False), _panel(ig.sum(-1), signed=True)]
  h, w = img.shape[:2]
  canvas = Image.new('RGB', (3 * w * zoom + 4 * 4, h * zoom + 22), (255, 255, 255))
  for i, p in enumerate(panels):
    canvas.paste(
      Image.fromarray(p).resize((w * zoom, h * zoom), Image.NEAREST), (4 + i * (w * zoom + 4), 18)
    )
  ImageDraw.Draw(canvas).text(
    (4, 3), title + '   image | saliency | integrated gradients', fill=(0, 0, 0)
  )
  return canvas
