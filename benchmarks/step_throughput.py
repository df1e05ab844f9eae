"""Train-step throughput: jaxvision's jitted step against PyTorch (eager and torch.compile).

    python benchmarks/step_throughput.py                       # all six models, ~10 min on 2 cores
    python benchmarks/step_throughput.py --quick               # fewer, shorter rounds (development)
    python benchmarks/step_throughput.py --models cnn,resnet --repeats 9
    python benchmarks/step_throughput.py --models cnn --jax-variants noynn,xla_conv,im2col_conv

Needs the `bench` extra (torch==2.13.0). For each model (the default config of
configs/<model>.py at --batch, fp32, 28x28x1 mnist10k digits):

  * jax: the product's step, `jaxvision.experiment.setup(config, workdir).train_step` (jit with the
    state donated, exactly what run.py runs), on 1 CPU device unless --devices says otherwise;
  * torch_eager / torch_compile: the twins of benchmarks/torch_models.py (same architecture,
    same parameter count -- asserted -- same loss, optimizer and augmentation);

all on one batch of real training images. The runners are timed interleaved, in rounds of k
steps each (the order rotates every round), so load from other processes hits them alike;
images/s = batch / median over rounds of the per-step time. The JSON also holds per model:
jax_compile_s (trace + lower + compile of the step), flops_per_step (dot and conv FLOPs of
the step's jaxpr, loops counted by their trip counts, products with the zeros of a dilated
input -- a strided conv's input gradient -- not counted), xla_cost_flops (the compiled step's
cost_analysis(); XLA counts a loop body once, so im2col's chunk loop and the LSTM's scan are
undercounted there), gflops_fraction (achieved jax GFLOP/s over the same run's median
2048x2048 f32 matmul GFLOP/s in jax) and pipeline_ips (the grain input pipeline alone).

Results: benchmarks/results/<hostname>-<YYYY-MM-DD>T<HHMM>Z.json (the start time in UTC, so a rerun
on the same day adds a file) and latest.json (with --quick:
...-quick.json and latest-quick.json), a list with one object per model.
"""

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MODELS = ('cnn', 'resnet', 'vit', 'lstm', 'dcgan', 'conv_vae')

# Extra jax columns (--jax-variants): name -> config overrides of the product step
# ('noynn' / 'ynn': config.cpu_convolutions='xla' / 'ynnpack', XLA's own convolutions or YNNPACK's;
# a variant that the model's config already has is skipped).
JAX_VARIANTS = {
  'noynn': {'cpu_convolutions': 'xla'},
  'ynn': {'cpu_convolutions': 'ynnpack'},
  'xla_conv': {'model.conv_impl': 'xla'},
  'xla_subpixel': {'model.conv_impl': 'xla_subpixel'},  # strided input gradients by phases
  'xla_conv_noynn': {'model.conv_impl': 'xla', 'cpu_convolutions': 'xla'},
  'im2col_conv': {'model.conv_impl': 'im2col'},
  'remat': {'model.remat': True},  # ResNet, ViT: each block recomputed in the backward pass
  'bf16': {'dtype': 'bfloat16'},  # mixed precision: activations and matmuls in bf16
  # XLA's conv inputs left fusable (layers.materialize_on_cpu off): the step before that fix
  'fused_conv_inputs': {'materialize_on_cpu': False},
}


def set_jax_env(devices: int, platform: str = 'cpu') -> None:
  """Before jax is imported: `devices` CPU devices (1 = jax's default) on the CPU platform, or
  jax's default accelerator ('gpu'), sharing its memory with torch (no preallocation)."""
  flags = [
    f
    for f in os.environ.get('XLA_FLAGS', '').split()
    if not f.startswith('--xla_force_host_platform_device_count')
  ]
  if devices > 1:
    flags.append(f'--xla_force_host_platform_device_count={devices}')
  os.environ['XLA_FLAGS'] = ' '.join(flags)
  if platform == 'cpu':
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  else:
    os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'] = 'false'


# ------------------------------------------------------------------ FLOPs


