"""Where a jaxvision train step spends its time: a jax.profiler trace, summed by kind of op.

    python benchmarks/profile_step.py                        # the six benchmark models, batch 128
    python benchmarks/profile_step.py --models resnet --set cpu_convolutions=xla
    python benchmarks/profile_step.py --models vae --trace-dir /tmp/vae_trace   # keep the trace
    python benchmarks/profile_step.py --models dcgan --top 20   # and its 20 slowest ops

For each model (configs/<model>.py, the product's step exactly as `run.py` jits it, on one
batch of real training images) it times the step, then traces `--steps` steps with
`jax.profiler.trace(create_perfetto_trace=True)` and sums the durations of XLA:CPU's op
events per step, by what the op computes (read from the compiled HLO):

  conv (ynn) / conv (xla)    convolutions, in YNNPACK or XLA's own emitter
  dot (ynn) / dot (xla)      matmuls
  layout (transpose, copy)   fusions that only move data: transposes and copies
  elementwise                other loop fusions (activations, BatchNorm arithmetic, optimizer),
                             also a transpose fusion that recomputes its operand's arithmetic
  reduce                     fusions with a reduction (BatchNorm statistics, losses)

(ops inside loops, such as im2col's chunked convs and the LSTM's scan, count as themselves).

`--top N` lists the N slowest ops with their result shape and the jax op that made them (the
HLO's op_name, e.g. `transpose(jvp(ResNet))/.../conv_general_dilated` for a gradient). The
step runs with malloc on huge pages, as `run.py` runs it. No torch needed. The trace can be
opened in Perfetto (ui.perfetto.dev) or TensorBoard.
Percentages are of the summed op time. XLA:CPU runs independent ops on both cores at once,
so the sum can exceed the step time (`traced` > 100 %); XLA's own convolutions run on
Eigen's pool, mostly outside the trace (`traced` well under 100 % with
`cpu_convolutions='xla'`: the missing time is theirs).
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = ('cnn', 'resnet', 'vit', 'lstm', 'dcgan', 'conv_vae')
KINDS = (
  'conv (ynn)',
  'conv (xla)',
  'dot (ynn)',
  'dot (xla)',
  'layout (transpose, copy)',
  'elementwise',
  'reduce',
)


def op_kinds(hlo_text: str) -> dict:
  """{instruction name: kind} for the instructions of a compiled HLO module (loops and calls left
  out)."""
  bodies = {
    m.group(1): m.group(2)
    for m in re.finditer(r'^%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}', hlo_text, re.S | re.M)
  }
  kinds = {}
  for m in re.finditer(r'^\s+(?:ROOT )?%?([\w.\-]+) = ([^\n]*)$', hlo_text, re.M):
    name, rest = m.groups()
    if rest.startswith('('):  # a tuple type: skip to its closing parenthesis
      depth, i = 0, 0
      for i, ch in enumerate(rest):  # noqa: B007  (i is read after the loop)
        depth += {'(': 1, ')': -1}.get(ch, 0)
        if depth == 0:
          break
      rest = rest[i + 1 :]
    else:
      rest = rest.split(' ', 1)[1] if ' ' in rest else ''
    op = re.match(r'\s*([\w\-]+)\(', rest)
    if not op:
      continue
    opcode = op.group(1)
    called = re.search(r'calls=%?([\w.\-]+)', rest)
    body = bodies.get(called.group(1), '') if called else ''
    ops = set(re.findall(r' ([a-z][\w\-]*)\(', body)) | {opcode}
    engine = '(ynn)' if name.startswith('ynn') else '(xla)'
    if opcode in ('while', 'call', 'conditional'):
      continue  # their bodies' ops have events of their own
    if 'convolution' in ops:
      kinds[name] = f'conv {engine}'
    elif 'dot' in ops:
      kinds[name] = f'dot {engine}'
    elif ops & {'reduce', 'reduce-window'}:
      kinds[name] = 'reduce'
    elif opcode in ('copy', 'transpose') or ops <= {
      'fusion',
      'copy',
      'transpose',
      'bitcast',
      'parameter',
      'slice',
      'concatenate',
      'pad',
      'reshape',
      'broadcast',
      'tuple',
      'get-tuple-element',
    }:
      kinds[name] = 'layout (transpose, copy)'
    else:
      kinds[name] = 'elementwise'
  return kinds


def op_info(hlo_text: str) -> dict:
  """{instruction name: (result shape, jax's op_name)} for the instructions of a compiled HLO
  module: what an op event of the trace computed, and which line of the model made it."""
  info = {}
  for m in re.finditer(r'^\s+(?:ROOT )?%?([\w.\-]+) = (\S+) [^\n]*$', hlo_text, re.M):
    source = re.search(r'op_name="([^"]*)"', m.group(0))
    info[m.group(1)] = (m.group(2), source.group(1) if source else '')
  return info


def op_times(trace_dir: str, steps: int) -> dict:
  """{event name: microseconds per step} of the complete events in the trace under trace_dir."""
  path = glob.glob(os.path.join(trace_dir, '**', '*.trace.json.gz'), recursive=True)[0]
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  total = collections.Counter()
  for e in events:
    if e.get('ph') == 'X':
      total[e['name']] += e['dur'] / steps
  return total


def profile(
  name: str, overrides: list[str], batch: int, steps: int, trace_dir: str, top: int = 0
) -> dict:
  import jax

  from jaxvision import config as config_lib
  from jaxvision import experiment
  from jaxvision.data import pipeline

  config = config_lib.from_file(os.path.join(ROOT, 'configs', f'{name}.py'))
  config.data.batch_size = batch
  if 'eval' in config:  # a task key (gan, vae, diffusion), not a classifier's
    config.eval.fd_samples = 0
  config.train.progress = False
  for item in overrides:  # KEY=VALUE, the value cast to the type of the config's current one
    key, value = item.split('=', 1)
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value)
  exp = experiment.setup(config, tempfile.mkdtemp(prefix='profile_'))
  batch_ = exp.train_batch(next(iter(pipeline.train_dataset(exp.config, exp.train_split))))
  compiled = exp.train_step.lower(exp.state, batch_).compile()
  state = exp.state
  for _ in range(3):
    state, metrics = compiled(state, batch_)
  jax.block_until_ready((state, metrics))
  t = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch_)
  jax.block_until_ready((state, metrics))
  step_us = (time.perf_counter() - t) / steps * 1e6
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      state, metrics = compiled(state, batch_)
    jax.block_until_ready((state, metrics))
  hlo = compiled.as_text()
  kinds, times = op_kinds(hlo), op_times(trace_dir, steps)
  by_kind = collections.Counter()
  for event, us in times.items():
    if event in kinds:
      by_kind[kinds[event]] += us
  traced = sum(by_kind.values())
  info = op_info(hlo)
  slowest = sorted((e for e in times if e in kinds), key=lambda e: -times[e])[:top]
  return {
    'slowest_ops': [
      {'op': e, 'ms': times[e] / 1e3, 'kind': kinds[e], 'shape': info[e][0], 'source': info[e][1]}
      for e in slowest
    ],
    'model': name,
    'overrides': overrides,
    'batch': batch,
    'step_ms': step_us / 1e3,
    'images_per_s': batch / step_us * 1e6,
    'traced_ms': traced / 1e3,
    'ms_by_kind': {k: by_kind[k] / 1e3 for k in KINDS if by_kind[k]},
  }


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--models', default=','.join(MODELS), help='comma-separated config names')
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--steps', type=int, default=5, help='steps timed and traced')
  ap.add_argument(
    '--set', action='append', default=[], help='config override KEY=VALUE (repeatable)'
  )
  ap.add_argument(
    '--trace-dir', default='', help='keep the traces here (default: a temporary folder)'
  )
  ap.add_argument('--out', default='', help='also write the rows as JSON here')
  ap.add_argument(
    '--top', type=int, default=0, help='also list the N slowest ops (shape, the jax op behind it)'
  )
  args = ap.parse_args(argv)
  sys.path.insert(0, ROOT)
  from jaxvision import hugepages

  hugepages.reexec()  # as run.py does
  rows = []
  for name in [m for m in args.models.split(',') if m]:
    trace_dir = (
      os.path.join(args.trace_dir, name) if args.trace_dir else tempfile.mkdtemp(prefix='trace_')
    )
    row = profile(name, args.set, args.batch, args.steps, trace_dir, args.top)
    rows.append(row)
    print(
      f'\n{name} {" ".join(args.set)}: {row["step_ms"]:.1f} ms/step '
      f'({row["images_per_s"]:.0f} images/s), '
      f'ops traced {row["traced_ms"]:.1f} ms ({100 * row["traced_ms"] / row["step_ms"]:.0f} %)'
    )
    for kind, ms in sorted(row['ms_by_kind'].items(), key=lambda kv: -kv[1]):
      print(f'  {kind:26s} {ms:8.1f} ms  {100 * ms / row["traced_ms"]:5.1f} %')
    for op in row['slowest_ops']:
      print(f'  {op["ms"]:7.2f} ms  {op["kind"]:26s} {op["shape"]:28s} {op["source"][-90:]}')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == '__main__':
  main()
