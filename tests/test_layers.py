"""Tests for jaxvision.models.layers: im2col and sub-pixel-gradient convs against XLA, max-pool."""

import functools
from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxvision.models import layers
from jaxvision.models.layers import Conv, Dropout, conv2d, max_pool_2x2

# name: (batch, height, width, cin, cout, kernel (kh, kw), strides, padding, chunk).
# kh*kw*cin <= 32 takes the direct (no patch tensor) forward, larger the matmul.
CASES = {
  '3x3_valid_s1_cin1_ragged': (7, 9, 8, 1, 8, (3, 3), (1, 1), 'VALID', 3),
  '3x3_same_s1_cin3': (6, 10, 9, 3, 8, (3, 3), (1, 1), 'SAME', 2),
  '3x3_same_s2_cin3_ragged': (5, 11, 10, 3, 8, (3, 3), (2, 2), 'SAME', 2),
  '3x3_valid_s1_cin8_ragged': (5, 8, 7, 8, 6, (3, 3), (1, 1), 'VALID', 2),
  '3x3_same_s2_cin4': (4, 11, 10, 4, 8, (3, 3), (2, 2), 'SAME', 2),
  '1x1_s2_cin40_chunk_gt_batch': (4, 9, 10, 40, 8, (1, 1), (2, 2), 'SAME', 16),
  '7x7_same_s2_cin3': (4, 16, 15, 3, 8, (7, 7), (2, 2), 'SAME', 2),
  '3x2_explicit_pads_s3x2': (5, 12, 11, 6, 4, (3, 2), (3, 2), ((2, -1), (0, 3)), 2),
}


def _rel_err(a, b):  # numpy, not jnp: eager jax ops would each compile
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def _normal(seed, shape, dtype=np.float32):
  return jnp.asarray(np.random.RandomState(seed).standard_normal(shape).astype(dtype))


def _conv_and_grads(x, kernel, g, **kw):
  y, vjp = jax.vjp(lambda x, kernel: conv2d(x, kernel, **kw), x, kernel)
  return (y, *vjp(g))


@pytest.mark.parametrize('case', list(CASES))
def test_im2col_matches_xla(case):
  b, h, w, cin, cout, k, s, pad, chunk = CASES[case]
  x, kernel = _normal(0, (b, h, w, cin)), _normal(1, (*k, cin, cout))
  g = _normal(2, jax.eval_shape(lambda: conv2d(x, kernel, strides=s, padding=pad)).shape)
  run = lambda impl: jax.jit(
    functools.partial(_conv_and_grads, strides=s, padding=pad, impl=impl, chunk=chunk)
  )(x, kernel, g)
  for name, got, want in zip(('y', 'dx', 'dkernel'), run('im2col'), run('xla')):
    assert got.shape == want.shape, name
    assert _rel_err(got, want) < 1e-4, name


@pytest.mark.parametrize('case', list(CASES))
def test_xla_subpixel_input_gradient_matches_xla(case):
  """'xla_subpixel' is XLA's convolution and kernel gradient bit for bit; its input gradient (by
  sub-pixel phases where the kernel is larger than a stride > 1) equals XLA's up to rounding."""
  b, h, w, cin, cout, k, s, pad, _ = CASES[case]
  x, kernel = _normal(0, (b, h, w, cin)), _normal(1, (*k, cin, cout))
  g = _normal(2, jax.eval_shape(lambda: conv2d(x, kernel, strides=s, padding=pad)).shape)
  run = lambda impl: jax.jit(functools.partial(_conv_and_grads, strides=s, padding=pad, impl=impl))(
    x, kernel, g
  )
  (y, dx, dk), (y_ref, dx_ref, dk_ref) = run('xla_subpixel'), run('xla')
  np.testing.assert_array_equal(np.asarray(y), np.asarray(y_ref))
  np.testing.assert_array_equal(np.asarray(dk), np.asarray(dk_ref))
  assert dx.shape == dx_ref.shape and _rel_err(dx, dx_ref) < 1e-5