def jaxpr_flops(jaxpr) -> tuple[float, bool]:
  """(FLOPs of dot_general and conv_general_dilated, 2 per multiply-add, in a (closed) jaxpr
  and its sub-jaxprs, scans counted `length` times; True if a while loop of unknown trip
  count was counted once). Elementwise work is not counted (the usual "model FLOPs")."""
  import numpy as np
  from jax.extend import core

  jaxpr = getattr(jaxpr, 'jaxpr', jaxpr)
  total, unknown = 0.0, False
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (lhs_contract, _), _ = eqn.params['dimension_numbers']
      k = np.prod([eqn.invars[0].aval.shape[d] for d in lhs_contract])
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * k
      continue
    if name == 'conv_general_dilated':
      rhs = eqn.invars[1].aval.shape
      out_features = rhs[eqn.params['dimension_numbers'].rhs_spec[0]]
      # The input gradient of a strided conv is a conv over the input dilated with zeros
      # (lhs_dilation); products with those zeros are not counted.
      dilation = np.prod(eqn.params.get('lhs_dilation') or (1,))
      total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod(rhs) / out_features / dilation
      continue
    subs = []
    for value in eqn.params.values():
      items = value if isinstance(value, (tuple, list)) else (value,)
      subs += [v for v in items if isinstance(v, (core.Jaxpr, core.ClosedJaxpr))]
    if not subs:
      continue
    counted = [jaxpr_flops(s) for s in subs]
    unknown |= any(u for _, u in counted)
    if name == 'cond':
      total += max(f for f, _ in counted)
    elif name == 'scan':
      total += eqn.params['length'] * sum(f for f, _ in counted)
    elif name == 'while':
      unknown = True
      total += sum(f for f, _ in counted)
    else:
      total += sum(f for f, _ in counted)
  return total, unknown


# ----------------------------------------------------------------- timing


def matmul_gflops(repeats: int, n: int = 2048) -> list[float]:
  """The jax n x n f32 matmul rate, GFLOP/s, one sample per product."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
  f = jax.jit(jnp.matmul)
  jax.block_until_ready(f(a, b))
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(a, b))
    out.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
  return out


def torch_sync() -> None:
  """Waits for torch's queued GPU work (CPU torch runs each op to its end before returning)."""
  import torch

  if torch.cuda.is_available() and torch.get_default_device().type == 'cuda':
    torch.cuda.synchronize()


def torch_matmul_gflops(repeats: int, n: int = 2048) -> list[float]:
  """The torch n x n f32 matmul rate on torch's default device, GFLOP/s."""
  import torch

  a, b = torch.randn(n, n), torch.randn(n, n)
  torch.mm(a, b)
  torch_sync()
  out = []
  for _ in range(repeats):
    t = time.perf_counter()
    torch.mm(a, b)
    torch_sync()
    out.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
  return out


class JaxRunner:
  def __init__(self, step, state, batch):
    self.step, self.state, self.batch = step, state, batch

  def __call__(self, k: int) -> None:
    import jax

    state = self.state
    for _ in range(k):
      state, metrics = self.step(state, self.batch)
    jax.block_until_ready((state, metrics))
    self.state = state


class TorchRunner:
  def __init__(self, step, batch):
    self.step, self.batch = step, batch

  def __call__(self, k: int) -> None:
    for _ in range(k):
      metrics = self.step(self.batch)
    # Reading the loss waits for the step's last op (on a GPU, for every queued kernel).
    float(metrics['loss'])


def timed(fn, *args) -> float:
  t = time.perf_counter()
  fn(*args)
  return time.perf_counter() - t


def interleaved(runners: dict, rounds: int, round_s: float, estimates: dict) -> dict:
  """Per-step seconds of each runner, one sample per round (k steps, k from `estimates` so a
  round of each runner lasts about round_s); the runners' order rotates every round."""
  ks = {name: max(1, round(round_s / max(estimates[name], 1e-4))) for name in runners}
  samples = {name: [] for name in runners}
  names = list(runners)
  for r in range(rounds):
    order = names[r % len(names) :] + names[: r % len(names)]
    for name in order:
      samples[name].append(timed(runners[name], ks[name]) / ks[name])
  return {'samples': samples, 'steps_per_round': ks}


# -------------------------------------------------------------- one model


def load_config(name: str, batch: int):
  import torch_models

  from jaxvision import config as config_lib

  file, preset = torch_models.config_file(name)
  config = config_lib.from_file(os.path.join(ROOT, 'configs', file), preset)
  config.data.batch_size = batch
  if 'eval' in config:  # a task key (gan, vae, diffusion), not a classifier's
    config.eval.fd_samples = 0  # eval-only metrics: setup would load the domain classifier for them
  config.train.progress = False
  return config


