"""The one loop: `train_and_evaluate(config, workdir)`, `evaluate`, `sample`.

Restore-or-init, then jitted steps with the batch sharded over the mesh and
the state donated; log every `train.log_every`, evaluate every
`train.eval_every` and at the end, checkpoint every `train.ckpt_every`, at
the end and when a stop signal arrives (SIGTERM, Ctrl-C: the step it arrives
in is saved, whatever the loop was doing, and the run ends with
`errors.Preempted`). The loop knows nothing about which task or model it
runs: it calls `task.init/train_step/eval_step` from the task registry, and
two optional hooks when the task has them: `task.final_eval_step` replaces
`eval_step` at the last step and in eval mode (expensive metrics, e.g. IWAE),
and `task.sample_images(state, config, first_eval_batch)` returns uint8 grids
that every eval writes to WORKDIR/samples/<name>_step_<N>.png and TensorBoard.

Every check that can refuse a run (config values, the workdir's config, data
and checkpoints, the mesh, the data) runs in `setup`, before any compute and
before anything is written.
"""
import dataclasses
import importlib.metadata
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from jaxvision import checkpoint, parallel, preemption, tasks, transfer, writers
from jaxvision import config as config_lib
from jaxvision import workdir as workdir_lib
from jaxvision.data import pipeline
from jaxvision.errors import ConfigError, Diverged, WorkdirError

PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-datasets', 'grain',
            'chex', 'ml-collections', 'numpy')


def check_finite(history: list, first_step: int) -> None:
  """Raises Diverged naming the first step and metric of `history` (metrics of consecutive
  steps from `first_step`) that is not finite."""
  for i, metrics in enumerate(jax.device_get(history)):
    for name, value in sorted(metrics.items()):
      if not np.all(np.isfinite(value)):
        raise Diverged(f'train/{name}={float(np.asarray(value).ravel()[0])} at step {first_step + i}: '
                       f'training diverged; the checkpoints saved before it are untouched '
                       f'(lower optim.lr, set optim.grad_clip, or pass --config.debug_nans=True to find the op)')


class _EvalInterrupted(Exception):
  """A stop signal arrived during an eval: the eval is dropped, the step is saved."""


@dataclasses.dataclass
class Experiment:
  config: ml_collections.ConfigDict
  workdir: str
  mesh: jax.sharding.Mesh
  task: object
  train_split: pipeline.Split
  eval_split: pipeline.Split
  state: object
  train_step: object
  eval_step: object
  batch_sharding: object
  final_eval_step: object  # eval_step, or the task's final_eval_step
  eval_batch_size: int  # data.eval_batch_size rounded up to the mesh's batch shards (rows masked)
  generative: object = None  # evaluate.generative.GenerativeMetrics when eval.fd_samples > 0
  transfer: dict | None = None  # what init_from loaded (recorded in run.json)
  pmap: bool = False  # config.parallel == 'pmap': train_step takes the state `place`d

  @property
  def checkpoints(self) -> str:
    return os.path.join(self.workdir, 'checkpoints')

  def place(self, state):
    """The state as `train_step` takes it (under pmap: one copy per device)."""
    return parallel.replicate(state, self.mesh) if self.pmap else state

  def unplace(self, state):
    """The inverse of `place`: the state as checkpoints, evals and samples take it."""
    return parallel.unreplicate(state, self.mesh) if self.pmap else state

  def train_batch(self, local_batch: dict) -> dict:
    """This process's rows of a batch as `train_step` takes them."""
    if self.pmap:
      n = jax.local_device_count()
      return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), local_batch)
    return parallel.to_global(local_batch, self.batch_sharding)

  def eval_batches(self):
    return pipeline.eval_batches(self.config, self.eval_split, self.eval_batch_size)


