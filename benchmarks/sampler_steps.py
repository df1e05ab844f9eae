"""Sample quality against the number of sampler steps of a trained diffusion or flow workdir.

    python benchmarks/sampler_steps.py --config configs/diffusion.py --workdir runs/diffusion \
        --samplers ddim --steps 5,10,25,50 --n 500 --weights ema,raw \
        --out benchmarks/results/diffusion_steps_ddim.json
    python benchmarks/sampler_steps.py --config configs/diffusion.py:flow \
        --workdir runs/diffusion_flow --samplers euler --steps 5,10,25,50 --n 500 \
        --out benchmarks/results/diffusion_steps_euler.json
    python benchmarks/sampler_steps.py --config configs/diffusion.py:flow \
        --workdir runs/diffusion_flow --samplers heun --steps 3,5,12,25 --n 500 \
        --out benchmarks/results/diffusion_steps_heun.json
    python benchmarks/sampler_steps.py --config configs/diffusion.py --workdir runs/diffusion \
        --steps 25 --checkpoints 2000,3000,4000 --n 500 \
        --out benchmarks/results/diffusion_training.json   # FD over training (kept checkpoints)
    python benchmarks/sampler_steps.py --config configs/diffusion.py --workdir runs/diffusion \
        --steps 25 --checkpoints 2000,4000 --n 500 --weights ema,raw \
        --out benchmarks/results/diffusion_ema_raw.json   # the EMA against the trained weights
    python benchmarks/sampler_steps.py --plot benchmarks/results/diffusion_steps_*.json \
        --png docs/diffusion_steps.png   # needs matplotlib (the bench extra)
    python benchmarks/sampler_steps.py --curves runs/diffusion/metrics.jsonl \
        runs/diffusion_long/metrics.jsonl --target 0.340 --png docs/diffusion_fd_curve.png

For each sampler and step count: `eval/fd` and `eval/kid` of `--n` samples from the workdir's
latest checkpoint (the EMA weights; `--weights raw` samples with the trained weights
themselves, `ema,raw` both), through the loop's own `GenerativeMetrics` (same features,
same seed-fixed noise), with the wall time of the sampling (the first of a step count includes
its compilation) and the network calls per image (Heun: 2 per step but the last). `fd_floor_n`
is FD(n real train digits, test digits): FD grows as n shrinks, so a row is to be read against
the floor at the same n. Nothing in the workdir changes. `--plot` draws FD against network calls
per image, one line per sampler; `--curves` the in-loop `eval/fd` of runs against their step.
"""

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from jaxvision import checkpoint, experiment, writers  # noqa: E402
from jaxvision import config as config_lib  # noqa: E402
from jaxvision import workdir as workdir_lib  # noqa: E402
from jaxvision.evaluate import generative  # noqa: E402


def network_calls(sampler: str, steps: int) -> int:
  """Network evaluations per image (a guided sampler's two halves counted once)."""
  return 2 * steps - 1 if sampler == 'heun' else steps


def _states(exp, checkpoint_steps):
  """(step, state) of each checkpoint step, or of the latest."""
  if not checkpoint_steps:
    yield experiment.restore_latest(exp)
    return
  ckpt = checkpoint.Checkpointer(exp.checkpoints, exp.config.train.keep_ckpts, read_only=True)
  try:
    for step in checkpoint_steps:
      yield ckpt.restore(exp.state, step=step)
  finally:
    ckpt.close()


def measure(
  config_arg: str, workdir: str, samplers, steps_list, n: int, checkpoint_steps, weights=('ema',)
) -> dict:
  """The rows of FD/KID per (checkpoint, sampler, steps) of `workdir`."""
  path, _, preset = config_arg.partition(':')
  config = config_lib.from_file(path, preset)
  config.eval.fd_samples = n
  config.allow_config_change = True  # fd_samples differs from the run's; nothing is written
  workdir = workdir_lib.resolve(workdir)
  exp = experiment.setup(config, workdir, restoring=True)
  metrics = exp.generative
  rng = np.random.default_rng(0)
  train = metrics.features(
    exp.train_split.read(np.sort(rng.choice(exp.train_split.size, n, replace=False)))[
      'image'
    ].astype(np.float32)
    / 255.0
  )
  floor_n = generative.frechet_distance(train, metrics.real['domain'])
  rows = []
  for step, state in _states(exp, checkpoint_steps):
    for which, sampler, steps in itertools.product(weights, samplers, steps_list):
      opts = dataclasses.replace(state.opts, sampler=sampler, steps=steps)
      ema = state.ema_params if which == 'ema' else state.params
      start = time.perf_counter()
      out = metrics(state.replace(opts=opts, ema_params=ema))
      seconds = time.perf_counter() - start
      row = {
        'train_step': step,
        'weights': which,
        'sampler': sampler,
        'steps': steps,
        'network_calls': network_calls(sampler, steps),
        'fd': out['eval/fd'],
        'kid': out['eval/kid'],
        'seconds': seconds,
        'images_per_sec': n / seconds,
      }
      print(json.dumps(row), flush=True)
      rows.append(row)
  return {
    'config': config_arg,
    'workdir': workdir,
    'n': n,
    'fd_floor_n': floor_n,
    'fd_floor_8000': metrics.floor['eval/fd_floor'],
    'rows': rows,
  }


