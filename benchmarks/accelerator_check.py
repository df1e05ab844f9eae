"""The accelerator check: what `benchmarks/accelerator_check.sh` runs, writing one JSON.

    bash benchmarks/accelerator_check.sh                  # on a GPU machine: under 8 minutes
    bash benchmarks/accelerator_check.sh --quick          # any machine: ~1 min on 2 CPU cores

Two parts, each a subprocess from the repository root, on jax's default backend (the GPU where
jax sees one, else the CPU):

  1. accuracy: `run.py --config configs/cnn.py` (the README's default job) to its last eval, in
     float32 and in bfloat16, with each run's wall time and final test accuracy;
  2. steps: `benchmarks/step_throughput.py` over the six models at batch 128, jax in float32 and
     with `config.dtype='bfloat16'` (the `bf16` variant), against the torch twins eager and under
     `torch.compile` in float32 (within a warm-up budget) and eager under
     `torch.autocast(bfloat16)` (torch on CUDA when jax runs on the GPU).

`--quick` (the test suite's CPU run): two models at batch 32, one short round, no torch.compile,
and the CNN's smoke preset. Results: <out-dir>/accelerator_check[-quick].json, whatever part
failed recorded with its error, so a run cut short keeps what it measured.
"""

import argparse
import datetime
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _python(args: list[str], log: str, timeout: float) -> dict:
  """Runs `python <args>` from the repository root, its output to `log` and to stdout.

  Returns:
    {'cmd', 'rc', 'wall_s'} ('rc' None where `timeout` seconds ran out).
  """
  cmd = [sys.executable, *args]
  print('$ python ' + ' '.join(args), flush=True)
  t = time.perf_counter()
  with open(log, 'w') as f:
    proc = subprocess.Popen(
      cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
      for line in proc.stdout:
        f.write(line)
        sys.stdout.write(line)
      rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      proc.kill()
      rc = None
  return {'cmd': 'python ' + ' '.join(args), 'rc': rc, 'wall_s': time.perf_counter() - t}


def backend() -> dict:
  """jax's default backend and device, torch's CUDA device where it has one (in a subprocess,
  so that this process imports neither)."""
  code = (
    'import json, jax\n'
    'out = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,\n'
    '       "devices": jax.device_count(), "jax": jax.__version__}\n'
    'try:\n'
    '  import torch\n'
    '  out["torch"] = torch.__version__\n'
    '  out["torch_cuda"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None\n'
    'except ImportError:\n'
    '  out["torch"] = None\n'
    'print(json.dumps(out))\n'
  )
  proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
  return json.loads(proc.stdout.strip().splitlines()[-1])


def steps(args, info: dict, out_dir: str) -> dict:
  """Part 1: the step benchmark; returns its command's record and rows."""
  gpu = info['backend'] == 'gpu'
  bench_dir = os.path.join(out_dir, 'steps')
  cmd = [
    'benchmarks/step_throughput.py',
    '--platform',
    'gpu' if gpu else 'cpu',
    '--jax-variants',
    'bf16',
    '--torch-bf16',
    'eager',
    '--out-dir',
    bench_dir,
  ]
  if args.quick:
    # batch 32: torch's bf16 autocast on a CPU without bf16 units takes ~5 s a DCGAN step of 128
    cmd += ['--quick', '--models', 'cnn,dcgan', '--repeats', '1', '--no-compile', '--batch', '32']
  else:  # torch.compile's cold warm-up took 80 s for the CNN on an H200: a budget keeps to time
    cmd += ['--repeats', '5', '--round-s', '0.5', '--compile-budget-s', str(args.compile_budget)]
  record = _python(cmd, os.path.join(out_dir, 'steps.log'), args.steps_timeout)
  latest = os.path.join(bench_dir, 'latest-quick.json' if args.quick else 'latest.json')
  record['rows'] = json.loads(pathlib.Path(latest).read_text()) if os.path.exists(latest) else []
  return record


def accuracy(args, dtype: str, out_dir: str) -> dict:
  """Part 2: the README's default CNN job in `dtype`, to its last eval."""
  workdir = tempfile.mkdtemp(prefix=f'accel_cnn_{dtype}_')
  config = 'configs/cnn.py:smoke' if args.quick else 'configs/cnn.py'
  cmd = ['run.py', '--config', config, '--workdir', workdir, f'--config.dtype={dtype}']
  cmd += ['--config.train.progress=False']
  record = _python(cmd, os.path.join(out_dir, f'cnn_{dtype}.log'), args.cnn_timeout)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  evals = (
    [
      e
      for e in map(json.loads, pathlib.Path(metrics).read_text().splitlines())
      if 'eval/accuracy' in e
    ]
    if os.path.exists(metrics)
    else []
  )
  if evals:
    record.update(step=evals[-1]['step'], accuracy=evals[-1]['eval/accuracy'])
  shutil.rmtree(workdir, ignore_errors=True)
  return record


def table(result: dict) -> str:
  """The docs' markdown table of the step rows (images/s and ratios)."""
  lines = [
    '| model | jax f32 | jax bf16 | torch eager f32 | torch.compile f32 | torch eager bf16 '
    '| jax / eager (f32) | jax / compile (f32) | jax / eager (bf16) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for r in result['steps']['rows']:
    bf16 = (r.get('jax_variants_ips') or {}).get('bf16')
    cells = [
      r['jax_ips'],
      bf16,
      r['torch_eager_ips'],
      r['torch_compile_ips'],
      r.get('torch_eager_bf16_ips'),
    ]
    ratio = lambda a, b: f'{a / b:.2f}' if a and b else '-'
    lines.append(
      f'| {r["model"]} | '
      + ' | '.join(f'{c:,.0f}' if c else '-' for c in cells)
      + f' | {ratio(r["jax_ips"], r["torch_eager_ips"])}'
      + f' | {ratio(r["jax_ips"], r["torch_compile_ips"])}'
      + f' | {ratio(bf16, r.get("torch_eager_bf16_ips"))} |'
    )
  return '\n'.join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--quick', action='store_true', help='two models, short, CNN smoke preset')
  ap.add_argument('--out-dir', default=os.path.join(HERE, 'results'))
  ap.add_argument(
    '--cnn-timeout', type=float, default=100, help='seconds for each CNN run (default 100)'
  )
  ap.add_argument(
    '--steps-timeout', type=float, default=330, help='seconds for the step benchmark (330)'
  )
  ap.add_argument(
    '--compile-budget',
    type=float,
    default=100,
    help='seconds of torch.compile warm-ups, after which the other models skip it (100)',
  )
  args = ap.parse_args(argv)
  os.makedirs(args.out_dir, exist_ok=True)
  name = 'accelerator_check-quick.json' if args.quick else 'accelerator_check.json'
  path = os.path.join(args.out_dir, name)
  t = time.perf_counter()
  info = backend()
  print(
    f'jax {info["jax"]} on {info["backend"]} ({info["device_kind"]}), torch {info["torch"]} '
    f'(CUDA: {info.get("torch_cuda")})',
    flush=True,
  )
  result = {
    'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H%MZ'),
    'host': platform.node(),
    'quick': args.quick,
    **info,
  }

  def write() -> None:
    result['total_s'] = time.perf_counter() - t
    with open(path, 'w') as f:
      json.dump(result, f, indent=1)

  result['cnn'] = {}
  for dtype in ('float32', 'bfloat16'):
    result['cnn'][dtype] = accuracy(args, dtype, args.out_dir)
    write()
  result['steps'] = steps(args, info, args.out_dir)
  write()
  print()
  print(table(result))
  for dtype, r in result['cnn'].items():
    print(
      f'cnn {dtype}: accuracy {r.get("accuracy")} at step {r.get("step")} in {r["wall_s"]:.0f} s'
    )
  print(f'wrote {path} ({result["total_s"]:.0f} s)')
  parts = [result['steps'], *result['cnn'].values()]
  return 0 if all(p['rc'] == 0 for p in parts) else 1


if __name__ == '__main__':
  sys.exit(main())
