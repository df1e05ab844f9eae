"""Device mesh and shardings.

One `Mesh` over all devices of all processes, axes ('data', 'fsdp', 'model').
Batches are split over ('data', 'fsdp'); the train state is replicated (data
parallel). The step functions are written once and sharded from outside, by
`jax.jit(in_shardings=..., out_shardings=...)`.
"""
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')


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


def make_mesh(mesh_config) -> Mesh:
  devices = jax.devices()
  shape = mesh_shape(mesh_config, len(devices))
  return Mesh(np.asarray(devices).reshape(shape), AXES)


def batch_size_per_shard(mesh: Mesh) -> int:
  """How many ways a batch is split: its size must divide by this."""
  return mesh.shape['data'] * mesh.shape['fsdp']


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, state):
  """Sharding for every leaf of the train state: replicated (data parallel)."""
  return jax.tree.map(lambda _: replicated(mesh), state)


def to_global(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's rows of a batch -> one global array per leaf."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