def _pyplot():
  """matplotlib's pyplot on the file-only backend (the bench extra; measuring does not need it)."""
  import matplotlib  # noqa: PLC0415

  matplotlib.use('Agg')
  from matplotlib import pyplot  # noqa: PLC0415

  return pyplot


def _save(fig, ax, png: str) -> None:
  ax.legend()
  ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(png)
  print(f'wrote {png}')


def plot(paths, png: str) -> None:
  """FD against network calls per image, one line per (file, sampler, weights)."""
  fig, ax = _pyplot().subplots(figsize=(6, 4), dpi=120)
  floors = []
  for path in paths:
    with open(path) as f:
      result = json.load(f)
    floors.append(result['fd_floor_n'])
    lines = {}  # (sampler, weights) -> rows; files written before --weights hold EMA rows
    for r in result['rows']:
      lines.setdefault((r['sampler'], r.get('weights', 'ema')), []).append(r)
    for (sampler, weights), rows in lines.items():
      name = f'{sampler} ({os.path.basename(result["workdir"])}'
      name += ')' if weights == 'ema' else f', {weights} weights)'
      ax.plot([r['network_calls'] for r in rows], [r['fd'] for r in rows], 'o-', label=name)
  ax.axhline(np.mean(floors), color='grey', ls='--', label='real digits (same n)')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('network calls per image')
  ax.set_ylabel(f'eval/fd ({result["n"]} samples)')
  _save(fig, ax, png)


def plot_curves(paths, png: str, target: float | None = None) -> None:
  """`eval/fd` against the train step, one line per run's metrics.jsonl (its in-loop evals);
  `target`, another model's FD, as a dotted line."""
  fig, ax = _pyplot().subplots(figsize=(6, 4), dpi=120)
  floor, sample_counts = None, set()
  for path in paths:
    run = writers.read_json(os.path.join(os.path.dirname(os.path.abspath(path)), 'run.json'))
    sample_counts.add((run or {}).get('config', {}).get('eval', {}).get('fd_samples'))
    evals = {}  # a step's first eval: the run's own, not a later --mode eval's other sampler
    for event, _ in writers.read_events(path):
      if event is not None and 'eval/fd' in event:
        evals.setdefault(event['step'], event)
    steps = sorted(evals)
    floor = evals[steps[-1]]['eval/fd_floor']
    name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    ax.plot(steps, [evals[s]['eval/fd'] for s in steps], 'o-', label=name)
  ax.axhline(floor, color='grey', ls='--', label='real digits (floor)')
  if target is not None:
    ax.axhline(target, color='black', ls=':', label=f'target ({target})')
  ax.set_yscale('log')
  ax.set_xlabel('train step')
  (n,) = sample_counts if len(sample_counts) == 1 else (None,)  # the runs' eval.fd_samples
  ax.set_ylabel(f'eval/fd ({n:,} samples)' if n else 'eval/fd')
  _save(fig, ax, png)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', help='path[:preset] of the workdir run')
  parser.add_argument('--workdir')
  parser.add_argument('--samplers', default='ddim')
  parser.add_argument('--steps', default='5,10,25,50,100')
  parser.add_argument('--n', type=int, default=1000, help='samples per FD')
  parser.add_argument('--checkpoints', default='', help='checkpoint steps (default: the latest)')
  parser.add_argument('--weights', default='ema', help='ema (what the task samples with), raw')
  parser.add_argument('--out', help='the JSON of rows')
  parser.add_argument('--plot', nargs='+', help='JSONs of earlier runs to draw')
  parser.add_argument('--curves', nargs='+', help="runs' metrics.jsonl: FD against train step")
  parser.add_argument('--target', type=float, help='with --curves: an FD to draw as a line')
  parser.add_argument('--png', default='docs/diffusion_steps.png')
  args = parser.parse_args()
  if args.plot:
    plot(args.plot, args.png)
    return
  if args.curves:
    plot_curves(args.curves, args.png, args.target)
    return
  result = measure(
    args.config,
    args.workdir,
    args.samplers.split(','),
    [int(s) for s in args.steps.split(',')],
    args.n,
    [int(s) for s in args.checkpoints.split(',') if s],
    args.weights.split(','),
  )
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)
    print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
