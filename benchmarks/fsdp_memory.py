"""Per-device memory of a ViT train step: data parallel vs FSDP on 1, 2, 4 and 8 devices, or
any data x fsdp x model meshes (FSDP + tensor parallelism).

    python benchmarks/fsdp_memory.py                       # ViT-B/16 at 224x224, 1000 classes
    python benchmarks/fsdp_memory.py --dim 192 --depth 4   # smaller, faster to compile
    python benchmarks/fsdp_memory.py --vit B/16 L/16 --meshes 8x1x1,1x8x1,2x2x2,4x1x2,1x4x2,2x1x4 \\
        --json benchmarks/results/vit_memory.json          # data x fsdp x model on 8 devices

Nothing is allocated and nothing runs: the step (configs/vit.py's classification
train_step, AdamW) is compiled for each mesh over forced CPU host devices with
abstract inputs, and XLA's memory analysis gives the bytes one device holds:
'arguments' = its shard of the train state (params, both Adam moments, step, key)
plus its rows of the batch, 'temporaries' = activations and gradients.
The per-device batch is fixed (--per_device_batch), so the global batch is that times
the mesh's devices, split over its data x fsdp axes.
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


def vit_config(image_size: int, **model) -> ml_collections.ConfigDict:
  path = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'vit.py'
  )
  c = config_lib.from_file(path, 'cifar10')
  c.model.update(model)
  c.data.image_size = image_size
  c.data.augment = 'none'
  return c


def abstract_step(config, mesh_shape: tuple[int, int, int], per_device_batch: int):
  """The train step compiled for a (data, fsdp, model) mesh on the first devices, from shapes.

  Returns:
    (compiled step, abstract state, its shardings).
  """
  devices = mesh_shape[0] * mesh_shape[1] * mesh_shape[2]
  mesh = parallel.make_mesh(
    ml_collections.ConfigDict(dict(zip(parallel.AXES, mesh_shape))), jax.devices()[:devices]
  )
  task = tasks.get(config.task)
  size = config.data.image_size
  sample = {'image': jnp.zeros((1, size, size, 3)), 'label': jnp.zeros((1,), jnp.int32)}
  state = jax.eval_shape(lambda rng: task.init(config, rng, sample), jax.random.PRNGKey(0))
  batch = {
    'image': jax.ShapeDtypeStruct((per_device_batch * devices, size, size, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((per_device_batch * devices,), jnp.int32),
  }
  shardings = parallel.state_sharding(mesh, state, models.SHARDING_RULES['vit'])
  step = parallel.jit_train_step(task.train_step, shardings, mesh)
  return step.lower(state, batch).compile(), state, shardings


def measure(config, mesh_shape: tuple[int, int, int], per_device_batch: int) -> dict:
  """Per-device bytes of the train step on a (data, fsdp, model) mesh of the first devices."""
  compiled, state, _ = abstract_step(config, mesh_shape, per_device_batch)
  stats = compiled.memory_analysis()
  return {
    'params': sum(x.size for x in jax.tree_util.tree_leaves(state.params)),
    'arguments': int(stats.argument_size_in_bytes),
    'outputs': int(stats.output_size_in_bytes),
    'temporaries': int(stats.temp_size_in_bytes),
  }


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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--per_device_batch', type=int, default=2)
  for key in VIT_B16:
    parser.add_argument(f'--{key}', type=int, help='overrides the --vit preset')
  parser.add_argument('--vit', nargs='+', choices=sorted(VITS), default=['B/16'])
  parser.add_argument(
    '--meshes', help='comma-separated DATAxFSDPxMODEL sizes, e.g. 2x2x2,4x1x2 (default: DP vs FSDP)'
  )
  parser.add_argument('--json', help='with --meshes: write the rows to this file')
  args = parser.parse_args(argv)
  overrides = {k: getattr(args, k) for k in VIT_B16 if getattr(args, k) is not None}
  vits = {name: dict(VITS[name], **overrides) for name in args.vit}
  print(
    f'ViT {vits} at {args.image_size}x{args.image_size}, AdamW, '
    f'{args.per_device_batch} images per device; MiB per device'
  )
  if not args.meshes:
    for model in vits.values():
      devices_table(vit_config(args.image_size, **model), args.per_device_batch)
    return
  meshes = [tuple(int(s) for s in m.split('x')) for m in args.meshes.split(',')]
  rows = meshes_table(vits, meshes, args.image_size, args.per_device_batch)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(
        {
          'command': 'python benchmarks/fsdp_memory.py ' + ' '.join(sys.argv[1:]),
          'date': datetime.date.today().isoformat(),
          'jax': jax.__version__,
          'image_size': args.image_size,
          'per_device_batch': args.per_device_batch,
          'rows': rows,
        },
        f,
        indent=1,
      )


if __name__ == '__main__':
  main()
