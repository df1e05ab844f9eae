"""Gradient accumulation (`config.optim.accum_steps` = k): one optimizer update from k
microbatches of the step's batch, in a `lax.scan` inside the jitted step.

    grads, metrics, carry = accumulate(loss_fn, params, inputs, k, rng, carry)

A train step still takes one batch of `data.batch_size` rows; k > 1 splits it into k microbatches
of B / k rows, runs the forward and backward pass on each in turn (so only one microbatch's
activations are alive at a time), sums the gradients in float32 and returns their mean: with
equal microbatches the mean of the microbatch means is the batch mean, so the update is the one
of a step on the whole batch, up to the order of floating-point sums. How the batch is split,
and what differs from the whole batch by design:

- Microbatch i holds the rows i, i + k, i + 2k, ... of the batch (strided, not contiguous): a
  batch split over D devices (jit's shardings, or pmap's per-device rows) keeps each microbatch
  split over all D devices, and the jit and pmap paths see the same microbatches.
- Random draws made inside `loss_fn` (dropout masks) take the key `fold_in(rng, i)` for
  microbatch i (the step's key itself when k = 1). The tasks draw every other per-example number
  (augmentation, latents, noise, binarisation, diffusion times) for the whole batch before
  splitting it, so those are the numbers of k = 1, row for row.
- BatchNorm normalises each microbatch with its own statistics, and its running averages are
  updated k times in a row (the `carry`), as k small steps' forward passes would; a step on the
  whole batch normalises with the batch's statistics and updates them once. Models without
  BatchNorm are unaffected.

There is no state across steps: a step is still a function of (state, batch), so resuming is
exact whatever k.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp


def microbatches(tree, k: int):
  """Every leaf [B, ...] of `tree` as k strided microbatches [k, B / k, ...].

  Args:
    tree: a PyTree of arrays whose axis 0 is the batch (None leaves stay None).
    k: the number of microbatches; it must divide B.

  Returns:
    The PyTree with leaves [k, B / k, ...]: microbatch i holds the rows i, i + k, i + 2k, ...

  Raises:
    ValueError: k does not divide a leaf's B (`config.validate` refuses such a batch size first).
  """

  def split(x):
    if x.shape[0] % k:
      raise ValueError(f'a batch of {x.shape[0]} rows does not split into {k} microbatches')
    return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, tree)


def accumulate(loss_fn: Callable, params, inputs, k: int, rng=None, carry=None):
  """The mean gradient and metrics of `loss_fn` over k microbatches of `inputs`.

  Args:
    loss_fn: (params, inputs, rng, carry) -> (loss, (metrics, carry)): the mean loss of the rows
      it gets, a dict of f32[] metrics (means over those rows) and the carry after them (e.g.
      BatchNorm statistics; it must keep its structure, shapes and dtypes).
    params: the parameters to differentiate.
    inputs: a PyTree of per-example arrays [B, ...] (images, labels, noise drawn for the batch).
    k: the number of microbatches (static); 1 is one call on the whole batch.
    rng: the key of the draws inside `loss_fn`: microbatch i gets `fold_in(rng, i)`, k = 1 gets
      `rng` itself; None: `loss_fn` gets None.
    carry: threaded through the microbatches in order (None: nothing to thread).

  Returns:
    (grads, metrics, carry): the mean of the microbatches' gradients (summed in float32, in the
    dtype of the gradients), the mean of their metrics, and the carry after the last one.
  """
  grad_fn = jax.grad(loss_fn, has_aux=True)
  if k == 1:
    grads, (metrics, carry) = grad_fn(params, inputs, rng, carry)
    return grads, metrics, carry
  split = microbatches(inputs, k)
  key = lambda i: None if rng is None else jax.random.fold_in(rng, i)
  first = jax.tree.map(lambda x: x[0], split)
  shapes, (metric_shapes, _) = jax.eval_shape(grad_fn, params, first, key(0), carry)
  f32_zeros = lambda s: jnp.zeros(s.shape, jnp.float32)

  def body(sums, xs):
    grad_sum, metric_sum, carry = sums
    i, rows = xs
    grads, (metrics, carry) = grad_fn(params, rows, key(i), carry)
    add = lambda total, x: total + x.astype(jnp.float32)
    return (jax.tree.map(add, grad_sum, grads), jax.tree.map(add, metric_sum, metrics), carry), None

  zeros = (jax.tree.map(f32_zeros, shapes), jax.tree.map(f32_zeros, metric_shapes), carry)
  (grad_sum, metric_sum, carry), _ = jax.lax.scan(body, zeros, (jnp.arange(k), split))
  grads = jax.tree.map(lambda total, s: (total / k).astype(s.dtype), grad_sum, shapes)
  metrics = jax.tree.map(lambda total, s: (total / k).astype(s.dtype), metric_sum, metric_shapes)
  return grads, metrics, carry
