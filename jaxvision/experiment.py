"""A run before its first step: `setup(config, workdir)` makes the `Experiment`.

Every check that can refuse a run (config values, the workdir's config, data
and checkpoints, the mesh, the data, the model's shapes) runs in `setup`,
before any compute and before anything is written to the workdir. The
Experiment then holds the mesh, the task, the splits, the initial state and
the jitted steps that the loop (`train.py`) and the other modes (`modes.py`)
run; `run_eval` and `write_samples` are the evaluation both share.
"""

import contextlib
import dataclasses
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from jaxvision import checkpoint, models, parallel, tasks, transfer, writers
from jaxvision import workdir as workdir_lib
from jaxvision.data import pipeline
from jaxvision.data.split import Split
from jaxvision.errors import ConfigError, WorkdirError
from jaxvision.evaluate import generative as generative_lib
from jaxvision.tasks.task import Batch, State, Task

PACKAGES = (
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'orbax-checkpoint',
  'tensorflow-datasets',
  'grain',
  'chex',
  'ml-collections',
  'numpy',
)


class EvalInterrupted(Exception):
  """A stop signal arrived during an eval: the eval is dropped, the step is saved."""


@dataclasses.dataclass
class Experiment:
  """Everything a run needs before its first step, made by `setup`."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  task: Task
  train_split: Split
  eval_split: Split
  state: State  # the initial state (or init_from's), sharded over the mesh
  train_step: Callable[[State, Batch], tuple[State, dict]]  # jitted (or pmapped) task.train_step
  eval_step: Callable[[State, Batch], dict]  # jitted task.eval_step
  final_eval_step: Callable[[State, Batch], dict]  # eval_step, or the task's final_eval_step
  batch_sharding: jax.sharding.NamedSharding
  eval_batch_size: int  # data.eval_batch_size rounded up to the mesh's batch shards (rows masked)
  generative: generative_lib.GenerativeMetrics | None = None  # when eval.fd_samples > 0
  transfer: dict | None = None  # what init_from loaded (recorded in run.json)
  pmap: bool = False  # config.parallel == 'pmap': train_step takes the state `place`d

  @property
  def checkpoints(self) -> str:
    """WORKDIR/checkpoints."""
    return os.path.join(self.workdir, 'checkpoints')

  def place(self, state):
    """The state as `train_step` takes it.

    Args:
      state: a state as `setup` and checkpoints hold it (sharded over the mesh).

    Returns:
      The same state under jit; under pmap one copy per device, stacked on a leading axis.
    """
    return parallel.replicate(state, self.mesh) if self.pmap else state

  def unplace(self, state):
    """The inverse of `place`: the state as checkpoints, evals and samples take it.

    Args:
      state: a state as `train_step` returns it.

    Returns:
      The state sharded over the mesh (under pmap: the per-device copies as one array).
    """
    return parallel.unreplicate(state, self.mesh) if self.pmap else state

  def train_batch(self, local_batch: dict) -> dict:
    """This process's rows of a batch as `train_step` takes them.

    Args:
      local_batch: {key: numpy [rows of this process, ...]} from the train dataset.

    Returns:
      Global arrays sharded over the mesh's batch axes; under pmap, numpy
      [local devices, rows per device, ...].
    """
    if self.pmap:
      n = jax.local_device_count()
      return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), local_batch)
    return parallel.to_global(local_batch, self.batch_sharding)

  def eval_batches(self):
    """This process's rows of every eval batch (see `pipeline.eval_batches`).

    Returns:
      A generator of numpy batches of `eval_batch_size` global rows, each with its `mask`.
    """
    return pipeline.eval_batches(self.config, self.eval_split, self.eval_batch_size)


def git_commit() -> str | None:
  """The commit of the jaxvision checkout that runs (+ '-dirty' with local changes), or None."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(
      ['git', '-C', here, 'rev-parse', 'HEAD'],
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    ).stdout.strip()
    dirty = subprocess.run(
      ['git', '-C', here, 'status', '--porcelain', '--untracked-files=no'],
      capture_output=True,
      text=True,
      timeout=10,
    ).stdout.strip()
    return out + ('-dirty' if dirty else '')
  except (OSError, subprocess.SubprocessError):
    return None


