"""Per-device memory of a ViT (or ResNet-50) train step: data parallel vs FSDP on 1, 2, 4 and 8
devices, any data x fsdp x model meshes (FSDP + tensor parallelism), or each block rematerialised.

    python benchmarks/fsdp_memory.py                       # ViT-B/16 at 224x224, 1000 classes
    python benchmarks/fsdp_memory.py --dim 192 --depth 4   # smaller, faster to compile
    python benchmarks/fsdp_memory.py --vit B/16 L/16 --meshes 8x1x1,1x8x1,2x2x2,4x1x2,1x4x2,2x1x4 \\
        --json benchmarks/results/vit_memory.json          # data x fsdp x model on 8 devices
    python benchmarks/fsdp_memory.py --remat --resnet50 --vit B/16 --meshes 1x1x1,1x8x1 \\
        --per_device_batch 16 32 --cpu_schedulers default,memory \\
        --json benchmarks/results/remat_memory.json        # model.remat off -> on
    python benchmarks/fsdp_memory.py --accum_steps 1 2 4 --resnet50 --vit B/16 --meshes 1x1x1 \\
        --per_device_batch 32                              # optim.accum_steps at the same batch

Nothing is allocated and nothing runs: the step (the classification train_step of configs/vit.py,
AdamW, or of configs/resnet.py:imagenet, SGD + momentum, both without augmentation) is compiled
for each mesh over forced CPU host devices with abstract inputs, and XLA's memory analysis gives
the bytes one device holds: 'arguments' = its shard of the train state (params, optimizer state,
BatchNorm statistics, step, key) plus its rows of the batch, 'temporaries' = activations and
gradients. The per-device batch is fixed (--per_device_batch), so the global batch is that times
the mesh's devices, split over its data x fsdp axes. `--remat` measures every row with
model.remat off and on (each residual or encoder block's activations recomputed in the backward
pass instead of stored): the activations the forward pass keeps for the backward pass (jax's
own count, before XLA schedules the step) and the temporaries under each of XLA:CPU's
schedulers named in --cpu_schedulers. `--accum_steps` measures every row at each of the given
optim.accum_steps (the same batch in that many microbatches), under the same schedulers.
"""

import argparse
import datetime
import json
import os
import sys

if 'jax' not in sys.modules:  # the forced devices must be set before jax starts
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
  ).strip()
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jaxvision import config as config_lib  # noqa: E402
from jaxvision import models, parallel, tasks  # noqa: E402

VIT_B16 = dict(patch=16, dim=768, depth=12, heads=12, mlp_dim=3072, num_classes=1000)
VITS = {'B/16': VIT_B16, 'L/16': dict(VIT_B16, dim=1024, depth=24, heads=16, mlp_dim=4096)}
CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


def vit_config(image_size: int, **model) -> ml_collections.ConfigDict:
  """configs/vit.py:cifar10 with `model` changed, at `image_size`, without augmentation."""
  c = config_lib.from_file(os.path.join(CONFIGS, 'vit.py'), 'cifar10')
  c.model.update(model)
  c.data.image_size = image_size
  c.data.augment = 'none'
  return c


def resnet50_config(image_size: int, **model) -> ml_collections.ConfigDict:
  """configs/resnet.py:imagenet (ResNet-50) with `model` changed, at `image_size`, without
  augmentation (the preset's Inception crop would make the step take larger images)."""
  c = config_lib.from_file(os.path.join(CONFIGS, 'resnet.py'), 'imagenet')
  c.model.update(model)
  c.data.image_size = image_size
  c.data.augment = 'none'
  return c


# XLA:CPU's instruction schedulers (the `xla_cpu_scheduler_type` compiler option): the default
# one orders the step for concurrency; the memory-optimised one for the least live memory.
CPU_SCHEDULERS = {'default': None, 'memory': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}


def _abstract_state(config):
  """The task's initial state of `config`, as shapes."""
  task = tasks.get(config.task)
  size = config.data.image_size
  sample = {'image': jnp.zeros((1, size, size, 3)), 'label': jnp.zeros((1,), jnp.int32)}
  return jax.eval_shape(lambda rng: task.init(config, rng, sample), jax.random.PRNGKey(0))