@pytest.mark.parametrize('pads', [((1, 2), (1, 2)), ((-1, 3), (2, -1)), ((0, 0), (0, 0))])
def test_xla_subpixel_takes_phases_with_fewer_multiplications(pads):
  """A 4x4 stride-2 conv (a DCGAN discriminator's), also with a negative padding: the input
  gradient is a stride-1 convolution whose kernel holds the 4 phases' 2x2 taps (no zero-dilated
  input), and it matches XLA's transpose."""
  x, kernel = _normal(0, (3, 14, 13, 5)), _normal(1, (4, 4, 5, 6))
  conv = functools.partial(conv2d, strides=(2, 2), padding=pads, impl='xla_subpixel')
  g = _normal(2, jax.eval_shape(conv, x, kernel).shape)
  grad = jax.jit(lambda x, k, g: jax.vjp(conv, x, k)[1](g)[0])
  hlo = grad.lower(x, kernel, g).as_text().splitlines()
  convs = [line for line in hlo if 'convolution' in line]
  assert len(convs) == 1 and 'lhs_dilate = [1, 1]' in convs[0] and '[0, 1, i, o]' in convs[0]
  ref = jax.jit(lambda x, k, g: jax.vjp(functools.partial(conv, impl='xla'), x, k)[1](g)[0])
  assert _rel_err(grad(x, kernel, g), ref(x, kernel, g)) < 1e-5
  # measured on CPU only: lowered for a GPU, the gradient is XLA's zero-dilated convolution
  gpu = jax.export.export(grad, platforms=['cuda'])(x, kernel, g).mlir_module().splitlines()
  convs = [line for line in gpu if 'convolution' in line]
  assert len(convs) == 1 and 'lhs_dilate = [2, 2]' in convs[0]


def test_xla_subpixel_second_order_and_bfloat16():
  """The gradient of a gradient penalty (a GAN's R1) through 'xla_subpixel' matches XLA's, and
  bfloat16 stays bfloat16."""
  x, kernel = _normal(0, (2, 12, 12, 3)), 0.3 * _normal(1, (4, 4, 3, 8))

  def penalty(kernel, impl):
    d = lambda x: jnp.sum(jnp.tanh(conv2d(x, kernel, strides=(2, 2), impl=impl)))
    return jnp.sum(jax.grad(d)(x) ** 2)

  got, want = (
    jax.jit(jax.grad(penalty), static_argnums=1)(kernel, i) for i in ('xla_subpixel', 'xla')
  )
  assert _rel_err(got, want) < 1e-4
  xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
  conv = lambda impl: jax.jit(
    lambda x, k: jax.grad(lambda x: jnp.sum(conv2d(x, k, strides=(2, 2), impl=impl) ** 2))(x)
  )(xb, kb)
  got, want = conv('xla_subpixel'), conv('xla')
  assert got.dtype == jnp.bfloat16
  assert _rel_err(got.astype(jnp.float32), want.astype(jnp.float32)) < 2e-2


def test_im2col_batch_sharded():
  n = jax.device_count()
  if n < 2:
    pytest.skip('needs several (e.g. forced host) devices')
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  x, kernel, g = (
    _normal(0, (2 * n, 6, 6, 4)),
    _normal(1, (3, 3, 4, 4)),
    _normal(2, (2 * n, 6, 6, 4)),
  )
  xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  f = lambda impl: jax.jit(functools.partial(_conv_and_grads, impl=impl, chunk=n))
  got, want = f('im2col')(xs, kernel, g), f('xla')(x, kernel, g)
  assert got[0].sharding.spec == jax.sharding.PartitionSpec('data')
  for a, b in zip(got, want):
    assert _rel_err(a, b) < 1e-4


def test_im2col_bfloat16():
  x, kernel, g = (
    _normal(i, s).astype(jnp.bfloat16)
    for i, s in enumerate([(3, 6, 6, 4), (3, 3, 4, 4), (3, 6, 6, 4)])
  )
  run = lambda impl: jax.jit(functools.partial(_conv_and_grads, impl=impl, chunk=2))(x, kernel, g)
  for got, want in zip(run('im2col'), run('xla')):
    assert got.dtype == jnp.bfloat16
    assert _rel_err(got.astype(jnp.float32), want.astype(jnp.float32)) < 2e-2


