"""Device mesh and shardings.

One `Mesh` over all devices of all processes, axes ('data', 'fsdp', 'model'),
from `jax.make_mesh` (which orders the devices by the hardware's topology).
Batches are split over ('data', 'fsdp'). Every leaf of the train state (params,
optimizer states, EMA copies, batch statistics) gets its sharding from two rules,
by its path and its shape:

- tensor parallelism (`mesh.model` = M > 1): the model's own table of
  (path regex, PartitionSpec) rules (`models.SHARDING_RULES`, e.g. the ViT's
  Megatron-style split of attention heads and MLP units) puts `MODEL_AXIS` on one
  axis of each leaf whose path it matches; the regexes match the end of the
  '/'-joined path, so a parameter's Adam moments and EMA copy follow it;
- FSDP (`mesh.fsdp` = N > 1): every leaf of at least `FSDP_MIN_SIZE` elements is
  split N ways along its largest axis that N divides and the model axis left free
  (FSDP / ZeRO-3).

Leaves neither rule splits are replicated; with fsdp = model = 1 that is all of them
(data parallel). XLA inserts the all-gathers, reduce-scatters and all-reduces (for
tensor parallelism: propagated from the params' shardings, no constraint on an
activation); there are no hand-written collectives. The step functions are written
once and sharded from outside, by `jax.jit(in_shardings=..., out_shardings=...)`.

The pmap path (`config.parallel='pmap'`, data parallel only, one process or
several) runs the same step functions under `jax.pmap` over the axis
`PMAP_AXIS`, each device on its rows of the global batch, and tells them so
with an explicit `BatchSplit` argument. Three things make it train like the jit
path (equal up to the order of floating-point reductions), and all three are
no-ops under jit (split None): `batch_mean` (the task's gradients and metrics:
`lax.pmean`), `batch_axis` (BatchNorm statistics over the global batch: flax's
`axis_name`) and `batch_rows` (every random draw with a batch dimension —
augmentation, dropout, latents — is drawn at the global batch size and each
device keeps its own rows, so it gets the numbers the jit path gives those rows).

`DispatchBound` keeps the loops from running more than 8 steps ahead of several CPU devices,
past which XLA:CPU can deadlock a step's all-reduce.
"""

import collections
import dataclasses
import functools
import math
import re

import jax
import numpy as np
from jax import lax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxvision.errors import MeshError

AXES = ('data', 'fsdp', 'model')
BATCH_AXES = ('data', 'fsdp')
MODEL_AXIS = 'model'  # the axis of tensor parallelism (the models' sharding rules name it)
FSDP_MIN_SIZE = 2**12  # smaller leaves stay replicated: splitting them saves less than it costs
PMAP_AXIS = 'batch'


