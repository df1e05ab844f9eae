"""Overhead of jaxvision's training loop: a run.py-equivalent run against its step times.

    python benchmarks/loop_overhead.py               # configs/cnn.py, 500 steps (~3 min on 2 cores)
    python benchmarks/loop_overhead.py --steps 250   # shorter
    python benchmarks/loop_overhead.py --config configs/resnet.py --steps 250
    python benchmarks/loop_overhead.py --ckpt-every 100 --checkpoints both  # async against sync

Runs `jaxvision.train.train_and_evaluate` (what `python run.py --config ...` runs: setup, data
pipeline, jitted steps, logging to metrics.jsonl + TensorBoard, evals, Orbax checkpoints, tqdm
progress bar) on the config with `train.steps` reduced and the config's own logging, eval and
checkpoint cadence kept (configs/cnn.py: log every 50, eval and checkpoint every 250 steps;
500 steps then hold 10 logs, 2 evals and 2 checkpoints, the same per-step share as the
default 1,250-step run's 25, 5 and 5). Then the same jitted step is timed alone on one
batch, before and after the run (dispatched back to back like the loop's, in 4 chunks, the
median chunk's time per step; the mean of before and after), and

    loop overhead = (loop time - (steps - 1) * step time) / ((steps - 1) * step time)

where loop time = wall time of train_and_evaluate - setup - the first step (compilation).
The same ratio is printed with process CPU time (all threads) in place of wall time: on a
machine shared with other jobs the wall-time ratio is noisy (other load comes and goes
between the run and the steps timed alone), the CPU-time ratio much less so. `total
overhead` (wall) also counts setup and compilation. The run's time inside evals,
checkpoint saves, metric writes and batch feeding (measured by wrapping those functions) is
printed as a breakdown. Target: loop overhead < 5 %.

`--checkpoints both` runs the loop four times between the two step timings: with Orbax's
asynchronous saves (`train.async_checkpoints=True`, the default: a save returns once the
arrays are off the devices and the write overlaps the next steps), with blocking ones, again
blocking, again asynchronous; each run's overhead is against the same step time, and
`by_mode` has each mode's mean.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class Timer:
  """Wraps callables and sums their wall time under a label."""

  def __init__(self):
    self.total, self.calls = {}, {}

  def wrap(self, label, fn):
    def wrapped(*args, **kwargs):
      t = time.perf_counter()
      try:
        return fn(*args, **kwargs)
      finally:
        self.total[label] = self.total.get(label, 0.0) + time.perf_counter() - t
        self.calls[label] = self.calls.get(label, 0) + 1

    return wrapped


def step_alone(config, steps: int, chunks: int = 4) -> dict:
  """Seconds per step of `setup(config).train_step` on one batch, dispatched back to back as
  the loop does (blocked only at the end of each of `chunks` chunks): median over chunks of
  wall time and of process CPU time (all threads) per step."""
  import jax

  from jaxvision import experiment
  from jaxvision.data import pipeline

  workdir = tempfile.mkdtemp(prefix='loop_alone_')
  try:
    exp = experiment.setup(config, workdir)
    it = iter(pipeline.train_dataset(exp.config, exp.train_split))
    batch = exp.train_batch(next(it))
    del it
    state = exp.place(exp.state)
    for _ in range(3):  # compile + warm up
      state, metrics = exp.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    per_chunk = max(1, steps // chunks)
    wall, cpu = [], []
    for _ in range(chunks):
      t, c = time.perf_counter(), time.process_time()
      for _ in range(per_chunk):
        state, metrics = exp.train_step(state, batch)
      jax.block_until_ready((state, metrics))
      wall.append((time.perf_counter() - t) / per_chunk)
      cpu.append((time.process_time() - c) / per_chunk)
    return {'wall': statistics.median(wall), 'cpu': statistics.median(cpu)}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def run_loop(config, label: str) -> dict:
  """One `train.train_and_evaluate` run of `config` in a temporary workdir, its phases timed
  through wrappers (the loop itself is the product's)."""
  import jax

  from jaxvision import checkpoint, experiment, train, writers

  timer = Timer()
  marks = {}
  real_setup = experiment.setup

  def setup(config, workdir):
    marks['setup_start'] = time.perf_counter()
    exp = real_setup(config, workdir)
    marks['setup_end'] = time.perf_counter()
    step = exp.train_step

    def train_step(state, batch):
      out = step(state, batch)
      if 'first_step_end' not in marks:
        jax.block_until_ready(out)
        marks['first_step_end'] = time.perf_counter()
        marks['first_step_end_cpu'] = time.process_time()
      return out

    exp.train_step = train_step
    exp.train_batch = timer.wrap('feed (next batch + device_put)', exp.train_batch)
    return exp

  patches = [
    (experiment, 'setup', setup),
    (experiment, 'run_eval', timer.wrap('eval', experiment.run_eval)),
    (experiment, 'write_samples', timer.wrap('eval', experiment.write_samples)),
    (checkpoint.Checkpointer, 'save', timer.wrap('checkpoint save', checkpoint.Checkpointer.save)),
    (checkpoint.Checkpointer, 'wait', timer.wrap('checkpoint wait', checkpoint.Checkpointer.wait)),
    (writers.MetricWriter, 'write', timer.wrap('metric writes', writers.MetricWriter.write)),
  ]
  saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches]
  for obj, name, fn in patches:
    setattr(obj, name, fn)
  workdir = tempfile.mkdtemp(prefix=f'loop_run_{label}_')
  try:
    t0 = time.perf_counter()
    final = train.train_and_evaluate(config, workdir)
    wall = time.perf_counter() - t0
    loop_cpu = time.process_time() - marks['first_step_end_cpu']
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      logged = [json.loads(line) for line in f]
  finally:
    for obj, name, fn in saved:
      setattr(obj, name, fn)
    shutil.rmtree(workdir, ignore_errors=True)
  ips_logged = [m['perf/images_per_sec'] for m in logged if 'perf/images_per_sec' in m]
  return {
    'async_checkpoints': bool(config.train.async_checkpoints),
    'wall_s': wall,
    'setup_s': marks['setup_end'] - marks['setup_start'],
    'first_step_s': marks['first_step_end'] - marks['setup_end'],
    'loop_s': wall - (marks['first_step_end'] - t0),
    'loop_cpu_s': loop_cpu,
    'phases_s': dict(timer.total),
    'phase_calls': dict(timer.calls),
    'logged_images_per_sec_median': statistics.median(ips_logged) if ips_logged else None,
    'final_metrics': final,
  }


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--config', default=os.path.join(ROOT, 'configs', 'cnn.py'))
  ap.add_argument('--steps', type=int, default=500, help='train.steps of the run')
  ap.add_argument('--alone-steps', type=int, default=60, help='steps timed alone, before and after')
  ap.add_argument(
    '--progress', type=int, default=1, help='tqdm progress bar on (1, as run.py) or off (0)'
  )
  ap.add_argument(
    '--ckpt-every', type=int, default=0, help="train.ckpt_every of the run (0: the config's)"
  )
  ap.add_argument(
    '--checkpoints',
    choices=('async', 'sync', 'both'),
    default='async',
    help='train.async_checkpoints of the run; both: two runs each (async, sync, sync, async)',
  )
  ap.add_argument('--out', default='', help='also write the result as JSON here')
  args = ap.parse_args(argv)

  sys.path.insert(0, ROOT)
  import jax

  from jaxvision import config as config_lib

  config = config_lib.from_file(args.config)
  config.train.steps = args.steps
  config.train.progress = bool(args.progress)
  if args.ckpt_every:
    config.train.ckpt_every = args.ckpt_every
  cfg = config.train
  print(
    f'{args.config}: {cfg.steps} steps of {config.data.batch_size}, log every {cfg.log_every}, '
    f'eval every {cfg.eval_every}, checkpoint every {cfg.ckpt_every}; jax {jax.__version__} on '
    f'{jax.device_count()} {jax.devices()[0].platform} device(s)',
    flush=True,
  )

  before = step_alone(config, args.alone_steps)
  runs = []
  # both: async, sync, sync, async (ABBA), so that a drift of the machine's speed over the four
  # runs falls on both modes alike; each mode's figures are the mean of its two runs
  for mode in (
    ('async', 'sync', 'sync', 'async') if args.checkpoints == 'both' else (args.checkpoints,)
  ):
    config.train.async_checkpoints = mode == 'async'
    runs.append(run_loop(config, mode))
  after = step_alone(config, args.alone_steps)

  step_s = (before['wall'] + after['wall']) / 2
  step_cpu = (before['cpu'] + after['cpu']) / 2
  steps_sum = (cfg.steps - 1) * step_s
  steps_cpu = (cfg.steps - 1) * step_cpu
  for run in runs:
    run['loop_overhead_pct'] = 100 * (run['loop_s'] - steps_sum) / steps_sum
    run['loop_cpu_overhead_pct'] = 100 * (run['loop_cpu_s'] - steps_cpu) / steps_cpu
    run['total_overhead_pct'] = 100 * (run['wall_s'] - cfg.steps * step_s) / (cfg.steps * step_s)
  result = {
    'config': os.path.relpath(args.config, ROOT),
    'steps': cfg.steps,
    'batch': config.data.batch_size,
    'log_every': cfg.log_every,
    'eval_every': cfg.eval_every,
    'ckpt_every': cfg.ckpt_every,
    'progress_bar': bool(args.progress),
    'step_alone_ms_before': 1e3 * before['wall'],
    'step_alone_ms_after': 1e3 * after['wall'],
    'step_alone_ms': 1e3 * step_s,
    'step_alone_cpu_ms': 1e3 * step_cpu,
    'steps_sum_s': steps_sum,
    'steps_cpu_sum_s': steps_cpu,
    'alone_images_per_sec': config.data.batch_size / step_s,
    **runs[0],
    'runs': runs,
  }
  print(
    f'step alone: {1e3 * before["wall"]:.1f} ms before the runs, {1e3 * after["wall"]:.1f} ms '
    f'after -> {cfg.steps - 1} steps = {steps_sum:.1f} s; CPU time {1e3 * step_cpu:.1f} ms/step '
    f'-> {steps_cpu:.1f} s'
  )
  for run in runs:
    mode = 'async' if run['async_checkpoints'] else 'sync'
    print(
      f'\n[{mode} checkpoints] wall {run["wall_s"]:.1f} s = setup {run["setup_s"]:.1f} s + first '
      f'step (compile) {run["first_step_s"]:.1f} s + loop {run["loop_s"]:.1f} s '
      f'(CPU {run["loop_cpu_s"]:.1f} s)'
    )
    print(
      'inside the loop: '
      + ', '.join(f'{k} {v:.2f} s ({run["phase_calls"][k]}x)' for k, v in run['phases_s'].items())
    )
    if run['logged_images_per_sec_median']:
      print(
        f'images/s logged by the loop (median, evals excluded): '
        f'{run["logged_images_per_sec_median"]:.0f}; alone: {result["alone_images_per_sec"]:.0f}'
      )
    print(
      f'loop overhead: wall {run["loop_overhead_pct"]:+.1f} %, CPU time '
      f'{run["loop_cpu_overhead_pct"]:+.1f} % (target < 5 %); wall with setup and compilation '
      f'{run["total_overhead_pct"]:+.1f} %'
    )
  by_mode = {}
  for run in runs:
    by_mode.setdefault('async' if run['async_checkpoints'] else 'sync', []).append(run)
  result['by_mode'] = {
    mode: {
      key: statistics.mean(r[key] for r in group)
      for key in ('loop_s', 'loop_cpu_s', 'loop_overhead_pct', 'loop_cpu_overhead_pct')
    }
    | {'checkpoint_save_s': statistics.mean(r['phases_s'].get('checkpoint save', 0) for r in group)}
    for mode, group in by_mode.items()
  }
  if len(by_mode) > 1:
    print()
    for mode, m in result['by_mode'].items():
      print(
        f'{mode} checkpoints, mean of {len(by_mode[mode])} runs: loop {m["loop_s"]:.1f} s, '
        f'overhead wall {m["loop_overhead_pct"]:+.1f} %, '
        f'CPU time {m["loop_cpu_overhead_pct"]:+.1f} %, '
        f'inside save calls {m["checkpoint_save_s"]:.2f} s'
      )
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=1)
  return result


if __name__ == '__main__':
  main()
