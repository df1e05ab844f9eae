"""Per-device memory of a ViT train step, data parallel vs FSDP, on 1, 2, 4 and 8 devices.

    python benchmarks/fsdp_memory.py                       # ViT-B/16 at 224x224, 1000 classes
    python benchmarks/fsdp_memory.py --dim 192 --depth 4   # smaller, faster to compile

Nothing is allocated and nothing runs: the step (configs/vit.py's classification
train_step, AdamW) is compiled for each mesh over forced CPU host devices with
abstract inputs, and XLA's memory analysis gives the bytes one device holds:
'arguments' = its shard of the train state (params, both Adam moments, step, key)
plus its rows of the batch, 'temporaries' = activations and gradients.
The per-device batch is fixed (--per_device_batch), so the global batch grows with N.
"""

import argparse
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
from jaxvision import parallel, tasks  # noqa: E402

VIT_B16 = dict(patch=16, dim=768, depth=12, heads=12, mlp_dim=3072, num_classes=1000)


def vit_config(image_size: int, **model) -> ml_collections.ConfigDict:
  path = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'vit.py'
  )
  c = config_lib.from_file(path, 'cifar10')
  c.model.update(model)
  c.data.image_size = image_size
  c.data.augment = 'none'
  return c


def measure(config, devices: int, fsdp: bool, per_device_batch: int) -> dict:
  """Per-device bytes of the train step on the first `devices` devices."""
  mesh = parallel.make_mesh(
    ml_collections.ConfigDict(
      {'data': 1 if fsdp else devices, 'fsdp': devices if fsdp else 1, 'model': 1}
    ),
    jax.devices()[:devices],
  )
  task = tasks.get(config.task)
  size = config.data.image_size
  sample = {'image': jnp.zeros((1, size, size, 3)), 'label': jnp.zeros((1,), jnp.int32)}
  state = jax.eval_shape(lambda rng: task.init(config, rng, sample), jax.random.PRNGKey(0))
  batch = {
    'image': jax.ShapeDtypeStruct((per_device_batch * devices, size, size, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((per_device_batch * devices,), jnp.int32),
  }
  params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  return {'params': params, **parallel.step_memory(task.train_step, state, batch, mesh)}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--per_device_batch', type=int, default=2)
  for key, value in VIT_B16.items():
    parser.add_argument(f'--{key}', type=int, default=value)
  args = parser.parse_args(argv)
  model = {k: getattr(args, k) for k in VIT_B16}
  config = vit_config(args.image_size, **model)
  mib = lambda b: f'{b / 2**20:,.1f}'
  print(
    f'ViT {model} at {args.image_size}x{args.image_size}, AdamW, '
    f'{args.per_device_batch} images per device; MiB per device'
  )
  print('| devices | DP arguments | FSDP arguments | DP temporaries | FSDP temporaries |')
  print('| --- | --- | --- | --- | --- |')
  for n in (1, 2, 4, 8):
    dp, fsdp = (measure(config, n, f, args.per_device_batch) for f in (False, True))
    print(
      f'| {n} | {mib(dp["arguments"])} | {mib(fsdp["arguments"])} | '
      f'{mib(dp["temporaries"])} | {mib(fsdp["temporaries"])} |',
      flush=True,
    )
  print(f'params: {dp["params"]:,}')


if __name__ == '__main__':
  main()