def test_xla_conv_inputs_materialized_on_cpu_without_changing_a_bit():
  """Two residual steps (BatchNorm-like arithmetic, ReLU, additions) through XLA convs: the
  no-op update in front of each conv leaves loss and gradients bitwise equal to plain convs, and
  survives XLA:CPU's simplifier (else the fusions it exists to stop come back)."""
  k = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(k[0], (4, 8, 8, 3))
  w1 = jax.random.normal(k[1], (3, 3, 3, 3)) * 0.3
  w2 = jax.random.normal(k[2], (3, 3, 3, 3)) * 0.3

  def loss(ws, x):
    for w in ws:
      y = conv2d(x, w)
      y = (y - y.mean((0, 1, 2))) * jax.lax.rsqrt(y.var((0, 1, 2)) + 1e-5)
      x = jax.nn.relu(x + y)
    return jnp.sum(x**2)

  grad = jax.jit(jax.value_and_grad(loss))
  ours = grad((w1, w2), x)
  hlo = grad.lower((w1, w2), x).compile().as_text()
  plain = jax.jit(jax.value_and_grad(loss))
  with mock.patch.object(layers, 'materialize_on_cpu', lambda x: x):
    theirs = plain((w1, w2), x)
    plain_hlo = plain.lower((w1, w2), x).compile().as_text()
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert 'dynamic-update-slice' in hlo and 'dynamic-update-slice' not in plain_hlo


def test_module_params_match_nn_conv():
  x = _normal(0, (2, 8, 8, 3))
  ref_module = nn.Conv(5, (3, 3))
  modules = {impl: Conv(5, (3, 3), impl=impl) for impl in ('xla', 'xla_subpixel', 'im2col')}

  @jax.jit  # one compile for everything
  def run(key, x):
    ref = ref_module.init(key, x)
    ours = {impl: (m.init(key, x), m.apply(ref, x)) for impl, m in modules.items()}
    return ref, ref_module.apply(ref, x), ours

  ref, y_ref, ours = run(jax.random.PRNGKey(0), x)
  for params, y in ours.values():
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref)
    np.testing.assert_array_equal(params['params']['kernel'], ref['params']['kernel'])
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)  # same params, same output
  v = jax.eval_shape(Conv(5, (1, 1), use_bias=False).init, jax.random.PRNGKey(0), x)
  assert set(v['params']) == {'kernel'}
  with pytest.raises(AssertionError):
    jax.eval_shape(Conv(5).init, jax.random.PRNGKey(0), x[0])


@pytest.mark.parametrize('shape', [(3, 8, 6, 4), (2, 7, 5, 3)])
def test_max_pool_2x2_matches_nn_max_pool(shape):
  x = np.maximum(np.round(2 * np.random.RandomState(0).standard_normal(shape)) / 2, 0)
  x = jnp.asarray(x, jnp.float32)  # plenty of ties, incl. all-zero windows
  ref = lambda x: nn.max_pool(x, (2, 2), (2, 2))

  @jax.jit
  def pool_and_grad(x):
    y, vjp = jax.vjp(max_pool_2x2, x)
    y_ref, vjp_ref = jax.vjp(ref, x)
    g = jax.random.normal(jax.random.PRNGKey(1), y.shape)  # inside jit: no extra compile
    return y, y_ref, vjp(g)[0], vjp_ref(g)[0]

  y, y_ref, dx, dx_ref = pool_and_grad(x)
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(dx, dx_ref)


def test_dropout_is_flax_dropout_bit_for_bit_and_keeps_the_batch_axis_its_own():
  """layers.Dropout (masks through parallel.batch_rows for the pmap path) draws flax's mask under
  jit."""
  x = jnp.arange(2 * 3 * 5, dtype=jnp.float32).reshape(2, 3, 5) + 1.0
  rngs = {'dropout': jax.random.PRNGKey(3)}
  for dims in ((), (1,)):
    ours = Dropout(0.4, broadcast_dims=dims).apply({}, x, deterministic=False, rngs=rngs)
    flax = nn.Dropout(0.4, broadcast_dims=dims).apply({}, x, deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(ours, flax)
    assert 0 < int(jnp.sum(ours == 0)) < x.size
  with pytest.raises(ValueError, match='broadcast_dims must not contain the batch axis 0'):
    Dropout(0.4, broadcast_dims=(0,)).apply({}, x, deterministic=False, rngs=rngs)