def _git_commit() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(['git', '-C', here, 'rev-parse', 'HEAD'], capture_output=True, text=True,
                         timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(['git', '-C', here, 'status', '--porcelain', '--untracked-files=no'],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return out + ('-dirty' if dirty else '')
  except (OSError, subprocess.SubprocessError):
    return None


def _versions() -> dict:
  out = {'python': sys.version.split()[0]}
  for p in PACKAGES:
    try:
      out[p] = importlib.metadata.version(p)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


params_sha256 = checkpoint.params_sha256


def check_classes(config, train_split) -> None:
  """ConfigError unless the model has a class for every label the data holds: a classifier's
  head needs at least that many logits (labels are not renumbered, so data.classes=(0, ..., 4)
  needs 5 and (5, ..., 9) needs 10); a conditional generator's label embedding exactly the
  data's classes (or clusters), since samples draw a class uniformly."""
  classes = config.model.get('num_classes')
  if classes is None or (config.task != 'classification' and not classes):
    return  # no head, or an unconditional generator
  if config.task == 'classification':
    needed = max(config.data.classes) + 1 if config.data.classes else train_split.num_classes
    if classes < needed:
      raise ConfigError(f'model.num_classes={classes} but the labels of {train_split.name} go up to '
                        f'{needed - 1}; set --config.model.num_classes={needed}')
  elif classes != train_split.num_classes:
    clusters = f' (data.clusters={config.data.clusters})' if config.data.clusters else ''
    raise ConfigError(f'model.num_classes={classes} but {train_split.name} has '
                      f'{train_split.num_classes} classes{clusters}; set --config.model.num_classes='
                      f'{train_split.num_classes}, or 0 for an unconditional model')


def setup(config, workdir: str, restoring: bool = False) -> Experiment:
  """Everything before the first step. Every check that can refuse the run is here, before any
  compute and before anything is written to `workdir`.

  Args:
    config: the experiment config (validated here).
    workdir: the resolved run directory (see `workdir.resolve`).
    restoring: the mode reads a checkpoint (eval, sample, explain): refuse at once if there is none.

  Returns:
    The Experiment: mesh, task, splits, the initial state and the jitted steps.
  """
  config_lib.validate(config)
  workdir_lib.check_usable(workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  if restoring and not checkpoint.steps_in(checkpoints):
    raise WorkdirError(f'no checkpoint in {checkpoints}; train first (same command with --mode train)')
  mesh = parallel.make_mesh(config.mesh)
  shards = parallel.batch_size_per_shard(mesh)
  if config.data.batch_size % shards:
    raise ConfigError(f'data.batch_size={config.data.batch_size} must be divisible by the {shards} '
                      f'batch shards of the mesh; pick a multiple of {shards}')
  workdir_lib.check_config(config, workdir)
  jax.config.update('jax_debug_nans', bool(config.debug_nans))
  eval_batch_size = -(-config.data.eval_batch_size // shards) * shards  # padded rows are masked
  task = tasks.get(config.task)
  train_split = pipeline.load_split(config.data, config.data.train_split)
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  if hasattr(task, 'validate_data'):
    task.validate_data(config, train_split)
  workdir_lib.check_data(config, workdir, {'train': train_split.fingerprint,
                                           'eval': eval_split.fingerprint})

  dtype = jnp.int32 if train_split.input_key == 'tokens' else jnp.float32
  sample = {train_split.input_key: jnp.zeros((1, *train_split.image_shape), dtype),
            'label': jnp.zeros((1,), jnp.int32)}
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
        f'{train_split.image_shape}: {type(e).__name__}: {first[:300]}') from e
  check_classes(config, train_split)
  checkpoint.check_fits(checkpoints, abstract, workdir)
  state_sharding = parallel.state_sharding(mesh, abstract)
  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  if config.freeze:
    transfer.check_freeze(config, abstract.params)
  transfer_info = None
  if config.init_from.path:
    if not hasattr(abstract, 'tx'):
      raise ConfigError(f'init_from works with single-optimizer tasks (classification, vae), '
                        f'not task {config.task!r}')
    transfer.check_source(config)
  state = jax.jit(init, out_shardings=state_sharding)(rng)
  if config.init_from.path:
    params, batch_stats, transfer_info = transfer.load_pretrained(
        config, state.params, getattr(state, 'batch_stats', {}))
    state = state.replace(params=params, opt_state=state.tx.init(params),
                          **({'batch_stats': batch_stats} if hasattr(state, 'batch_stats') else {}))
    state = jax.device_put(state, state_sharding)
  pmap = config.parallel == 'pmap'
  options = parallel.compiler_options(config)  # the pmap path compiles with XLA's defaults
  if pmap:
    train_step = parallel.pmap_step(task.train_step, mesh.devices.size)
  else:
    train_step = parallel.jit_train_step(task.train_step, state_sharding, mesh, options)
  eval_step = jax.jit(task.eval_step, in_shardings=(state_sharding, batch_sharding),
                      out_shardings=replicated, compiler_options=options)
  final_eval_step = eval_step
  if hasattr(task, 'final_eval_step'):
    final_eval_step = jax.jit(task.final_eval_step, in_shardings=(state_sharding, batch_sharding),
                              out_shardings=replicated, compiler_options=options)
  generative = None
  if config.eval.fd_samples and hasattr(task, 'sample'):
    from jaxvision.evaluate import generative as generative_lib  # pylint: disable=g-import-not-at-top
    generative = generative_lib.GenerativeMetrics(config, task, train_split, eval_split)
  return Experiment(config, workdir, mesh, task, train_split, eval_split, state, train_step,
                    eval_step, batch_sharding, final_eval_step, eval_batch_size, generative,
                    transfer_info, pmap)


def run_eval(exp: Experiment, state, final: bool = False, interrupted=lambda: False) -> dict:
  """The eval metrics of `state`: sums over the eval split divided by its size, and the
  generative metrics. `interrupted()` is asked between batches; when it is true the eval stops
  with _EvalInterrupted (a stop signal: the loop saves instead)."""
  step_fn = exp.final_eval_step if final else exp.eval_step
  sums = None
  for batch in exp.eval_batches():
    if interrupted():
      raise _EvalInterrupted()
    out = step_fn(state, parallel.to_global(batch, exp.batch_sharding))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  count = sums.pop('count')
  metrics = {f'eval/{k}': float(v) / float(count) for k, v in sums.items()}
  if exp.generative is not None:
    generative = exp.generative(state, interrupted)
    if generative is None:
      raise _EvalInterrupted()
    metrics.update(generative)
  return metrics


def write_samples(exp: Experiment, state, step: int, writer) -> None:
  """The task's image grids (if it makes any) as PNGs in WORKDIR/samples and to TensorBoard."""
  if not hasattr(exp.task, 'sample_images'):
    return
  first = next(iter(exp.eval_batches()))
  images = jax.device_get(exp.task.sample_images(state, exp.config, first))
  if jax.process_index() == 0:
    writers.write_pngs(os.path.join(exp.workdir, 'samples'), step, images)
    writer.write_images(step, images)


def _run_info(exp: Experiment) -> dict:
  return {'config': exp.config.to_dict(), 'workdir': exp.workdir, 'git_commit': _git_commit(),
          'versions': _versions(),
          'devices': {'count': jax.device_count(), 'processes': jax.process_count(),
                      'platform': jax.devices()[0].platform, 'kind': jax.devices()[0].device_kind,
                      'mesh': dict(exp.mesh.shape)},
          'data': {'train': exp.train_split.fingerprint, 'eval': exp.eval_split.fingerprint},
          'num_params': sum(int(x.size) for x in jax.tree_util.tree_leaves(exp.state.params)),
          'init_from': exp.transfer}


def _is_eval_step(config, step: int) -> bool:
  return step % config.train.eval_every == 0 or step == config.train.steps


def _eval_missing(exp: Experiment, step: int) -> bool:
  """Whether the eval of `step` (an eval step) is not in metrics.jsonl: the run that saved the
  step was stopped during that eval. Process 0 reads the file; every process gets its answer."""
  missing = np.asarray(jax.process_index() == 0 and not writers.has_eval(exp.workdir, step))
  if jax.process_count() > 1:
    missing = multihost_utils.broadcast_one_to_all(missing)
  return bool(missing)


class _Loop:
  """The state of one `train_and_evaluate` call: what it writes, and its stop request."""

  def __init__(self, exp: Experiment, ckpt: checkpoint.Checkpointer, stop, data_iter, writer, bar):
    self.exp, self.ckpt, self.stop, self.data_iter = exp, ckpt, stop, data_iter
    self.writer, self.bar = writer, bar

  def evaluate(self, state, step: int) -> dict | None:
    """Evaluates, logs and writes the grids of `step`; None if a stop signal cut the eval short."""
    exp = self.exp
    try:
      final = run_eval(exp, state, final=step == exp.config.train.steps,
                       interrupted=lambda: self.stop.local)
    except _EvalInterrupted:
      return None
    self.writer.write(step, final)
    if not self.stop.local:
      write_samples(exp, state, step, self.writer)
    self.bar.write(f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in final.items()))
    return final

  def run(self, state, start: int) -> tuple[object, dict]:
    """Trains from step `start` + 1 to train.steps; returns (state, final eval metrics)."""
    exp, cfg, stop = self.exp, self.exp.config.train, self.stop
    if stop.local:  # a signal during setup: nothing trained since the restored step
      raise stop.error(start, exp.workdir, saved=bool(start))
    final = {}
    if start and _is_eval_step(exp.config, start) and _eval_missing(exp, start):
      final = self.evaluate(exp.unplace(state), start)  # the stopped run's eval of this step
      if final is None:
        raise stop.error(start, exp.workdir)
    state = exp.place(state)
    history, t_last, step_last = [], None, start
    for step in range(start + 1, cfg.steps + 1):
      state, metrics = exp.train_step(state, exp.train_batch(next(self.data_iter)))
      history.append(metrics)
      if t_last is None:  # first step: compilation
        jax.block_until_ready(metrics)
        t_last, step_last = time.perf_counter(), step
      self.bar.update(1)
      if step % cfg.log_every == 0 or step == cfg.steps:
        check_finite(history, step - len(history) + 1)
        scalars = {f'train/{k}': float(v) for k, v in
                   jax.tree.map(lambda *x: np.mean(x), *jax.device_get(history)).items()}
        now = time.perf_counter()
        if step > step_last:
          scalars['perf/images_per_sec'] = (step - step_last) * exp.config.data.batch_size / (now - t_last)
        t_last, step_last, history = now, step, []
        self.writer.write(step, scalars)
        self.bar.set_postfix(loss=f'{scalars["train/loss"]:.4f}',
                             ips=f'{scalars.get("perf/images_per_sec", 0):.0f}')
      stopping = stop.at_step(step)  # every process, every step: the same answer everywhere
      saved, current = False, None
      if step % cfg.ckpt_every == 0 or step == cfg.steps or stopping:
        current = exp.unplace(state)
        self.save(step, current, history)  # before the eval: a failing eval loses no training
        saved = True
      if _is_eval_step(exp.config, step) and not stopping:
        current = exp.unplace(state) if current is None else current
        final = self.evaluate(current, step) or {}
        t_last = time.perf_counter()  # eval time is not training throughput
      if stop.local and not saved:  # the signal came during this step's eval or grids
        self.save(step, exp.unplace(state) if current is None else current, history)
        saved = True
      if stop.local or stopping:
        self.ckpt.wait()
        raise stop.error(step, exp.workdir)
    self.ckpt.wait()
    return exp.unplace(state), final

  def save(self, step: int, state, history) -> None:
    check_finite(history, step - len(history) + 1)  # never checkpoint a diverged state
    self.ckpt.save(step, state, self.data_iter)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains, resuming from the workdir's latest checkpoint, and evaluates.

  Args:
    config: the experiment config.
    workdir: the resolved run directory (see `workdir.resolve`).

  Returns:
    The final eval metrics.

  Raises:
    errors.Preempted: a stop signal arrived; the step it arrived in is saved.
    errors.BadInput, errors.Diverged, errors.SaveError: see `jaxvision.errors`.
  """
  with preemption.StopRequest() as stop:
    exp = setup(config, workdir)
    is_main = jax.process_index() == 0
    cfg = exp.config.train
    data_iter = iter(pipeline.train_dataset(exp.config, exp.train_split))
    if jax.process_count() > 1:  # no process writes before every process has checked the workdir
      multihost_utils.sync_global_devices('jaxvision: setup checks passed')
    workdir_lib.create(workdir)  # every check passed: from here on the workdir is written
    ckpt = checkpoint.Checkpointer(exp.checkpoints, cfg.keep_ckpts)
    writer = bar = None
    try:
      start, state = ckpt.restore(exp.state, data_iter, move_unreadable=True)
      start = start or 0
      run_json = os.path.join(workdir, 'run.json')
      if is_main:
        writers.truncate_metrics(workdir, start)
        writers.write_json(run_json, {**_run_info(exp), 'resumed_from_step': start})
        if start:
          print(f'resuming {workdir} from step {start}', file=sys.stderr)
      writer = writers.MetricWriter(workdir, enabled=is_main)
      bar = tqdm.tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and is_main),
                      dynamic_ncols=True, mininterval=1.0, desc='train')
      state, final = _Loop(exp, ckpt, stop, data_iter, writer, bar).run(state, start)
    finally:
      for closable in (bar, writer, ckpt):
        if closable is not None:
          closable.close()
    if start >= cfg.steps and not final:  # nothing left to train: report the restored state
      final = run_eval(exp, state, final=True)
    sha = params_sha256(state.params)
    if is_main:
      writers.write_json(run_json, {**writers.read_json(run_json),
                                    'final_step': int(jax.device_get(state.step)),
                                    'final_params_sha256': sha,
                                    'final_metrics': final})
    if stop.local:  # the signal came after the last save: that checkpoint is the run's end
      raise stop.error(cfg.steps, workdir)
    return final


def restore_latest(exp: Experiment):
  """(step, state) of the workdir's latest readable checkpoint, without changing the workdir."""
  ckpt = checkpoint.Checkpointer(exp.checkpoints, exp.config.train.keep_ckpts, read_only=True)
  try:
    step, state = ckpt.restore(exp.state)
  finally:
    ckpt.close()
  if step is None:
    raise WorkdirError(f'no checkpoint in {exp.checkpoints}; train first (same command with --mode train)')
  return step, state


def evaluate(config, workdir: str) -> dict:
  """`--mode eval`: evaluates the latest checkpoint of `workdir`; records and returns the metrics."""
  exp = setup(config, workdir, restoring=True)
  step, state = restore_latest(exp)
  metrics = run_eval(exp, state, final=True)
  if jax.process_index() == 0:
    writer = writers.MetricWriter(workdir)
    writer.write(step, metrics)
    writer.close()
  return {'step': step, **metrics}


def sample(config, workdir: str) -> dict:
  """`--mode sample`: config.sample.n images from the latest checkpoint's generator, written to
  WORKDIR/samples/step_<N>/<i>.png and WORKDIR/samples/step_<N>.npz (uint8 images, labels; a
  self-conditioned GAN's cluster ids as `clusters`)."""
  task = tasks.get(config.task)
  if not hasattr(task, 'sample'):
    generators = ', '.join(k for k, t in tasks.TASKS.items() if hasattr(t, 'sample'))
    raise ConfigError(f'task {config.task!r} does not generate images; --mode sample is for the '
                      f'generative tasks ({generators})')
  exp = setup(config, workdir, restoring=True)
  step, state = restore_latest(exp)
  n, chunk = int(config.sample.n), 500
  num_classes = getattr(state.model, 'num_classes', 0) if getattr(state.model, 'conditional', True) else 0
  labels = np.arange(n) % num_classes if num_classes else None
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), step)
  fn = jax.jit(task.sample, static_argnums=2)
  images = np.concatenate([
      np.asarray(fn(state, jax.random.fold_in(key, i), min(chunk, n - start),
                    None if labels is None else jnp.asarray(labels[start:start + chunk])))
      for i, start in enumerate(range(0, n, chunk))])
  from jaxvision.evaluate import grids  # pylint: disable=g-import-not-at-top
  images = grids.to_uint8(images)
  out = os.path.join(workdir, 'samples', f'step_{step}')
  if jax.process_index() == 0:
    for moved in workdir_lib.set_aside(out, out + '.npz'):
      print(f'moved the earlier samples to {moved}', file=sys.stderr)
    os.makedirs(out, exist_ok=True)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for i, image in enumerate(images):
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(os.path.join(out, f'{i:05d}.png'))
    # a self-conditioned GAN's cluster ids are no class labels: saved apart, so CAS and
    # data.synthetic (which need 'labels') cannot take them for classes
    tag = 'clusters' if config.data.clusters else 'labels'
    np.savez(out + '.npz', images=images, **({} if labels is None else {tag: labels}))
  return {'step': step, 'samples': n, 'written': out}
