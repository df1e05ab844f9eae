"""benchmarks/profile_step.py: the op kinds it reads from compiled HLO and the times it reads
from a jax.profiler trace (no torch needed; not timed)."""

import os
import sys

import jax
import jax.numpy as jnp

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))
import profile_step  # noqa: E402


def _step(x, w, m):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return (
    jnp.sum(y, axis=(1, 2)) @ m,
    jnp.transpose(y, (3, 1, 2, 0)) * 2.0,
    jnp.transpose(y, (1, 2, 0, 3)),
  )


def test_op_kinds_and_times_of_a_traced_step(tmp_path):
  args = (jnp.ones((8, 16, 16, 4)), jnp.ones((3, 3, 4, 32)), jnp.ones((32, 64)))
  compiled = jax.jit(_step).lower(*args).compile()
  kinds = profile_step.op_kinds(compiled.as_text())
  assert {k.split(' ')[0] for k in kinds.values()} >= {'conv', 'dot'}, kinds
  assert set(kinds.values()) <= set(profile_step.KINDS)
  # a transpose that also computes is arithmetic (recomputation), whatever XLA names it
  mixed = [name for name in kinds if 'transpose' in name and 'multiply' in name]
  assert mixed and all(kinds[name] == 'elementwise' for name in mixed), kinds
  jax.block_until_ready(compiled(*args))
  with jax.profiler.trace(str(tmp_path), create_perfetto_trace=True):
    for _ in range(3):
      out = compiled(*args)
    jax.block_until_ready(out)
  times = profile_step.op_times(str(tmp_path), 3)
  convs = [name for name, kind in kinds.items() if kind.startswith('conv')]
  assert any(times.get(name, 0) > 0 for name in convs), (convs, sorted(times)[:20])
  info = profile_step.op_info(compiled.as_text())
  assert all(info[name][0].startswith('f32[') for name in convs)
  assert any('conv_general_dilated' in info[name][1] for name in convs), [info[n] for n in convs]