def jax_variant(name: str, variant: str, batch: int, local_batch: dict):
  """(runner, compile seconds) for an extra jax column: the product step with another conv_impl
  and/or config.cpu_convolutions, model.remat on, or config.dtype='bfloat16'; None where the
  variant does not apply to the model."""
  from jaxvision import experiment
  from jaxvision.models import layers

  config = load_config(name, batch)
  overrides = JAX_VARIANTS[variant]
  if 'model.remat' in overrides:
    if 'remat' not in config.model:
      return None
    config.model.remat = overrides['model.remat']
  conv_impl = overrides.get('model.conv_impl')
  if conv_impl is not None:
    if 'conv_impl' not in config.model or config.model.conv_impl == conv_impl:
      return None
    config.model.conv_impl = conv_impl
  if 'cpu_convolutions' in overrides:
    if config.cpu_convolutions == overrides['cpu_convolutions'] and conv_impl is None:
      return None
    config.cpu_convolutions = overrides['cpu_convolutions']
  if 'dtype' in overrides:
    config.dtype = overrides['dtype']
  if 'materialize_on_cpu' in overrides:
    if 'conv_impl' not in config.model or config.model.conv_impl != 'xla':
      return None
    patch = mock.patch.object(layers, 'materialize_on_cpu', lambda x: x)  # traced under it
  else:
    patch = contextlib.nullcontext()
  exp = experiment.setup(config, tempfile.mkdtemp(prefix='bench_'))
  jbatch = exp.train_batch(local_batch)
  t = time.perf_counter()
  with patch:
    compiled = exp.train_step.lower(exp.state, jbatch).compile()
  compile_s = time.perf_counter() - t
  runner = JaxRunner(compiled, exp.state, jbatch)
  runner(1)
  return runner, compile_s