def abstract_step(
  config, mesh_shape: tuple[int, int, int], per_device_batch: int, scheduler: str = 'default'
):
  """The train step compiled for a (data, fsdp, model) mesh on the first devices, from shapes.

  Args:
    config: the experiment config.
    mesh_shape: (data, fsdp, model) sizes.
    per_device_batch: images per device (the global batch is this times the devices).
    scheduler: a key of `CPU_SCHEDULERS` (only XLA:CPU reads the option).

  Returns:
    (compiled step, abstract state, its shardings).
  """
  devices = mesh_shape[0] * mesh_shape[1] * mesh_shape[2]
  mesh = parallel.make_mesh(
    ml_collections.ConfigDict(dict(zip(parallel.AXES, mesh_shape))), jax.devices()[:devices]
  )
  task = tasks.get(config.task)
  size = config.data.image_size
  state = _abstract_state(config)
  batch = {
    'image': jax.ShapeDtypeStruct((per_device_batch * devices, size, size, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((per_device_batch * devices,), jnp.int32),
  }
  shardings = parallel.state_sharding(mesh, state, models.SHARDING_RULES.get(config.model.name, ()))
  options = dict(parallel.compiler_options(config) or {})
  if CPU_SCHEDULERS[scheduler]:
    options['xla_cpu_scheduler_type'] = CPU_SCHEDULERS[scheduler]
  step = parallel.jit_train_step(task.train_step, shardings, mesh, options or None)
  return step.lower(state, batch).compile(), state, shardings


def measure(
  config, mesh_shape: tuple[int, int, int], per_device_batch: int, scheduler: str = 'default'
) -> dict:
  """Per-device bytes of the train step on a (data, fsdp, model) mesh of the first devices."""
  compiled, state, _ = abstract_step(config, mesh_shape, per_device_batch, scheduler)
  stats = compiled.memory_analysis()
  return {
    'params': sum(x.size for x in jax.tree_util.tree_leaves(state.params)),
    'arguments': int(stats.argument_size_in_bytes),
    'outputs': int(stats.output_size_in_bytes),
    'temporaries': int(stats.temp_size_in_bytes),
  }


def measure_schedulers(config, mesh_shape, per_device_batch: int, schedulers: list) -> dict:
  """`measure` under each XLA:CPU scheduler: its sizes, and 'temporaries_<scheduler>_schedule'
  for each one's temporaries (the other sizes do not depend on the scheduler)."""
  out = {}
  for scheduler in schedulers:
    m = measure(config, mesh_shape, per_device_batch, scheduler)
    out.update({k: v for k, v in m.items() if k != 'temporaries'})
    out[f'temporaries_{scheduler}_schedule'] = m['temporaries']
  return out


def saved_activations(config, images: int) -> int:
  """Bytes that the train step's forward pass keeps for its backward pass, for `images` images
  on one device: `jax.vjp`'s residuals of the model's train-mode apply (as the task calls it),
  less those that are its inputs (params, batch statistics, images). This is what model.remat
  changes, before any compiler schedules the step."""
  state = _abstract_state(config)
  model = models.get(config.model)
  size = config.data.image_size
  found = {}

  def residuals(params, batch_stats, x):
    forward = lambda p: model.apply(
      {'params': p, 'batch_stats': batch_stats},
      x,
      train=True,
      rngs={'dropout': jax.random.PRNGKey(0)},
      mutable=['batch_stats'],
    )[0]
    _, backward = jax.vjp(forward, params)
    inputs = {id(leaf) for leaf in jax.tree_util.tree_leaves((params, batch_stats, x))}
    found['bytes'] = sum(
      r.size * r.dtype.itemsize for r in jax.tree_util.tree_leaves(backward) if id(r) not in inputs
    )
    return 0

  x = jax.ShapeDtypeStruct((images, size, size, 3), jnp.float32)
  jax.eval_shape(residuals, state.params, state.batch_stats, x)
  return int(found['bytes'])


def mib(b: float) -> str:
  return f'{b / 2**20:,.1f}'


def devices_table(config, per_device_batch: int) -> None:
  """Data parallel vs FSDP on 1, 2, 4 and 8 devices."""
  print('| devices | DP arguments | FSDP arguments | DP temporaries | FSDP temporaries |')
  print('| --- | --- | --- | --- | --- |')
  for n in (1, 2, 4, 8):
    dp, fsdp = (measure(config, shape, per_device_batch) for shape in ((n, 1, 1), (1, n, 1)))
    print(
      f'| {n} | {mib(dp["arguments"])} | {mib(fsdp["arguments"])} | '
      f'{mib(dp["temporaries"])} | {mib(fsdp["temporaries"])} |',
      flush=True,
    )
  print(f'params: {dp["params"]:,}')


def meshes_table(vits: dict, meshes: list, image_size: int, per_device_batch: int) -> list:
  """Every ViT on every (data, fsdp, model) mesh; returns the rows."""
  print('| model | data x fsdp x model | arguments | outputs | temporaries | args + temps |')
  print('| --- | --- | --- | --- | --- | --- |')
  rows = []
  for name, model in vits.items():
    config = vit_config(image_size, **model)
    for shape in meshes:
      row = {'model': name, 'mesh': dict(zip(parallel.AXES, shape)), **model}
      row.update(measure(config, shape, per_device_batch))
      rows.append(row)
      print(
        f'| ViT-{name} | {"x".join(map(str, shape))} | {mib(row["arguments"])} | '
        f'{mib(row["outputs"])} | {mib(row["temporaries"])} | '
        f'{mib(row["arguments"] + row["temporaries"])} |',
        flush=True,
      )
  return rows


def remat_table(configs: dict, meshes: list, batches: list, schedulers: list) -> list:
  """Every model on every mesh at every per-device batch, with model.remat off and on, side by
  side: the activations kept for the backward pass and the compiled step's temporaries under
  each XLA:CPU scheduler; then both per image between the smallest and largest batch.

  Returns:
    The rows, one per (model, mesh, batch, remat).
  """
  temps = ' | '.join(f'temporaries, {s} schedule' for s in schedulers)
  print(
    f'| model | data x fsdp x model | images per device | state + batch | '
    f'activations kept for the backward pass | {temps} |'
  )
  print('| --- ' * (5 + len(schedulers)) + '|')
  rows = []
  for name, config in configs.items():
    for shape in meshes:
      for batch in batches:
        pair = {}
        for remat in (False, True):
          c = config.copy_and_resolve_references()
          c.model.remat = remat
          row = {'model': name, 'mesh': dict(zip(parallel.AXES, shape)), 'per_device_batch': batch}
          row.update(remat=remat, **{k: v for k, v in c.model.items() if k != 'remat'})
          row['saved_activations'] = saved_activations(c, batch * shape[2])
          row.update(measure_schedulers(c, shape, batch, schedulers))
          rows.append(row)
          pair[remat] = row
        off, on = pair[False], pair[True]
        both = lambda key, off=off, on=on: f'{mib(off[key])} -> {mib(on[key])}'
        cells = ' | '.join(both(f'temporaries_{s}_schedule') for s in schedulers)
        print(
          f'| {name} | {"x".join(map(str, shape))} | {batch} | {mib(off["arguments"])} | '
          f'{both("saved_activations")} | {cells} |',
          flush=True,
        )
  if len(batches) > 1:
    low, high = min(batches), max(batches)
    keys = ['saved_activations'] + [f'temporaries_{s}_schedule' for s in schedulers]
    print(f'\nper image (batch {low} -> {high}), MiB, off -> remat: {", ".join(keys)}')
    for name in configs:
      for shape in meshes:
        at = {
          (r['per_device_batch'], r['remat']): r
          for r in rows
          if r['model'] == name and tuple(r['mesh'].values()) == shape
        }
        per = lambda key, remat, at=at: (at[high, remat][key] - at[low, remat][key]) / (high - low)
        cells = ', '.join(f'{mib(per(k, False))} -> {mib(per(k, True))}' for k in keys)
        print(f'{name} {"x".join(map(str, shape))}: {cells}')
  return rows


def accum_table(configs: dict, meshes: list, batch: int, ks: list, schedulers: list) -> list:
  """Every model on every mesh at `batch` images per device, at each optim.accum_steps of `ks`:
  the compiled step's state + batch and its temporaries under each XLA:CPU scheduler.

  Returns:
    The rows, one per (model, mesh, accum_steps).
  """
  temps = ' | '.join(f'temporaries, {s} schedule' for s in schedulers)
  print(
    f'| model | data x fsdp x model | images per device | accum_steps | state + batch | {temps} |'
  )
  print('| --- ' * (5 + len(schedulers)) + '|')
  rows = []
  for name, config in configs.items():
    for shape in meshes:
      for k in ks:
        c = config.copy_and_resolve_references()
        c.optim.accum_steps = k
        row = {'model': name, 'mesh': dict(zip(parallel.AXES, shape)), 'per_device_batch': batch}
        row.update(accum_steps=k, **c.model)
        row.update(measure_schedulers(c, shape, batch, schedulers))
        rows.append(row)
        cells = ' | '.join(mib(row[f'temporaries_{s}_schedule']) for s in schedulers)
        print(
          f'| {name} | {"x".join(map(str, shape))} | {batch} | {k} | {mib(row["arguments"])} | '
          f'{cells} |',
          flush=True,
        )
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument(
    '--per_device_batch',
    type=int,
    nargs='+',
    default=[2],
    help='images per device; with --remat several (the temporaries per image between them)',
  )
  for key in VIT_B16:
    parser.add_argument(f'--{key}', type=int, help='overrides the --vit preset')
  parser.add_argument(
    '--vit', nargs='*', choices=sorted(VITS), default=['B/16'], help='(none: no ViT)'
  )
  parser.add_argument(
    '--resnet50', action='store_true', help='with --remat: also configs/resnet.py:imagenet'
  )
  parser.add_argument(
    '--meshes', help='comma-separated DATAxFSDPxMODEL sizes, e.g. 2x2x2,4x1x2 (default: DP vs FSDP)'
  )
  parser.add_argument(
    '--remat', action='store_true', help='each row with model.remat off and on (needs --meshes)'
  )
  parser.add_argument(
    '--accum_steps',
    type=int,
    nargs='+',
    help='each row at these optim.accum_steps, e.g. 1 4 (needs --meshes; they divide the batch)',
  )
  parser.add_argument(
    '--cpu_schedulers',
    default='default',
    help=f'with --remat or --accum_steps: comma-separated XLA:CPU schedulers, of '
    f'{", ".join(CPU_SCHEDULERS)}',
  )
  parser.add_argument('--json', help='with --meshes: write the rows to this file')
  args = parser.parse_args(argv)
  if (args.remat or args.resnet50 or args.accum_steps) and not args.meshes:
    parser.error('--remat, --resnet50 and --accum_steps need --meshes (e.g. --meshes 1x1x1,1x8x1)')
  if args.remat and args.accum_steps:
    parser.error('--remat and --accum_steps are measured apart')
  if args.resnet50 and not (args.remat or args.accum_steps):
    parser.error('--resnet50 is measured with --remat or --accum_steps')
  if args.accum_steps and (
    len(args.per_device_batch) > 1 or any(args.per_device_batch[0] % k for k in args.accum_steps)
  ):
    parser.error('--accum_steps takes one --per_device_batch that every accum_steps divides')
  if len(args.per_device_batch) > 1 and not args.remat:
    parser.error('several --per_device_batch values need --remat')
  overrides = {k: getattr(args, k) for k in VIT_B16 if getattr(args, k) is not None}
  vits = {name: dict(VITS[name], **overrides) for name in args.vit}
  print(
    f'ViT {vits}{" and ResNet-50" if args.resnet50 else ""} at {args.image_size}x'
    f'{args.image_size}, {args.per_device_batch} images per device; MiB per device'
  )
  if not args.meshes:
    for model in vits.values():
      devices_table(vit_config(args.image_size, **model), args.per_device_batch[0])
    return
  meshes = [tuple(int(s) for s in m.split('x')) for m in args.meshes.split(',')]
  if args.remat or args.accum_steps:
    configs = {'ResNet-50': resnet50_config(args.image_size)} if args.resnet50 else {}
    configs.update({f'ViT-{n}': vit_config(args.image_size, **m) for n, m in vits.items()})
    schedulers = args.cpu_schedulers.split(',')
    if not set(schedulers) <= set(CPU_SCHEDULERS):
      parser.error(f'--cpu_schedulers {args.cpu_schedulers}: use names of {list(CPU_SCHEDULERS)}')
    if args.remat:
      rows = remat_table(configs, meshes, args.per_device_batch, schedulers)
    else:
      rows = accum_table(configs, meshes, args.per_device_batch[0], args.accum_steps, schedulers)
  else:
    rows = meshes_table(vits, meshes, args.image_size, args.per_device_batch[0])
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(
        {
          'command': 'python benchmarks/fsdp_memory.py ' + ' '.join(sys.argv[1:]),
          'date': datetime.date.today().isoformat(),
          'jax': jax.__version__,
          'image_size': args.image_size,
          'per_device_batch': (args.per_device_batch if args.remat else args.per_device_batch[0]),
          **({'accum_steps': args.accum_steps} if args.accum_steps else {}),
          'rows': rows,
        },
        f,
        indent=1,
      )


if __name__ == '__main__':
  main()