def versions() -> dict:
  """The versions of Python and of the packages a result depends on."""
  out = {'python': sys.version.split()[0]}
  for p in PACKAGES:
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
      out[p] = importlib.metadata.version(p)
  return out


def host() -> dict:
  """What else fixes the bits of a CPU run: the CPU (XLA:CPU compiles for its vector
  instructions) and the threads of XLA:CPU's pool, which split convolutions and matrix products
  (`PJRT_NPROC`, else `NPROC`, else the cores this process may use: jax's own rule)."""
  cpu = platform.processor() or platform.machine()
  with contextlib.suppress(OSError):
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    cpu = names[0] if names else cpu
  set_by = [os.environ.get(v, '').strip() for v in ('PJRT_NPROC', 'NPROC')]
  threads = next((int(v) for v in set_by if v.isdigit()), None)
  if threads is None:
    threads = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  return {'cpu': cpu, 'threads': threads}


def check_classes(config, train_split) -> None:
  """Checks that the model has a class for every label the data holds: a classifier's head
  needs at least that many logits (labels are not renumbered, so data.classes=(0, ..., 4) needs
  5 and (5, ..., 9) needs 10); a conditional generator's label embedding exactly the data's
  classes (or clusters), since samples draw a class uniformly.

  Args:
    config: the experiment config (task, model.num_classes, data.classes, data.clusters).
    train_split: the train split (its num_classes).

  Raises:
    ConfigError: model.num_classes does not fit the data.
  """
  classes = config.model.get('num_classes')
  if classes is None or (config.task != 'classification' and not classes):
    return  # no head, or an unconditional generator
  if config.task == 'classification':
    needed = max(config.data.classes) + 1 if config.data.classes else train_split.num_classes
    if classes < needed:
      raise ConfigError(
        f'model.num_classes={classes} but the labels of {train_split.name} go up to '
        f'{needed - 1}; set --config.model.num_classes={needed}'
      )
  elif classes != train_split.num_classes:
    clusters = f' (data.clusters={config.data.clusters})' if config.data.clusters else ''
    raise ConfigError(
      f'model.num_classes={classes} but {train_split.name} has '
      f'{train_split.num_classes} classes{clusters}; set --config.model.num_classes='
      f'{train_split.num_classes}, or 0 for an unconditional model'
    )