def mesh_shape(mesh_config, num_devices: int) -> tuple[int, ...]:
  """The sizes of the mesh axes, with a -1 resolved to the devices the others leave.

  Args:
    mesh_config: config.mesh ({'data', 'fsdp', 'model'}: sizes, at most one -1).
    num_devices: the devices the mesh must cover exactly.

  Returns:
    (data, fsdp, model) sizes whose product is `num_devices`.

  Raises:
    MeshError: more than one -1, or sizes that do not fit the devices.
  """
  sizes = [mesh_config[a] for a in AXES]
  if sizes.count(-1) > 1:
    raise MeshError('at most one of mesh.data, mesh.fsdp, mesh.model may be -1')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise MeshError(f'mesh axes {dict(zip(AXES, sizes))} do not divide the {num_devices} devices')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(
      f'mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, '
      f'there are {num_devices}; set one axis to -1'
    )
  return tuple(sizes)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """The mesh over `devices` (default: all devices of all processes), laid out by
  `jax.make_mesh` for the devices' topology.

  The axes are of type Auto: shardings come from jit's in/out shardings and XLA propagates them
  (make_mesh's default, Explicit, would make sharding part of every array's type).

  Args:
    mesh_config: config.mesh.
    devices: the devices to lay out (tests, subsets); None: `jax.devices()`.

  Returns:
    A Mesh of axes `AXES`.

  Raises:
    MeshError: the axis sizes do not fit the devices.
  """
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def batch_size_per_shard(mesh: Mesh) -> int:
  """How many ways a batch is split: its size must divide by this.

  Args:
    mesh: the mesh.

  Returns:
    The product of the sizes of its 'data' and 'fsdp' axes.
  """
  return mesh.shape['data'] * mesh.shape['fsdp']


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """The sharding of a batch.

  Args:
    mesh: the mesh.

  Returns:
    Axis 0 (the batch) split over `BATCH_AXES`, the rest replicated.
  """
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a full copy on every device.

  Args:
    mesh: the mesh.

  Returns:
    NamedSharding(mesh, P()).
  """
  return NamedSharding(mesh, P())


def model_spec(path: str, shape: tuple[int, ...], rules, m: int) -> P:
  """The tensor-parallel rule for one leaf: the PartitionSpec of the first rule whose regex matches
  the end of its path (`re.search`), or none.

  Args:
    path: the leaf's '/'-joined path, e.g. 'opt_state/1/0/mu/block1/Dense_0/kernel' (an Adam
      moment of 'params/block1/Dense_0/kernel').
    shape: the leaf's shape.
    rules: (regex, PartitionSpec) pairs, the model's `SHARDING_RULES`.
    m: the size of the mesh's 'model' axis.

  Returns:
    The rule's PartitionSpec, or P() when m is 1 or no rule matches.

  Raises:
    MeshError: m does not divide an axis that the rule splits over 'model', or the rule has more
      axes than the leaf.
  """
  if m == 1:
    return P()
  for pattern, spec in rules:
    if not re.search(pattern, path):
      continue
    if len(spec) > len(shape):
      raise MeshError(f'the sharding rule {pattern!r} -> {spec} does not fit {path} {shape}')
    for axis, name in enumerate(spec):
      if name == MODEL_AXIS and shape[axis] % m:
        raise MeshError(
          f'mesh.model={m} does not divide axis {axis} (of size {shape[axis]}) of {path}, which '
          f'the model splits over the model axis; pick a mesh.model that divides it'
        )
    return spec
  return P()


def fsdp_spec(shape: tuple[int, ...], n: int, spec: P | None = None) -> P:
  """The FSDP rule for one leaf: split its largest axis that `n` divides over 'fsdp'
  (ties: the later axis, e.g. a kernel's output features), or replicate it; axes that `spec`
  (the tensor-parallel split, `model_spec`) already splits are kept as they are.

  Args:
    shape: the leaf's shape.
    n: the size of the mesh's 'fsdp' axis.
    spec: the leaf's split over the other axes (None: none).

  Returns:
    The PartitionSpec: `spec` alone (P() if it splits nothing) when n is 1, the leaf has under
    `FSDP_MIN_SIZE` elements or no free axis divides by n.
  """
  spec = P() if spec is None else spec
  names = (*spec, *(None,) * (len(shape) - len(spec)))
  if n > 1 and math.prod(shape) >= FSDP_MIN_SIZE:
    free = [a for a in range(len(shape)) if names[a] is None]
    for axis in sorted(free, key=lambda a: (shape[a], a), reverse=True):
      if shape[axis] % n == 0:
        return P(*('fsdp' if a == axis else name for a, name in enumerate(names)))
  return spec if any(names) else P()


def state_sharding(mesh: Mesh, state, rules=()):
  """Sharding for every leaf of the (abstract) train state: `model_spec` of its path (the model
  axis) composed with `fsdp_spec` of its shape (the fsdp axis).

  Args:
    mesh: the mesh.
    state: a state or abstract state (leaves with `shape`; others are replicated).
    rules: the model's tensor-parallel rules ((regex, PartitionSpec) pairs; used when the mesh's
      'model' axis is > 1).

  Returns:
    A PyTree of NamedShardings of the structure of `state`.

  Raises:
    MeshError: a rule's split does not divide by the 'model' axis (see `model_spec`).
  """
  n, m = mesh.shape['fsdp'], mesh.shape[MODEL_AXIS]

  def leaf(path, x):
    shape = tuple(getattr(x, 'shape', ()))
    path = jax.tree_util.keystr(path, simple=True, separator='/')
    return NamedSharding(mesh, fsdp_spec(shape, n, model_spec(path, shape, rules, m)))

  return jax.tree_util.tree_map_with_path(leaf, state)


def to_global(local_batch: dict, sharding: NamedSharding) -> dict:
  """This process's rows of a batch -> one global array per leaf.

  Args:
    local_batch: {key: numpy [rows of this process, ...]}.
    sharding: the batch sharding (`batch_sharding`).

  Returns:
    {key: jax.Array [global rows, ...]} sharded by `sharding`.
  """
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)


class DispatchBound:
  """Bounds how far the host runs ahead of several CPU devices: `add(out)` of a dispatched step's
  output waits until the output added `depth` calls before is ready.

  A loop that fetches its results every N steps queues N computations per device. XLA:CPU lets 32
  queue per device; the launch of the 33rd waits for one to finish while holding a thread of the
  client's pool, which has a thread per device on a small machine, and a step's all-reduce needs
  every device's part running on that pool: once the waiting launch holds the thread a part
  needs, nothing finishes and XLA aborts the step after 40 s (exit 134, "Expected 8 threads to
  join the rendezvous"). On one device, or on GPUs and TPUs, `add` does nothing: the loop's
  fetches every `train.log_every` steps bound it, and waiting on every step cost the 1-device
  CPU run throughput in an A/B (docs/performance.md).
  """

  def __init__(self, depth: int = 8):
    several_cpus = jax.local_device_count() > 1 and jax.local_devices()[0].platform == 'cpu'
    self._queued = collections.deque(maxlen=depth) if several_cpus else None

  def add(self, out) -> None:
    """Records a dispatched computation's output, first waiting for the oldest if `depth` are
    queued."""
    if self._queued is None:
      return
    if len(self._queued) == self._queued.maxlen:
      jax.block_until_ready(self._queued[0])
    self._queued.append(out)


# XLA:CPU option that leaves convolutions to XLA's own emitter instead of YNNPACK (dots and
# reductions still go to YNNPACK), for `config.cpu_convolutions='xla'`.
_CPU_CONVS_WITHOUT_YNNPACK = {
  'xla_cpu_experimental_ynn_fusion_type': (
    'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'
  )
}


def compiler_options(config) -> dict | None:
  """The XLA compiler options of `config` for this backend (None: XLA's defaults).

  Args:
    config: the experiment config (`cpu_convolutions`).

  Returns:
    The options that keep convolutions away from YNNPACK on CPU with cpu_convolutions='xla';
    otherwise None.
  """
  if config.get('cpu_convolutions', 'ynnpack') == 'xla' and jax.default_backend() == 'cpu':
    return dict(_CPU_CONVS_WITHOUT_YNNPACK)
  return None


def jit(fn, config):
  """`jax.jit(fn)` compiled with `compiler_options(config)`, as the train steps are: for the
  tasks' own jitted helpers (sample grids), which would otherwise get XLA's defaults (on CPU,
  YNNPACK's convolutions: the DCGAN's grid 2.7 against 2.2 s, docs/performance.md). One jitted
  function per (fn, options), so later calls reuse its compiled programs.

  Args:
    fn: the function to jit.
    config: the experiment config (`cpu_convolutions`).

  Returns:
    The jitted fn.
  """
  return _jit(fn, tuple(sorted((compiler_options(config) or {}).items())))


@functools.cache
def _jit(fn, options: tuple):
  return jax.jit(fn, compiler_options=dict(options) or None)


def jit_train_step(step_fn, state_shardings, mesh: Mesh, options: dict | None = None):
  """`step_fn(state, batch) -> (state, metrics)` jitted for `mesh`: the state keeps its shardings
  (and is donated), the batch is split over the batch axes, the metrics come back replicated.

  Args:
    step_fn: a task's train_step.
    state_shardings: the state's shardings (`state_sharding`).
    mesh: the mesh.
    options: XLA compiler options (`compiler_options(config)`), or None.

  Returns:
    The jitted step.
  """
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, batch_sharding(mesh)),
    out_shardings=(state_shardings, replicated(mesh)),
    donate_argnums=0,
    compiler_options=options,
  )


# ------------------------------------------------------------------ the pmap path


@dataclasses.dataclass(frozen=True)
class BatchSplit:
  """How a per-device step under pmap holds the global batch: split `devices` ways over the
  named axis `axis_name`, device i holding the i-th contiguous block of rows. With `stacked` = k
  the array at hand is k such batches' rows one after the other (e.g. a discriminator on
  [real; fake]). Under jit there is no split: the functions below take None and do nothing.

  A task's `train_step(state, batch, split)` gets one from `pmap_step` and passes it on,
  explicitly: to `batch_mean` and `batch_rows`, to augmentation, and to models as their
  `batch_split` attribute (BatchNorm's axis, dropout's mask rows).

  Attributes:
    axis_name: the pmap axis the batch is split over.
    devices: devices over all processes, each holding an equal block of rows.
    stacked: batches concatenated in the array at hand.
  """

  axis_name: str
  devices: int
  stacked: int = 1

  def stack(self, count: int) -> 'BatchSplit':
    """The split of `count` batches concatenated along the rows.

    Args:
      count: the batches stacked (2 for a discriminator on [real; fake]).

    Returns:
      This split with `stacked` = count.
    """
    return dataclasses.replace(self, stacked=count)


def stack(split: BatchSplit | None, count: int) -> BatchSplit | None:
  """`split.stack(count)`, or None under jit.

  Args:
    split: the pmap path's batch layout, or None under jit.
    count: the batches stacked.

  Returns:
    The stacked split, or None.
  """
  return None if split is None else split.stack(count)


def batch_axis(split: BatchSplit | None) -> str | None:
  """The named axis the batch is split over (for BatchNorm's `axis_name`).

  Args:
    split: the pmap path's batch layout, or None under jit.

  Returns:
    `split.axis_name`, or None under jit.
  """
  return None if split is None else split.axis_name


def batch_mean(split: BatchSplit | None, tree):
  """The mean over the devices of per-device batch means: the global batch mean (identity under
  jit).

  Args:
    split: the pmap path's batch layout, or None under jit.
    tree: a PyTree of per-device batch means (gradients, metrics).

  Returns:
    The PyTree of global batch means (`tree` itself under jit).
  """
  return tree if split is None else lax.pmean(tree, split.axis_name)


def batch_rows(split: BatchSplit | None, draw, shape):
  """`draw(shape)` (a random array whose axis 0 runs over the batch) as the jit path draws it:
  under pmap it is drawn for the global batch and this device keeps its rows.

  Args:
    split: the pmap path's batch layout, or None under jit.
    draw: shape -> a random array of that shape (the same key every call).
    shape: the per-device shape; axis 0 is this device's rows (of `split.stacked` batches).

  Returns:
    An array of `shape`: under pmap, this device's rows of the global draw.
  """
  if split is None:
    return draw(tuple(shape))
  local = shape[0] // split.stacked
  full = draw((split.stacked * split.devices * local, *shape[1:]))
  full = full.reshape(split.stacked, split.devices * local, *shape[1:])
  mine = lax.dynamic_slice_in_dim(full, lax.axis_index(split.axis_name) * local, local, axis=1)
  return mine.reshape(shape)


def pmap_step(step_fn, devices: int):
  """`step_fn(state, batch) -> (state, metrics)` under `jax.pmap` over `devices` (all processes'):
  state replicated with a leading device axis (see `replicate`) and donated, batch
  [local devices, rows per device, ...]. The metrics come back as this process's first device
  has them (every device holds the same: they are `batch_mean`s or functions of the state).

  Args:
    step_fn: a task's train_step(state, batch, split).
    devices: the devices of all processes.

  Returns:
    train_step(state, batch) -> (state, metrics).
  """
  split = BatchSplit(PMAP_AXIS, devices)
  stepped = jax.pmap(
    lambda state, batch: step_fn(state, batch, split), axis_name=PMAP_AXIS, donate_argnums=0
  )

  def train_step(state, batch):
    state, metrics = stepped(state, batch)
    return state, jax.tree.map(lambda m: m.addressable_shards[0].data[0], metrics)

  return train_step


def replicate(tree, mesh: Mesh):
  """A replicated (jit-path) state -> one copy per local device stacked on a leading axis, for
  `pmap_step`; the copies are the arrays' own per-device buffers, nothing is moved.

  Args:
    tree: a PyTree of arrays replicated over `mesh`.
    mesh: the mesh.

  Returns:
    The PyTree of arrays [devices, ...], one row per device.
  """
  sharding = NamedSharding(Mesh(np.asarray(mesh.devices).reshape(-1), (PMAP_AXIS,)), P(PMAP_AXIS))
  count = mesh.devices.size
  return jax.tree.map(
    lambda x: jax.make_array_from_single_device_arrays(
      (count, *x.shape), sharding, [s.data[None] for s in x.addressable_shards]
    ),
    tree,
  )


def unreplicate(tree, mesh: Mesh):
  """The inverse of `replicate`: per-device copies -> one array replicated over `mesh`.

  Args:
    tree: a PyTree of arrays [devices, ...] (as `pmap_step` returns the state).
    mesh: the mesh.

  Returns:
    The PyTree of arrays replicated over `mesh`.
  """
  sharding = replicated(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_single_device_arrays(
      x.shape[1:], sharding, [s.data.reshape(x.shape[1:]) for s in x.addressable_shards]
    ),
    tree,
  )
