"""Seed-CNN train-step throughput on CPU: conv impls, chunk sizes, XLA options.

    python benchmarks/conv_impls.py                 # all variants
    python benchmarks/conv_impls.py --hugetlb       # same, THP-backed malloc
    python benchmarks/conv_impls.py --only xla,im2col_c8_pool2

Model: conv3x3 1->32 VALID, relu, conv3x3 32->64 VALID, BN, relu, maxpool 2x2,
dense 128, relu, dense 10; Adam; batch 128 of 28x28x1. All variants are
compiled first, then timed round-robin so that noise from other processes hits
them alike. Reported: best round (least disturbed) and median, in images/s,
and the process CPU time (user+sys, all threads) per step, which is less
sensitive to other load on the machine.

Knobs besides the conv impl:
  * pool2: ``max_pool_2x2`` instead of ``nn.max_pool``.
  * noynnconv / ynndot: compile (``jax.jit(compiler_options=...)``) with
    XLA:CPU's YNNPACK convolution rewrite disabled / with YNNPACK used for
    dots only. In jax 0.10 XLA:CPU sends convolutions to YNNPACK by default,
    which is several times slower here than its own (Eigen) convolution.
    Env equivalents: XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
    -individual_convolution (noynnconv) or =individual_dot (ynndot).
  * nchw: the conv stack runs in NCHW (transposes at its ends).
  * --hugetlb: re-exec with GLIBC_TUNABLES=glibc.malloc.hugetlb=1. XLA
    allocates ~100 MB of temporaries per step with fresh mmaps; backing them
    with transparent huge pages removes most page faults.
"""

import argparse
import os
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvision.models.layers import Conv, max_pool_2x2

# XLA:CPU's default YNNPACK fusion set is {individual dot, reduce, individual
# convolution}. 'noynnconv' drops convolution; 'ynndot' keeps only dots (the
# reduce fusion can also swallow a convolution that feeds a reduction).
_YNN = 'xla_cpu_experimental_ynn_fusion_type'
NO_YNN_CONV = {_YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
YNN_DOT_ONLY = {_YNN: 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


class SeedCNN(nn.Module):
  impl: str = 'xla'
  chunk: int = 16
  pool2: bool = False
  nchw: bool = False

  @nn.compact
  def __call__(self, x, train=True):
    if self.nchw:
      return self._nchw(x, train)
    conv = lambda f: Conv(f, (3, 3), padding='VALID', impl=self.impl, chunk=self.chunk)
    x = nn.relu(conv(32)(x))
    x = conv(64)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = max_pool_2x2(x) if self.pool2 else nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)

  def _nchw(self, x, train):
    def conv(x, f, name):
      k = self.param(f'{name}_kernel', nn.initializers.lecun_normal(), (3, 3, x.shape[1], f))
      b = self.param(f'{name}_bias', nn.initializers.zeros, (f,))
      y = jax.lax.conv_general_dilated(
        x, k, (1, 1), 'VALID', dimension_numbers=('NCHW', 'HWIO', 'NCHW')
      )
      return y + b[:, None, None]

    x = nn.relu(conv(x.transpose(0, 3, 1, 2), 32, 'c0'))
    x = conv(x, 64, 'c1')
    x = nn.relu(nn.BatchNorm(use_running_average=not train, axis=1)(x))
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).max(axis=(3, 5)).transpose(0, 2, 3, 1)
    x = nn.relu(nn.Dense(128)(x.reshape(b, -1)))
    return nn.Dense(10)(x)


def variants(chunks):
  v = {
    'xla': (SeedCNN('xla'), None),
    'xla_pool2': (SeedCNN('xla', pool2=True), None),
    'xla_pool2_noynnconv': (SeedCNN('xla', pool2=True), NO_YNN_CONV),
    'xla_pool2_ynndot': (SeedCNN('xla', pool2=True), YNN_DOT_ONLY),
    'xla_nchw': (SeedCNN(nchw=True), None),
    'xla_nchw_noynnconv': (SeedCNN(nchw=True), NO_YNN_CONV),
    'im2col_c8': (SeedCNN('im2col', 8), None),
  }
  for c in chunks:
    v[f'im2col_c{c}_pool2'] = (SeedCNN('im2col', c, pool2=True), None)
  return v


def make_step(model, batch, compiler_options=None):
  x = jnp.asarray(np.random.RandomState(0).rand(batch, 28, 28, 1), jnp.float32)
  y = jnp.asarray(np.random.RandomState(1).randint(0, 10, batch), jnp.int32)
  v = model.init(jax.random.PRNGKey(0), x)
  tx = optax.adam(1e-3)
  state = (v['params'], v['batch_stats'], tx.init(v['params']))

  def step(state, x, y):
    p, bs, opt = state

    def loss_fn(p):
      out, upd = model.apply({'params': p, 'batch_stats': bs}, x, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), upd

    (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    u, opt = tx.update(g, opt, p)
    return (optax.apply_updates(p, u), upd['batch_stats'], opt), loss

  step = jax.jit(step, compiler_options=compiler_options)
  for _ in range(2):  # compile + warm up
    state, loss = step(state, x, y)
  jax.block_until_ready(loss)
  return step, state, x, y


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--rounds', type=int, default=7)
  ap.add_argument('--steps', type=int, default=5)
  ap.add_argument('--chunks', default='4,8,16,32')
  ap.add_argument('--only', default='', help='comma-separated variant names')
  ap.add_argument('--hugetlb', action='store_true')
  args = ap.parse_args()
  if args.hugetlb and 'hugetlb' not in os.environ.get('GLIBC_TUNABLES', ''):
    env = dict(os.environ, GLIBC_TUNABLES='glibc.malloc.hugetlb=1')
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

  all_variants = variants([int(c) for c in args.chunks.split(',')])
  names = args.only.split(',') if args.only else list(all_variants)
  runs = {}
  for k in names:
    model, compiler_options = all_variants[k]
    runs[k] = list(make_step(model, args.batch, compiler_options))
  times = {k: [] for k in runs}
  cpu = {k: [] for k in runs}
  for _ in range(args.rounds):
    for k, r in runs.items():
      step, state, x, y = r
      t, c = time.perf_counter(), time.process_time()
      for _ in range(args.steps):
        state, loss = step(state, x, y)
      jax.block_until_ready(loss)
      times[k].append(time.perf_counter() - t)
      cpu[k].append(time.process_time() - c)
      r[1] = state

  n_img = args.batch * args.steps
  base = n_img / min(times[names[0]])
  print(
    f'{jax.devices()[0].platform}, {os.cpu_count()} cpus, batch {args.batch}, '
    f'{args.rounds} rounds x {args.steps} steps, '
    f'GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES", "")!r}'
  )
  print(f'{"variant":42s} {"best":>6s} {"median":>7s}  best/{names[0]}  cpu-ms/step')
  for k, ts in times.items():
    print(
      f'{k:42s} {n_img / min(ts):6.0f} {n_img / np.median(ts):7.0f}  '
      f'{n_img / min(ts) / base:5.2f}x {1e3 * np.median(cpu[k]) / args.steps:12.0f}'
    )


if __name__ == '__main__':
  main()
