"""Tests for jaxvision.models.layers: im2col conv == XLA conv, fast max-pool."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models.layers import Conv, conv2d, max_pool_2x2

# name: (batch, height, width, cin, cout, kernel (kh, kw), strides, padding, chunk)
CASES = {
    '3x3_valid_s1_cin1_ragged': (7, 9, 8, 1, 8, (3, 3), (1, 1), 'VALID', 3),
    '3x3_same_s1_cin3': (6, 10, 9, 3, 8, (3, 3), (1, 1), 'SAME', 2),
    '3x3_same_s2_ragged': (5, 11, 10, 3, 8, (3, 3), (2, 2), 'SAME', 2),
    '1x1_s2_chunk_gt_batch': (4, 9, 10, 3, 8, (1, 1), (2, 2), 'SAME', 16),
    '7x7_same_s2': (4, 16, 15, 3, 8, (7, 7), (2, 2), 'SAME', 2),
    '3x2_explicit_pads_s3x2': (5, 12, 11, 2, 4, (3, 2), (3, 2), ((2, -1), (0, 3)), 2),
}


def _rel_err(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _conv_and_grads(x, kernel, g, **kw):
  y, vjp = jax.vjp(lambda x, kernel: conv2d(x, kernel, **kw), x, kernel)
  return (y, *vjp(g))


@pytest.mark.parametrize('case', list(CASES))
def test_im2col_matches_xla(case):
  b, h, w, cin, cout, k, s, pad, chunk = CASES[case]
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, (b, h, w, cin))
  kernel = jax.random.normal(kw, (*k, cin, cout))
  out_shape = jax.eval_shape(lambda: conv2d(x, kernel, strides=s, padding=pad)).shape
  g = jax.random.normal(kg, out_shape)
  run = lambda impl: jax.jit(functools.partial(
      _conv_and_grads, strides=s, padding=pad, impl=impl, chunk=chunk))(x, kernel, g)
  for name, got, want in zip(('y', 'dx', 'dkernel'), run('im2col'), run('xla')):
    assert got.shape == want.shape, name
    assert _rel_err(got, want) < 1e-4, name


def test_im2col_batch_sharded():
  n = jax.device_count()
  if n < 2:
    pytest.skip('needs several (e.g. forced host) devices')
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  x = jax.random.normal(jax.random.PRNGKey(0), (2 * n, 6, 6, 2))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 4))
  g = jnp.ones((2 * n, 6, 6, 4))
  xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  f = lambda impl: jax.jit(functools.partial(_conv_and_grads, impl=impl, chunk=n))
  got, want = f('im2col')(xs, kernel, g), f('xla')(x, kernel, g)
  assert got[0].sharding.spec == jax.sharding.PartitionSpec('data')
  for a, b in zip(got, want):
    assert _rel_err(a, b) < 1e-4


def test_im2col_bfloat16():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 6, 6, 2), jnp.bfloat16)
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 2, 4), jnp.bfloat16)
  g = jnp.ones((3, 6, 6, 4), jnp.bfloat16)
  run = lambda impl: jax.jit(functools.partial(_conv_and_grads, impl=impl, chunk=2))(x, kernel, g)
  for got, want in zip(run('im2col'), run('xla')):
    assert got.dtype == jnp.bfloat16
    assert _rel_err(got.astype(jnp.float32), want.astype(jnp.float32)) < 2e-2


def test_module_params_match_nn_conv():
  x = jnp.ones((2, 8, 8, 3))
  init = lambda m: jax.jit(m.init)(jax.random.PRNGKey(0), x)
  ref_module = nn.Conv(5, (3, 3))
  ref = init(ref_module)
  for impl in ('xla', 'im2col'):
    m = Conv(5, (3, 3), impl=impl)
    v = init(m)
    assert jax.tree.map(jnp.shape, v) == jax.tree.map(jnp.shape, ref)
    np.testing.assert_array_equal(v['params']['kernel'], ref['params']['kernel'])
    # Same params -> same output as flax's own Conv.
    np.testing.assert_allclose(jax.jit(m.apply)(ref, x), jax.jit(ref_module.apply)(ref, x),
                               rtol=1e-5, atol=1e-6)
  v = jax.eval_shape(Conv(5, (1, 1), use_bias=False).init, jax.random.PRNGKey(0), x)
  assert set(v['params']) == {'kernel'}
  with pytest.raises(AssertionError):
    jax.eval_shape(Conv(5).init, jax.random.PRNGKey(0), jnp.ones((8, 8, 3)))


@pytest.mark.parametrize('shape', [(3, 8, 6, 4), (2, 7, 6, 3)])
def test_max_pool_2x2_matches_nn_max_pool(shape):
  x = jax.random.normal(jax.random.PRNGKey(0), shape)
  x = jax.nn.relu(jnp.round(2 * x) / 2)  # plenty of ties, incl. all-zero windows
  ref = lambda x: nn.max_pool(x, (2, 2), (2, 2))

  @jax.jit
  def pool_and_grad(x):
    y, vjp = jax.vjp(max_pool_2x2, x)
    y_ref, vjp_ref = jax.vjp(ref, x)
    g = jax.random.normal(jax.random.PRNGKey(1), y.shape)
    return y, y_ref, vjp(g)[0], vjp_ref(g)[0]

  y, y_ref, dx, dx_ref = pool_and_grad(x)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(dx, dx_ref)
