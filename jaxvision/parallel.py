"""Device mesh and shardings.

One `Mesh` over all devices of all processes, axes ('data', 'fsdp', 'model').
Batches are split over ('data', 'fsdp'). The train state (params, optimizer
states, EMA copies, batch statistics) follows one size-based rule: with
`mesh.fsdp` = 1 every leaf is replicated (data parallel); with `mesh.fsdp` = N > 1
every leaf of at least `FSDP_MIN_SIZE` elements is split N ways along its
largest axis that N divides (FSDP / ZeRO-3), the rest stay replicated. XLA
inserts the all-gathers and reduce-scatters; there are no hand-written
collectives. The step functions are written once and sharded from outside, by
`jax.jit(in_shardings=..., out_shardings=...)`.
"""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')
FSDP_MIN_SIZE = 2 ** 12  # smaller leaves stay replicated: splitting them saves less than it costs


class MeshError(ValueError):
  """A mesh that does not fit the devices; the message is one line with the fix."""


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  sizes = [mesh_config[a] for a in AXES]
  if sizes.count(-1) > 1:
    raise MeshError('at most one of mesh.data, mesh.fsdp, mesh.model may be -1')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f'mesh axes {dict(zip(AXES, sizes))} do not divide the {num_devices} devices')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(f'mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, '
                    f'there are {num_devices}; set one axis to -1')
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The mesh over `devices` (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_size_per_shard(mesh: Mesh) -> int:
  """How many ways a batch is split: its size must divide by this."""
  return mesh.shape['data'] * mesh.shape['fsdp']


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], n: int) -> P:
  """The FSDP rule for one leaf: split its largest axis that `n` divides over 'fsdp'
  (ties: the later axis, e.g. a kernel's output features), or replicate it."""
  if n == 1 or math.prod(shape) < FSDP_MIN_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: (shape[a], a), reverse=True):
    if shape[axis] % n == 0:
      return P(*(['fsdp' if a == axis else None for a in range(len(shape))]))
  return P()


def state_sharding(mesh: Mesh, state):
  """Sharding for every leaf of the (abstract) train state: `fsdp_spec` of its shape."""
  n = mesh.shape['fsdp']
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(tuple(getattr(x, 'shape', ())), n)), state)


def to_global(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's rows of a batch -> one global array per leaf."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


def step_memory(step_fn, abstract_state, abstract_batch: dict, mesh: Mesh) -> dict:
  """Per-device bytes of `step_fn(state, batch)` compiled for `mesh` with the state sharded by
  `state_sharding` (nothing is allocated: the inputs are shapes). From XLA's memory analysis:
  'arguments' (the state + batch shards a device holds), 'outputs', 'temporaries'."""
  shardings = state_sharding(mesh, abstract_state)
  compiled = jax.jit(step_fn, in_shardings=(shardings, batch_sharding(mesh)),
                     out_shardings=(shardings, replicated(mesh)), donate_argnums=0).lower(
                         abstract_state, abstract_batch).compile()
  stats = compiled.memory_analysis()
  return {'arguments': int(stats.argument_size_in_bytes), 'outputs': int(stats.output_size_in_bytes),
          'temporaries': int(stats.temp_size_in_bytes)}
