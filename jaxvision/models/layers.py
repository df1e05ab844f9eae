"""Convolution and pooling layers with a fast CPU path.

``impl='im2col'`` computes a convolution as "gather the kh*kw shifted windows
into a patch tensor, then one matmul", ``chunk`` images at a time inside a
loop so the patch tensor stays in cache. The backward pass is a hand-written
``custom_vjp`` chunked the same way:

* ``dkernel = sum_chunks patches(x_c)^T @ g_c`` (patches recomputed per chunk,
  accumulated in a loop carry, float32 or wider);
* ``dx = col2im(g_c @ kernel^T)``: one matmul back to patch space, then the
  kh*kw windows are scattered back (as strided pads) and summed (in float32 or
  wider). This handles any stride without wasted FLOPs.

bfloat16 activations and kernels work with either impl: the matmuls take the
inputs' dtype (as ``lax.conv_general_dilated`` does), the sums above are
float32, and the results are cast back to the inputs' dtype.

Convs with few patch features (kh*kw*cin <= 32, e.g. a first layer on
grayscale/RGB input) compute the forward as a sum of shifted broadcast
products instead. Chunks interleave the batch (chunk ``i`` holds images
``i, i+n, i+2n, ...``), so a batch sharded over d devices stays device-local
inside the loop when ``chunk`` is a multiple of d (otherwise it still works,
but the partitioner gathers the batch).

Which impl to use on CPU (jax 0.10): XLA:CPU hands 2-D f32 convolutions to
YNNPACK by default, which is slow for these small convolutions; ``im2col``
avoids that and is 1.5-2x faster per conv (fwd+bwd). Faster still is
``impl='xla'`` with that rewrite disabled, e.g.
``jax.jit(step, compiler_options={'xla_cpu_experimental_ynn_fusion_type':
'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'})`` or
``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``
(see benchmarks/conv_impls.py).

All layouts are NHWC activations and HWIO kernels, like ``flax.linen.Conv``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxvision import parallel

Padding = str | int | Sequence[tuple[int, int]]
_DN = ('NHWC', 'HWIO', 'NHWC')


# ----------------------------------------------------------------- helpers


def _resolve_padding(padding: Padding, in_hw, k_hw, strides):
  """Returns padding as a hashable ((lo, hi), (lo, hi)) of Python ints."""
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(in_hw, k_hw, strides, padding)
  elif isinstance(padding, int):
    pads = ((padding, padding),) * 2
  else:
    pads = padding
  pads = tuple((int(lo), int(hi)) for lo, hi in pads)
  if len(pads) != 2:
    raise ValueError(f'need 2 (lo, hi) padding pairs, got {padding!r}')
  return pads


def _patches(x, kh, kw, strides, pads):
  """(b, H, W, C) -> (b, Ho, Wo, kh*kw*C), ordered (i, j, c) like HWIO."""
  zero = jnp.zeros((), x.dtype)
  x = lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  b, hp, wp, c = x.shape
  (sh, sw) = strides
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  cols = [
    lax.slice(x, (0, i, j, 0), (b, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
    for i in range(kh)
    for j in range(kw)
  ]
  return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)


def _matmul(a, b):
  """Contracts the last dim of ``a`` with the first dim of ``b``."""
  return lax.dot_general(a, b, (((a.ndim - 1,), (0,)), ((), ())))


def _col2im(cols, x_hw, kh, kw, strides, pads):
  """Adjoint of ``_patches``: (b, Ho, Wo, kh*kw*C) -> (b, H, W, C)."""
  b, ho, wo, _ = cols.shape
  cols = cols.reshape(b, ho, wo, kh * kw, -1)
  (sh, sw), (h, w) = strides, x_hw
  hp, wp = h + sum(pads[0]), w + sum(pads[1])
  zero = jnp.zeros((), cols.dtype)
  out = None
  for i in range(kh):
    for j in range(kw):
      # Window (i, j) read xpad[i + sh*o]; scatter it back with a strided pad.
      hi_h = hp - i - sh * (ho - 1) - 1
      hi_w = wp - j - sw * (wo - 1) - 1
      term = lax.pad(
        cols[:, :, :, i * kw + j],
        zero,
        ((0, 0, 0), (i, hi_h, sh - 1), (j, hi_w, sw - 1), (0, 0, 0)),
      )
      out = term if out is None else out + term
  # Undo the forward padding (negative padding = crop; cropped rows get 0).
  (lh, rh), (lw, rw) = pads
  return lax.pad(out, zero, ((0, 0, 0), (-lh, -rh, 0), (-lw, -rw, 0), (0, 0, 0)))


def _num_chunks(n, chunk):
  """Splits n into nc near-equal chunks of cb <= chunk rows (nc * cb >= n)."""
  nc = max(1, -(-n // max(1, chunk)))
  return nc, -(-n // nc)


def _to_chunks(a, nc, cb):
  """(B, ...) -> (cb, nc, ...), zero-padding the batch to nc * cb."""
  extra = nc * cb - a.shape[0]
  if extra:
    a = jnp.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1))
  return a.reshape(cb, nc, *a.shape[1:])


def _from_chunks(a, n):
  """The inverse of `_to_chunks`: (cb, nc, ...) -> (n, ...), the padding rows dropped."""
  return a.reshape(-1, *a.shape[2:])[:n]


def _chunk_map(f, nc, *args):
  """out[:, i] = f(*(a[:, i] for a in args)) for chunked (cb, nc, ...) args."""
  if nc == 1:
    return f(*(a[:, 0] for a in args))[:, None]
  take = lambda i: [lax.dynamic_index_in_dim(a, i, 1, keepdims=False) for a in args]
  spec = jax.eval_shape(f, *take(0))
  out = jnp.zeros((spec.shape[0], nc) + spec.shape[1:], spec.dtype)
  body = lambda i, out: lax.dynamic_update_index_in_dim(out, f(*take(i)), i, 1)
  return lax.fori_loop(0, nc, body, out)


def _chunk_sum(f, nc, *args):
  """sum_i f(*(a[:, i] for a in args)) for chunked (cb, nc, ...) args."""
  take = lambda i: [lax.dynamic_index_in_dim(a, i, 1, keepdims=False) for a in args]
  if nc == 1:
    return f(*take(0))
  spec = jax.eval_shape(f, *take(0))
  body = lambda i, acc: acc + f(*take(i))
  return lax.fori_loop(0, nc, body, jnp.zeros(spec.shape, spec.dtype))


# ------------------------------------------------------------- im2col conv


# Up to this many patch features (kh*kw*cin, e.g. 9 for a 3x3 conv on a
# grayscale image) the forward skips the patch tensor and sums shifted
# broadcast products in one elementwise pass; a matmul with so short a
# contraction is mostly overhead.
_DIRECT_MAX_K = 32


def _conv_direct(x, kernel, strides, pads):
  """The forward conv as a sum of shifted, broadcast products (few patch features)."""
  kh, kw, cin, _ = kernel.shape
  acc_t = jnp.promote_types(x.dtype, jnp.float32)
  p = _patches(x, 1, 1, (1, 1), pads)  # just the padded input
  (sh, sw) = strides
  ho, wo = (p.shape[1] - kh) // sh + 1, (p.shape[2] - kw) // sw + 1
  y = 0
  for i in range(kh):
    for j in range(kw):
      win = p[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw]
      for c in range(cin):
        y = y + win[..., c : c + 1].astype(acc_t) * kernel[i, j, c].astype(acc_t)
  return y.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_im2col(x, kernel, strides, pads, chunk):
  """The im2col forward: patches @ kernel, `chunk` images per loop step."""
  kh, kw, cin, cout = kernel.shape
  if kh * kw * cin <= _DIRECT_MAX_K:
    return _conv_direct(x, kernel, strides, pads)
  w2 = kernel.reshape(kh * kw * cin, cout)
  nc, cb = _num_chunks(x.shape[0], chunk)
  f = lambda xc: _matmul(_patches(xc, kh, kw, strides, pads), w2)
  return _from_chunks(_chunk_map(f, nc, _to_chunks(x, nc, cb)), x.shape[0])


def _conv_im2col_fwd(x, kernel, strides, pads, chunk):
  return _conv_im2col(x, kernel, strides, pads, chunk), (x, kernel)


def _conv_im2col_bwd(strides, pads, chunk, res, g):
  """(dx, dkernel) chunk by chunk: col2im(g @ kernel^T) and sum_chunks patches^T @ g."""
  x, kernel = res
  kh, kw, cin, cout = kernel.shape
  n = x.shape[0]
  nc, cb = _num_chunks(n, chunk)
  xs, gs = _to_chunks(x, nc, cb), _to_chunks(g.astype(x.dtype), nc, cb)
  acc_t = jnp.promote_types(kernel.dtype, jnp.float32)

  k = kh * kw * cin
  dims = (((0, 1, 2), (0, 1, 2)), ((), ()))

  def dkernel(xc, gc):
    # patches^T @ g, contracting batch and space. XLA transposes the lhs for
    # the matmul, so make the smaller of the two the lhs.
    # (Operands are upcast: XLA:CPU has no bf16 x bf16 -> f32 dot.)
    p = _patches(xc, kh, kw, strides, pads).astype(acc_t)
    gc = gc.astype(acc_t)
    if k <= cout:
      return lax.dot_general(p, gc, dims)
    return lax.dot_general(gc, p, dims).T

  w2t = kernel.reshape(k, cout).T
  # The kh*kw windows' contributions are summed in float32 (or wider), then cast to x's dtype.
  dx_chunk = lambda gc: _col2im(
    _matmul(gc, w2t).astype(acc_t), x.shape[1:3], kh, kw, strides, pads
  ).astype(x.dtype)
  dk = _chunk_sum(dkernel, nc, xs, gs).reshape(kernel.shape).astype(kernel.dtype)
  dx = _from_chunks(_chunk_map(dx_chunk, nc, gs), n)
  return dx, dk


_conv_im2col.defvjp(_conv_im2col_fwd, _conv_im2col_bwd)


def _update_in_place(x: jax.Array) -> jax.Array:
  """x, written back into itself: a dynamic-update-slice XLA does not fuse into its consumers."""
  return lax.dynamic_update_slice(x, x[:1], (0,) * x.ndim)


def materialize_on_cpu(x: jax.Array) -> jax.Array:
  """x unchanged (values and gradients, bitwise), read from memory by its consumers on XLA:CPU.

  The kernel gradient of an XLA convolution reads its input transposed (the batch innermost);
  XLA:CPU fuses the elementwise ops that made the input (BatchNorm, ReLU, and through the
  residual additions those of the blocks before) into that transpose and recomputes them there,
  strided: on ResNet-20 one such transpose recomputed four blocks. A no-op in-place update of
  the input keeps those fusions from reaching past it. Other backends get x as it is.
  """
  return lax.platform_dependent(x, cpu=_update_in_place, default=lambda x: x)


# --------------------------------------------- strided input gradient, sub-pixel


def _conv_xla(x, kernel, strides, pads):
  return lax.conv_general_dilated(x, kernel, strides, pads, dimension_numbers=_DN)


def _subpixel_input_grad(g, kernel, x_hw, strides, pads):
  """dL/dx of a strided convolution: one stride-1 convolution of g onto the s_h*s_w sub-pixel
  phases of x, then a depth-to-space.

  With x padded to xp, y[o] = sum_k xp[s*o + k] w[k], so xp's pixel s*p + r receives
  sum_m g[p - m] w[r + s*m]: per phase r, a correlation of g with the taps r, r + s, ... of w.
  XLA's transpose rule instead convolves g dilated with s - 1 zeros between pixels by the whole
  kernel, s_h*s_w times the multiplications (most of them by zero).

  Args:
    g: the output gradient (B, Ho, Wo, cout).
    kernel: (kh, kw, cin, cout).
    x_hw: (H, W) of the convolution's input.
    strides: (s_h, s_w).
    pads: ((lo, hi), (lo, hi)) of the forward convolution.

  Returns:
    (B, H, W, cin), in g's dtype.
  """
  kh, kw, cin, cout = kernel.shape
  (sh, sw), ((lh, _), (lw, _)), (h, w) = strides, pads, x_hw
  th, tw = -(-kh // sh), -(-kw // sw)  # taps per phase
  # v[a, b, :, (r, q, c)] = w[r + s_h*(th-1-a), q + s_w*(tw-1-b), c, :]: phases on the channels.
  v = jnp.pad(kernel, ((0, sh * th - kh), (0, sw * tw - kw), (0, 0), (0, 0)))
  v = v.reshape(th, sh, tw, sw, cin, cout)[::-1, :, ::-1]
  v = v.transpose(0, 2, 5, 1, 3, 4).reshape(th, tw, cout, sh * sw * cin)
  ph, pw = -(-(lh + h) // sh), -(-(lw + w) // sw)  # phase rows and columns that reach x
  zero = jnp.zeros((), g.dtype)
  g = lax.pad(
    g, zero, ((0, 0, 0), (th - 1, ph - g.shape[1], 0), (tw - 1, pw - g.shape[2], 0), (0, 0, 0))
  )
  dxp = depth_to_space(_conv_xla(g, v.astype(g.dtype), (1, 1), 'VALID'), (sh, sw))
  # x[i] is xp[lo + i]: crop (or, for a negative lo, zero-pad) to x's rows and columns.
  edges = [(-lo, n + lo - m, 0) for lo, n, m in zip((lh, lw), (h, w), dxp.shape[1:3])]
  return lax.pad(dxp, zero, ((0, 0, 0), *edges, (0, 0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_subpixel_grad(x, kernel, strides, pads):
  """XLA's convolution, its kernel gradient XLA's, its input gradient `_subpixel_input_grad` on
  CPU (XLA's elsewhere)."""
  return _conv_xla(x, kernel, strides, pads)


def _conv_subpixel_grad_fwd(x, kernel, strides, pads):
  return _conv_xla(x, kernel, strides, pads), (x, kernel)


def _conv_subpixel_grad_bwd(strides, pads, res, g):
  x, kernel = res
  kernel_t = jax.linear_transpose(lambda k: _conv_xla(x, k, strides, pads), kernel)
  x_t = jax.linear_transpose(lambda x: _conv_xla(x, kernel, strides, pads), x)
  # Measured on CPU only (benchmarks/README.md); GPUs and TPUs keep XLA's own input gradient.
  dx = lax.platform_dependent(
    g,
    cpu=lambda g: _subpixel_input_grad(g, kernel, x.shape[1:3], strides, pads),
    default=lambda g: x_t(g)[0],
  )
  return dx, kernel_t(g)[0]


_conv_subpixel_grad.defvjp(_conv_subpixel_grad_fwd, _conv_subpixel_grad_bwd)


def conv2d(
  x: jax.Array,
  kernel: jax.Array,
  *,
  strides: Sequence[int] = (1, 1),
  padding: Padding = 'SAME',
  impl: str = 'xla',
  chunk: int = 8,
) -> jax.Array:
  """2-D convolution, NHWC input, HWIO kernel, NHWC output.

  Args:
    x: (batch, height, width, in_channels).
    kernel: (kh, kw, in_channels, out_channels).
    strides: (sh, sw).
    padding: 'SAME', 'VALID' (or 'SAME_LOWER'), or ((lo, hi), (lo, hi)).
    impl: 'xla' (``lax.conv_general_dilated``, differentiated by jax),
      'xla_subpixel' (the same, but on CPU the input gradient of a convolution
      whose kernel is larger than its stride > 1 is `_subpixel_input_grad`: at
      stride 2 a quarter of the multiplications of XLA's zero-dilated one;
      equal up to rounding) or 'im2col' (chunked patches + matmul with a
      chunked custom backward; see the module docstring for when it is
      faster). 'xla_subpixel' and 'im2col' support reverse mode only (no
      jax.jvp).
    chunk: images per im2col loop step, small enough that a chunk's patch
      tensor stays in cache (4-8 suit a small CPU; benchmarks/conv_impls.py).
      The batch is split into near-equal chunks of at most ``chunk`` images
      (zero-padded if needed). With a batch sharded over d devices, use a
      multiple of d.

  Returns:
    (batch, out_height, out_width, out_channels).

  Raises:
    ValueError: ``impl`` is neither 'xla' nor 'im2col', or ``padding`` is not
      two (lo, hi) pairs.
  """
  strides = (strides,) * 2 if isinstance(strides, int) else tuple(int(s) for s in strides)
  pads = _resolve_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
  if impl in ('xla', 'xla_subpixel'):
    x = materialize_on_cpu(x)  # benchmarks/README.md: 1.2x on ResNet-20's step
    strided = [(k, s) for k, s in zip(kernel.shape[:2], strides) if s > 1]
    if impl == 'xla_subpixel' and strided and all(k > s for k, s in strided):
      return _conv_subpixel_grad(x, kernel, strides, pads)
    return _conv_xla(x, kernel, strides, pads)
  if impl == 'im2col':
    return _conv_im2col(x, kernel, strides, pads, int(chunk))
  raise ValueError(f'unknown conv impl {impl!r}')


class Conv(nn.Module):
  """Drop-in subset of ``flax.linen.Conv`` (2-D, NHWC) with a selectable impl.

  Parameters are ``kernel`` (kh, kw, in, features) and ``bias`` (features,),
  identical to ``nn.Conv``, so checkpoints are interchangeable across impls.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: as in `conv2d`.
    use_bias: add a learned bias.
    impl: 'xla', 'xla_subpixel' or 'im2col' (see `conv2d`).
    chunk: images per im2col loop step (see `conv2d`).
    dtype: the computation dtype (None: from the inputs and params).
    param_dtype: the parameters' dtype.
    kernel_init: the kernel's initializer.
    bias_init: the bias's initializer.
  """

  features: int
  kernel_size: Sequence[int] = (3, 3)
  strides: Sequence[int] = (1, 1)
  padding: Padding = 'SAME'
  use_bias: bool = True
  impl: str = 'xla'
  chunk: int = 8
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Convolves a batch (see `conv2d`).

    Args:
      x: (B, H, W, C).

    Returns:
      (B, H', W', features), plus the bias when `use_bias`.
    """
    chex.assert_rank(x, 4)
    kernel = self.param(
      'kernel', self.kernel_init, (*self.kernel_size, x.shape[-1], self.features), self.param_dtype
    )
    bias = (
      self.param('bias', self.bias_init, (self.features,), self.param_dtype)
      if self.use_bias
      else None
    )
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(
      x, kernel, strides=self.strides, padding=self.padding, impl=self.impl, chunk=self.chunk
    )
    return y if bias is None else y + bias


# ----------------------------------------------------------------- pooling


@jax.custom_vjp
def _max_pool_2x2(x):
  """2x2/2 max-pool of even-sized x as a reshape and a max."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool_2x2_fwd(x):
  y = _max_pool_2x2(x)
  return y, (x, y)


def _max_pool_2x2_bwd(res, g):
  # Route each window's gradient to its first maximal element (row-major
  # window order), exactly like XLA's select-and-scatter for nn.max_pool.
  x, y = res
  b, h, w, c = x.shape
  xr = x.reshape(b, h // 2, 2, w // 2, 2, c)
  y = y[:, :, None, :, None, :]
  hit = [xr[:, :, p : p + 1, :, q : q + 1] == y for p in (0, 1) for q in (0, 1)]
  taken = [hit[0], hit[0] | hit[1], hit[0] | hit[1] | hit[2]]
  first = [hit[0], hit[1] & ~taken[0], hit[2] & ~taken[1], ~taken[2]]
  p = lax.broadcasted_iota(jnp.int32, xr.shape, 2)
  q = lax.broadcasted_iota(jnp.int32, xr.shape, 4)
  sel = jnp.where(
    p == 0, jnp.where(q == 0, first[0], first[1]), jnp.where(q == 0, first[2], first[3])
  )
  dx = jnp.where(sel, g[:, :, None, :, None, :], jnp.zeros((), g.dtype))
  return (dx.reshape(x.shape),)


_max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, VALID, NHWC (== ``nn.max_pool(x, (2, 2), (2, 2))``).

  Forward is a reshape + max and the backward a single elementwise pass, both
  faster on CPU than ``reduce_window`` / ``select_and_scatter``. Gradients
  match ``nn.max_pool`` exactly, ties included (first maximum wins). An odd
  last row/column is dropped, as VALID pooling does.

  Args:
    x: (B, H, W, C).

  Returns:
    (B, H // 2, W // 2, C).
  """
  chex.assert_rank(x, 4)
  _, h, w, _ = x.shape
  if h % 2 or w % 2:
    x = x[:, : h - h % 2, : w - w % 2]
  return _max_pool_2x2(x)


def depth_to_space(x: jax.Array, r: int | tuple[int, int] = 2) -> jax.Array:
  """The sub-pixel upsampling of a conv's channels.

  Args:
    x: (B, H, W, r_h*r_w*C); channel (i*r_w + j)*C + c becomes pixel (i, j) of channel c's
      r_h x r_w block.
    r: the upsampling factor, or (r_h, r_w).

  Returns:
    (B, r_h*H, r_w*W, C).
  """
  rh, rw = (r, r) if isinstance(r, int) else r
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, rh, rw, c // (rh * rw)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * rh, w * rw, c // (rh * rw))


class Dropout(nn.Dropout):
  """`flax.linen.Dropout` whose mask is drawn through `parallel.batch_rows`: under jit (`split`
  None) it is flax's mask bit for bit; under the pmap path each device gets the jit path's mask
  rows."""

  split: parallel.BatchSplit | None = None

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None, rng=None):
    """Drops entries of `inputs` with probability `rate` and scales the rest by 1 / (1 - rate).

    Args:
      inputs: [B, ...]; axis 0 is the batch (it must not be in `broadcast_dims`).
      deterministic: no dropout (merged with the field of the same name).
      rng: the mask's key; None: `make_rng(rng_collection)`.

    Returns:
      An array of the shape and dtype of `inputs`.

    Raises:
      ValueError: `broadcast_dims` contains the batch axis 0.
    """
    deterministic = nn.merge_param('deterministic', self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:
      return jnp.zeros_like(inputs)
    if 0 in self.broadcast_dims:
      raise ValueError('Dropout.broadcast_dims must not contain the batch axis 0')
    keep = 1.0 - self.rate
    rng = self.make_rng(self.rng_collection) if rng is None else rng
    shape = [1 if d in self.broadcast_dims else s for d, s in enumerate(inputs.shape)]
    mask = parallel.batch_rows(
      self.split, lambda s: jax.random.bernoulli(rng, p=keep, shape=s), shape
    )
    return lax.select(jnp.broadcast_to(mask, inputs.shape), inputs / keep, jnp.zeros_like(inputs))


def batch_norm(split: parallel.BatchSplit | None = None, **kwargs) -> nn.BatchNorm:
  """`flax.linen.BatchNorm` with statistics over the global batch under either parallel path
  (under pmap its `axis_name` is the batch axis of `split`; under jit the batch is one array).

  Args:
    split: the pmap path's batch layout, or None under jit.
    **kwargs: `nn.BatchNorm`'s other fields (use_running_average, momentum, epsilon, name, ...).

  Returns:
    The BatchNorm module.
  """
  return nn.BatchNorm(axis_name=parallel.batch_axis(split), **kwargs)
