"""Seed-CNN train-step throughput: conv impl 'xla' vs 'im2col' (several chunks).

Run: python benchmarks/conv_impls.py [--batch 128] [--rounds 5] [--steps 10]
All variants are compiled first, then timed interleaved (round-robin) so that
machine noise hits every variant alike; the median over rounds is reported.
"""
import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxvision.models.layers import Conv, max_pool_2x2


class SeedCNN(nn.Module):
  impl: str = 'xla'
  chunk: int = 16
  fast_pool: bool = False

  @nn.compact
  def __call__(self, x, train=True):
    conv = lambda f: Conv(f, (3, 3), padding='VALID', impl=self.impl, chunk=self.chunk)
    x = nn.relu(conv(32)(x))
    x = conv(64)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    x = max_pool_2x2(x) if self.fast_pool else nn.max_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return nn.Dense(10)(x)


def make_step(model, batch):
  x = jnp.asarray(np.random.RandomState(0).rand(batch, 28, 28, 1), jnp.float32)
  y = jnp.asarray(np.random.RandomState(1).randint(0, 10, batch), jnp.int32)
  v = model.init(jax.random.PRNGKey(0), x)
  tx = optax.adam(1e-3)
  state = (v['params'], v['batch_stats'], tx.init(v['params']))

  @jax.jit
  def step(state, x, y):
    p, bs, opt = state
    def loss_fn(p):
      out, upd = model.apply({'params': p, 'batch_stats': bs}, x, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(out, y).mean(), upd
    (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    u, opt = tx.update(g, opt, p)
    return (optax.apply_updates(p, u), upd['batch_stats'], opt), loss

  for _ in range(2):  # compile + warm up
    state, loss = step(state, x, y)
  jax.block_until_ready(loss)
  return step, state, x, y


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--rounds', type=int, default=5)
  ap.add_argument('--steps', type=int, default=10)
  ap.add_argument('--chunks', default='8,16,32')
  args = ap.parse_args()

  variants = {'xla': SeedCNN('xla'), 'xla+pool2x2': SeedCNN('xla', fast_pool=True)}
  for c in map(int, args.chunks.split(',')):
    variants[f'im2col c={c}'] = SeedCNN('im2col', c)
    variants[f'im2col c={c}+pool2x2'] = SeedCNN('im2col', c, fast_pool=True)
  runs = {k: list(make_step(m, args.batch)) for k, m in variants.items()}
  times = {k: [] for k in variants}
  for _ in range(args.rounds):
    for k, r in runs.items():
      step, state, x, y = r
      t = time.perf_counter()
      for _ in range(args.steps):
        state, loss = step(state, x, y)
      jax.block_until_ready(loss)
      times[k].append(time.perf_counter() - t)
      r[1] = state
  base = args.batch * args.steps / np.median(times['xla'])
  print(f'{jax.devices()[0].device_kind}, batch {args.batch}, '
        f'{args.rounds} rounds x {args.steps} steps, median')
  for k, ts in times.items():
    ips = args.batch * args.steps / np.median(ts)
    print(f'{k:24s} {ips:8.0f} img/s  {ips / base:5.2f}x xla  '
          f'(min-max {args.batch * args.steps / max(ts):.0f}-{args.batch * args.steps / min(ts):.0f})')


if __name__ == '__main__':
  main()