def bench_model(name: str, args, matmul: float) -> dict:
  import jax
  import numpy as np
  import torch
  import torch_models

  from jaxvision import experiment
  from jaxvision.data import pipeline

  config = load_config(name, args.batch)
  exp = experiment.setup(config, tempfile.mkdtemp(prefix='bench_'))
  jax_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(exp.state.params))

  # The input pipeline alone, then one real batch for every runner.
  it = iter(pipeline.train_dataset(exp.config, exp.train_split))
  local = next(it)
  n_batches = args.pipeline_batches
  t = time.perf_counter()
  for _ in range(n_batches):
    next(it)
  pipeline_ips = n_batches * args.batch / (time.perf_counter() - t)
  del it
  gc.collect()

  jbatch = exp.train_batch(local)
  t = time.perf_counter()
  lowered = exp.train_step.lower(exp.state, jbatch)
  compiled = lowered.compile()
  jax_compile_s = time.perf_counter() - t
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_cost_flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
  flops, loop_unknown = jaxpr_flops(jax.make_jaxpr(exp.task.train_step)(exp.state, jbatch))
  # exp.train_step shares the executable just compiled (same jit, same arguments).
  jax_runner = JaxRunner(exp.train_step, exp.state, jbatch)
  jax_first_call_s = timed(jax_runner, 1)  # exp.state is donated from here on; the runner holds it

  # Torch: the same images (NCHW) and labels, on torch's default device.
  torch.manual_seed(0)
  images = torch.from_numpy(np.ascontiguousarray(local['image'].transpose(0, 3, 1, 2)))
  labels = torch.from_numpy(local['label'].astype(np.int64))
  device = torch.get_default_device()
  tbatch = {'image': images.to(device), 'label': labels.to(device)}
  eager_model = torch_models.build(name, config)
  torch_params = torch_models.num_params(eager_model)
  if torch_params != jax_params:
    raise AssertionError(
      f'{name}: jaxvision has {jax_params:,} parameters, the torch twin {torch_params:,}'
    )
  runners = {
    'jax': jax_runner,
    'torch_eager': TorchRunner(torch_models.TrainStep(name, config, eager_model), tbatch),
  }

  def twin_runner(**step_options) -> TorchRunner:
    """Another twin with the eager twin's weights, stepped with these TrainStep options."""
    model = torch_models.build(name, config)
    model.load_state_dict(eager_model.state_dict())
    return TorchRunner(torch_models.TrainStep(name, config, model, **step_options), tbatch)

  if args.torch_bf16 != 'none':
    runners['torch_eager_bf16'] = twin_runner(bf16=True)
  torch_compile_warmup_s = {}
  for bf16 in (False, True) if args.torch_bf16 == 'both' else (False,):
    if args.no_compile or args.compile_spent_s >= args.compile_budget_s:
      break
    key = 'torch_compile_bf16' if bf16 else 'torch_compile'
    runners[key] = twin_runner(compile=True, bf16=bf16)
    torch_compile_warmup_s[key] = timed(runners[key], 3)  # compiles forward + backward
    args.compile_spent_s += torch_compile_warmup_s[key]
  variant_compile_s = {}
  for variant in args.jax_variants:
    made = jax_variant(name, variant, args.batch, local)
    if made is not None:
      runners[f'jax:{variant}'], variant_compile_s[variant] = made

  # Warm-up (2 steps each), which also estimates the step times for the rounds' lengths.
  estimates = {}
  for k, runner in runners.items():
    runner(1)
    estimates[k] = timed(runner, 1)
  timing = interleaved(runners, args.repeats, args.round_s, estimates)
  med = {k: statistics.median(v) for k, v in timing['samples'].items()}
  ips = {k: args.batch / v for k, v in med.items()}
  jax_gflops = flops / med['jax'] / 1e9
  row = {
    'model': name,
    'config': f'configs/{torch_models.CONFIGS[name]}',
    'batch': args.batch,
    'params': jax_params,
    'torch_params': torch_params,
    'jax_ips': ips['jax'],
    'torch_eager_ips': ips['torch_eager'],
    'torch_compile_ips': ips.get('torch_compile', float('nan')),
    'jax_compile_s': jax_compile_s,
    'jax_first_call_s': jax_first_call_s,
    'torch_compile_warmup_s': torch_compile_warmup_s.get('torch_compile', float('nan')),
    'flops_per_step': flops,
    'flops_loop_unknown': loop_unknown,
    'xla_cost_flops': xla_cost_flops,
    'jax_gflops': jax_gflops,
    'matmul_gflops': matmul,
    'gflops_fraction': jax_gflops / matmul,
    'pipeline_ips': pipeline_ips,
    'jax_step_ms': {'median': 1e3 * med['jax'], 'min': 1e3 * min(timing['samples']['jax'])},
    'step_ms_samples': {k: [round(1e3 * s, 3) for s in v] for k, v in timing['samples'].items()},
    'steps_per_round': timing['steps_per_round'],
    'conv_impl': config.model.get('conv_impl'),
  }
  if args.torch_bf16 != 'none':
    row['torch_eager_bf16_ips'] = ips['torch_eager_bf16']
    row['torch_compile_bf16_ips'] = ips.get('torch_compile_bf16', float('nan'))
    row['torch_compile_bf16_warmup_s'] = torch_compile_warmup_s.get(
      'torch_compile_bf16', float('nan')
    )
  if args.jax_variants:
    row['jax_variants_ips'] = {
      k.split(':', 1)[1]: v for k, v in ips.items() if k.startswith('jax:')
    }
    row['jax_variants_compile_s'] = variant_compile_s
  del runners, jax_runner
  torch._dynamo.reset()
  gc.collect()
  return row


# ------------------------------------------------------------------- main


def versions() -> dict:
  import importlib.metadata

  out = {'python': platform.python_version()}
  for p in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'torch'):
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      out[p] = importlib.metadata.version(p)
  return out