def setup(config, workdir: str, restoring: bool = False) -> Experiment:
  """Everything before the first step. Every check that can refuse the run is here, before any
  compute and before anything is written to `workdir`.

  Args:
    config: the experiment config (validated here).
    workdir: the resolved run directory (see `workdir.resolve`).
    restoring: the mode reads a checkpoint (eval, sample, explain): refuse at once if there is none.

  Returns:
    The Experiment: mesh, task, splits, the initial state and the jitted steps.

  Raises:
    ConfigError: a config value, the model's fields or shapes, num_classes, freeze or init_from
      cannot work, mesh.model > 1 for a model without tensor-parallel rules, or data.batch_size
      does not divide into optim.accum_steps microbatches split over the mesh's batch shards.
    WorkdirError: the workdir is a file, holds another config, data or checkpoints that do not
      fit, or (restoring) no checkpoint.
    MeshError: the mesh does not fit the devices, or its model axis does not divide what the
      model's tensor-parallel rules split (e.g. the ViT's heads).
    DataError: the data cannot be read.
  """
  tasks.validate(config)
  workdir_lib.check_usable(workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  if restoring and not checkpoint.steps_in(checkpoints):
    raise WorkdirError(
      f'no checkpoint in {checkpoints}; train first (same command with --mode train)'
    )
  mesh = parallel.make_mesh(config.mesh)
  rules = models.SHARDING_RULES.get(config.model.name, ())
  if mesh.shape[parallel.MODEL_AXIS] > 1 and not rules:
    split = ', '.join(f'model.name={name}' for name in models.SHARDING_RULES)
    raise ConfigError(
      f'mesh.model={mesh.shape[parallel.MODEL_AXIS]} splits only the models with tensor-parallel '
      f'rules ({split}), not model {config.model.name!r}; set mesh.model=1 '
      f"(mesh.fsdp shards any model's state)"
    )
  shards = parallel.batch_size_per_shard(mesh)
  k = config.optim.accum_steps
  if config.data.batch_size % (k * shards):  # every microbatch is split over the batch shards
    raise ConfigError(
      f'data.batch_size={config.data.batch_size} must be divisible by '
      f'{f"optim.accum_steps={k} x " if k > 1 else ""}the {shards} batch shards of the mesh; '
      f'pick a multiple of {k * shards}'
    )
  workdir_lib.check_config(config, workdir)
  jax.config.update('jax_debug_nans', bool(config.debug_nans))
  eval_batch_size = -(-config.data.eval_batch_size // shards) * shards  # padded rows are masked
  task = tasks.get(config.task)
  train_split = pipeline.load_split(config.data, config.data.train_split)
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  workdir_lib.check_data(
    config, workdir, {'train': train_split.fingerprint, 'eval': eval_split.fingerprint}
  )

  dtype = jnp.int32 if train_split.input_key == 'tokens' else jnp.float32
  sample = {
    train_split.input_key: jnp.zeros((1, *train_split.image_shape), dtype),
    'label': jnp.zeros((1,), jnp.int32),
  }
  init = lambda rng: task.init(config, rng, sample)
  rng = jax.random.PRNGKey(config.seed)
  try:
    abstract = jax.eval_shape(init, rng)
  except Exception as e:  # shape errors from the model, before any compute
    first = (str(e).strip().splitlines() or [''])[0]
    if first.startswith('model.'):  # a model's own check of a field: its message says it all
      raise ConfigError(first[:300]) from e
    raise ConfigError(
      f'model {config.model.name!r} cannot take {config.data.name} images of shape '
      f'{train_split.image_shape}: {type(e).__name__}: {first[:300]}'
    ) from e
  check_classes(config, train_split)
  checkpoint.check_fits(checkpoints, abstract, workdir)
  state_sharding = parallel.state_sharding(mesh, abstract, rules)
  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  if (config.freeze or config.init_from.path) and not task.one_optimizer:
    one = ', '.join(name for name, t in tasks.TASKS.items() if t.one_optimizer)
    raise ConfigError(
      f'freeze and init_from work with the tasks of one optimizer ({one}), '
      f'not task {config.task!r}; leave them unset'
    )
  if config.freeze:
    transfer.check_freeze(config, abstract.params)
  transfer_info = None
  if config.init_from.path:
    transfer.check_source(config)
  state = jax.jit(init, out_shardings=state_sharding)(rng)
  if config.init_from.path:
    params, batch_stats, transfer_info = transfer.load_pretrained(
      config, state.params, getattr(state, 'batch_stats', {})
    )
    state = state.replace(
      params=params,
      opt_state=state.tx.init(params),
      **({'batch_stats': batch_stats} if hasattr(state, 'batch_stats') else {}),
    )
    state = jax.device_put(state, state_sharding)
  pmap = config.parallel == 'pmap'
  options = parallel.compiler_options(config)  # the pmap path compiles with XLA's defaults
  if pmap:
    train_step = parallel.pmap_step(task.train_step, mesh.devices.size)
  else:
    train_step = parallel.jit_train_step(task.train_step, state_sharding, mesh, options)
  jit_eval = lambda fn: jax.jit(
    fn,
    in_shardings=(state_sharding, batch_sharding),
    out_shardings=replicated,
    compiler_options=options,
  )
  eval_step = jit_eval(task.eval_step)
  final_eval_step = eval_step if task.final_eval_step is None else jit_eval(task.final_eval_step)
  generative = None
  if task.sample is not None and config.eval.fd_samples:
    generative = generative_lib.GenerativeMetrics(
      config,
      task.sample,
      train_split,
      eval_split,
      sharding=batch_sharding,
      shards=shards,
      compiler_options=options,
    )
  return Experiment(
    config,
    workdir,
    mesh,
    task,
    train_split,
    eval_split,
    state,
    train_step,
    eval_step,
    final_eval_step,
    batch_sharding,
    eval_batch_size,
    generative,
    transfer_info,
    pmap,
  )


def run_eval(exp: Experiment, state, final: bool = False, interrupted=lambda: False) -> dict:
  """The eval metrics of `state`: sums over the eval split divided by its size, and the
  generative metrics.

  Args:
    exp: the Experiment.
    state: the state, unplaced (as checkpoints hold it).
    final: use the task's final_eval_step (the last step, and --mode eval).
    interrupted: () -> bool, asked between batches (a stop signal).

  Returns:
    {'eval/<metric>': float}.

  Raises:
    EvalInterrupted: `interrupted()` turned true; the loop saves instead.
  """
  step_fn = exp.final_eval_step if final else exp.eval_step
  sums, in_flight = None, parallel.DispatchBound()
  for batch in exp.eval_batches():
    if interrupted():
      raise EvalInterrupted()
    out = step_fn(state, parallel.to_global(batch, exp.batch_sharding))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    in_flight.add(sums)
  sums = jax.device_get(sums)
  count = sums.pop('count')
  metrics = {f'eval/{k}': float(v) / float(count) for k, v in sums.items()}
  if exp.generative is not None:
    generative = exp.generative(state, interrupted)
    if generative is None:
      raise EvalInterrupted()
    metrics.update(generative)
  return metrics


def write_samples(exp: Experiment, state, step: int, writer) -> None:
  """The task's image grids (if it makes any) as PNGs in WORKDIR/samples and to TensorBoard.

  Args:
    exp: the Experiment.
    state: the state, unplaced.
    step: the step the grids are named after.
    writer: the run's `writers.MetricWriter`.
  """
  if exp.task.sample_images is None:
    return
  first = next(iter(exp.eval_batches()))
  images = jax.device_get(exp.task.sample_images(state, exp.config, first))
  if jax.process_index() == 0:
    writers.write_pngs(os.path.join(exp.workdir, 'samples'), step, images)
    writer.write_images(step, images)


def run_info(exp: Experiment) -> dict:
  """What run.json records about a run before it starts.

  Args:
    exp: the Experiment.

  Returns:
    {'config', 'workdir', 'git_commit', 'versions', 'devices', 'host', 'data', 'num_params',
    'init_from', 'feature_networks' (of FD/KID/FID, or None)}.
  """
  return {
    'config': exp.config.to_dict(),
    'workdir': exp.workdir,
    'git_commit': git_commit(),
    'versions': versions(),
    'devices': {
      'count': jax.device_count(),
      'processes': jax.process_count(),
      'platform': jax.devices()[0].platform,
      'kind': jax.devices()[0].device_kind,
      'mesh': dict(exp.mesh.shape),
    },
    'host': host(),
    'data': {'train': exp.train_split.fingerprint, 'eval': exp.eval_split.fingerprint},
    'num_params': sum(int(x.size) for x in jax.tree_util.tree_leaves(exp.state.params)),
    'init_from': exp.transfer,
    'feature_networks': exp.generative.provenance() if exp.generative is not None else None,
  }


def restore_latest(exp: Experiment):
  """The workdir's latest readable checkpoint, without changing the workdir.

  Args:
    exp: the Experiment of the workdir (its state is the restore target).

  Returns:
    (step, state).

  Raises:
    WorkdirError: there is no checkpoint.
  """
  ckpt = checkpoint.Checkpointer(exp.checkpoints, exp.config.train.keep_ckpts, read_only=True)
  try:
    step, state = ckpt.restore(exp.state)
  finally:
    ckpt.close()
  if step is None:
    raise WorkdirError(
      f'no checkpoint in {exp.checkpoints}; train first (same command with --mode train)'
    )
  return step, state