def print_table(rows: list[dict]) -> None:
  head = (
    f'{"model":9s} {"params":>9s} {"jax":>7s} {"eager":>7s} {"compile":>7s} {"jax/eag":>7s} '
    f'{"jax/cmp":>7s} {"jax_cmp_s":>9s} {"tc_warm_s":>9s} {"GFLOP/st":>8s} {"gf_frac":>7s} '
    f'{"pipe_ips":>9s}'
  )
  print(head)
  for r in rows:
    print(
      f'{r["model"]:9s} {r["params"]:9,d} {r["jax_ips"]:7.0f} {r["torch_eager_ips"]:7.0f} '
      f'{r["torch_compile_ips"]:7.0f} {r["jax_ips"] / r["torch_eager_ips"]:7.2f} '
      f'{r["jax_ips"] / r["torch_compile_ips"]:7.2f} {r["jax_compile_s"]:9.1f} '
      f'{r["torch_compile_warmup_s"]:9.1f} {r["flops_per_step"] / 1e9:8.2f} '
      f'{r["gflops_fraction"]:7.3f} '
      f'{r["pipeline_ips"]:9.0f}'
    )
    if 'torch_eager_bf16_ips' in r:
      print(
        f'          torch bf16 autocast (images/s): eager {r["torch_eager_bf16_ips"]:.0f}, '
        f'compile {r["torch_compile_bf16_ips"]:.0f}'
      )
    if r.get('jax_variants_ips'):
      print(
        '          jax variants (images/s, ratio to jax): '
        + ', '.join(
          f'{k} {v:.0f} ({v / r["jax_ips"]:.2f}x)' for k, v in r['jax_variants_ips'].items()
        )
      )


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument(
    '--models', default=','.join(MODELS), help=f'comma-separated, of {",".join(MODELS)}'
  )
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument(
    '--repeats', type=int, default=None, help='timed rounds per model (default 7; quick 3)'
  )
  ap.add_argument(
    '--round-s',
    type=float,
    default=None,
    help='seconds per runner per round (default 1.5; quick 0.4)',
  )
  ap.add_argument('--quick', action='store_true', help='3 short rounds, fewer pipeline batches')
  ap.add_argument('--devices', type=int, default=1, help='forced XLA CPU devices (default 1)')
  ap.add_argument(
    '--platform',
    default='cpu',
    choices=('cpu', 'gpu'),
    help="'gpu': jax on its default accelerator, torch on CUDA",
  )
  ap.add_argument(
    '--torch-bf16',
    default='none',
    choices=('none', 'eager', 'both'),
    help='also time the torch twins under torch.autocast(bfloat16): eager, or eager and compiled',
  )
  ap.add_argument('--threads', type=int, default=os.cpu_count(), help='torch.set_num_threads')
  ap.add_argument('--no-compile', action='store_true', help='skip torch.compile')
  ap.add_argument(
    '--compile-budget-s',
    type=float,
    default=float('inf'),
    help='no torch.compile for the models left once the warm-ups so far took this long',
  )
  ap.add_argument(
    '--omp-wait-policy',
    default=None,
    choices=('passive', 'active', 'unset'),
    help='OMP_WAIT_POLICY for torch (default: $OMP_WAIT_POLICY if set, else passive)',
  )
  ap.add_argument(
    '--torch-cache',
    action='store_true',
    help="keep torch inductor's on-disk cache (default: a fresh one, so compile warm-up is cold)",
  )
  ap.add_argument(
    '--jax-variants', default='', help=f'extra jax columns, of {",".join(JAX_VARIANTS)}'
  )
  ap.add_argument('--out-dir', default=os.path.join(HERE, 'results'))
  ap.add_argument('--no-write', action='store_true')
  args = ap.parse_args(argv)
  args.models = [m for m in args.models.split(',') if m]
  for m in args.models:
    if m not in MODELS:
      ap.error(f'unknown model {m!r}; use {",".join(MODELS)}')
  args.jax_variants = [v for v in args.jax_variants.split(',') if v]
  for v in args.jax_variants:
    if v not in JAX_VARIANTS:
      ap.error(f'unknown jax variant {v!r}; use {",".join(JAX_VARIANTS)}')
  args.repeats = args.repeats or (3 if args.quick else 7)
  args.round_s = args.round_s or (0.4 if args.quick else 1.5)
  args.pipeline_batches = 20 if args.quick else 100
  args.compile_spent_s = 0.0

  set_jax_env(args.devices, args.platform)
  # torch's OpenMP threads spin while waiting for work by default; on a 2-core machine shared
  # with other processes that made torch eager up to 20x slower (ViT, LSTM) in our runs.
  policy = args.omp_wait_policy or os.environ.get('OMP_WAIT_POLICY', 'passive')
  if policy == 'unset':
    os.environ.pop('OMP_WAIT_POLICY', None)
  else:
    os.environ['OMP_WAIT_POLICY'] = policy.upper()  # read when torch loads libgomp
  if not args.torch_cache:
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = tempfile.mkdtemp(prefix='inductor_cache_')
  sys.path.insert(0, HERE)
  sys.path.insert(0, ROOT)
  import jax
  import torch

  torch.set_num_threads(args.threads)
  if args.platform == 'gpu':
    if not torch.cuda.is_available() or jax.default_backend() != 'gpu':
      ap.error(
        f'--platform gpu: torch sees CUDA {torch.cuda.is_available()}, jax runs on '
        f'{jax.default_backend()}'
      )
    torch.set_default_device('cuda')  # each framework at its default float32 precision

  t_start = time.perf_counter()
  gf = matmul_gflops(7)
  tgf = torch_matmul_gflops(5)
  machine = {
    'hostname': socket.gethostname(),
    'date': datetime.date.today().isoformat(),
    'started': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H%MZ'),
    'cpus': os.cpu_count(),
    'jax_devices': jax.device_count(),
    'platform': args.platform,
    'device_kind': jax.devices()[0].device_kind,
    'torch_device': torch.cuda.get_device_name() if args.platform == 'gpu' else 'cpu',
    'torch_threads': torch.get_num_threads(),
    'torch_float32_matmul_precision': torch.get_float32_matmul_precision(),
    'torch_cudnn_allow_tf32': torch.backends.cudnn.allow_tf32,
    'jax_threads': f'XLA:CPU intra-op pool, {os.cpu_count()} threads (one per core)',
    'xla_flags': os.environ.get('XLA_FLAGS', ''),
    'versions': versions(),
    'quick': args.quick,
    'repeats': args.repeats,
    'round_s': args.round_s,
    'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY', 'unset'),
    'torch_inductor_cache': 'kept' if args.torch_cache else 'fresh (cold compile)',
  }
  print(
    f'{machine["hostname"]}: {os.cpu_count()} cpus, jax {machine["versions"].get("jax")} on '
    f'{jax.device_count()} device(s), torch {machine["versions"].get("torch")} with '
    f'{torch.get_num_threads()} threads (OMP_WAIT_POLICY={machine["omp_wait_policy"]}), '
    f'batch {args.batch}, {args.repeats} rounds of ~{args.round_s}s'
  )
  print(
    f'2048x2048 f32 matmul: jax {statistics.median(gf):.0f} GFLOP/s, '
    f'torch {statistics.median(tgf):.0f} GFLOP/s'
  )
  suffix = '-quick' if args.quick else ''
  paths = [
    os.path.join(args.out_dir, f'{machine["hostname"]}-{machine["started"]}{suffix}.json'),
    os.path.join(args.out_dir, f'latest{suffix}.json'),
  ]

  def finish(rows: list[dict], gf: list[float], final: bool) -> None:
    """Fills the run-wide columns and writes the JSON files (after every model, so a run cut
    short keeps the models it finished; `final` once all are done)."""
    matmul = statistics.median(gf)
    for row in rows:
      row['matmul_gflops'] = matmul
      row['gflops_fraction'] = row['jax_gflops'] / matmul
      row['torch_matmul_gflops'] = statistics.median(tgf)
      row.update(machine)
      row['total_run_s'] = time.perf_counter() - t_start
      row['complete'] = final
    if args.no_write:
      return
    os.makedirs(args.out_dir, exist_ok=True)
    nan_to_none = lambda v: None if isinstance(v, float) and v != v else v  # strict JSON: no NaN
    clean = [{k: nan_to_none(v) for k, v in row.items()} for row in rows]
    for path in paths:
      with open(path, 'w') as f:
        json.dump(clean, f, indent=1)

  rows = []
  for name in args.models:
    t = time.perf_counter()
    row = bench_model(name, args, statistics.median(gf))
    row['bench_s'] = time.perf_counter() - t
    rows.append(row)
    print(
      f'  {name}: jax {row["jax_ips"]:.0f}, torch eager {row["torch_eager_ips"]:.0f}, '
      f'torch.compile {row["torch_compile_ips"]:.0f} images/s ({row["bench_s"]:.0f} s)',
      flush=True,
    )
    finish(rows, gf, final=False)
  gf += matmul_gflops(7)  # the machine's speed may drift during the run: both ends count
  finish(rows, gf, final=True)
  print()
  print_table(rows)
  print(
    f'\nmatmul {rows[0]["matmul_gflops"]:.0f} GFLOP/s (jax, median of both ends); '
    f'total {rows[0]["total_run_s"]:.0f} s'
  )
  if not args.no_write:
    print('wrote ' + ', '.join(paths))
  return rows


if __name__ == '__main__':
  sys.path.insert(0, ROOT)
  from jaxvision import hugepages

  hugepages.reexec()  # as run.py does: the product's malloc, for both frameworks in this process
  main()
