"""The one loop: `train_and_evaluate(config, workdir)` and `evaluate(config, workdir)`.

Restore-or-init, then jitted steps with the batch sharded over the mesh and
the state donated; log every `train.log_every`, evaluate every
`train.eval_every` and at the end, checkpoint every `train.ckpt_every`, at
the end and on SIGTERM. The loop knows nothing about which task or model it
runs: it calls `task.init/train_step/eval_step` from the task registry, and
two optional hooks when the task has them: `task.final_eval_step` replaces
`eval_step` at the last step and in eval mode (expensive metrics, e.g. IWAE),
and `task.sample_images(state, config, first_eval_batch)` returns uint8 grids
that every eval writes to WORKDIR/samples/<name>_step_<N>.png and TensorBoard.
"""
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from jaxvision import checkpoint, models, parallel, tasks, transfer, writers
from jaxvision import config as config_lib
from jaxvision.data import pipeline

# Keys that may change between a run and its resumption without changing the result.
RESUMABLE_KEYS = ('allow_config_change', 'train.progress', 'data.read_threads', 'data.tfds_dir',
                  'train.log_every', 'train.eval_every', 'sample.n', 'debug_nans',
                  'explain.n', 'explain.steps',
                  'mesh.data', 'mesh.fsdp', 'mesh.model', 'parallel')  # a checkpoint restores onto any mesh
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-datasets', 'grain',
            'chex', 'ml-collections', 'numpy')


class Preempted(Exception):
  """Raised after SIGTERM once the checkpoint of the current step is saved."""


class Diverged(FloatingPointError):
  """A train metric became NaN or Inf; no checkpoint of the diverged state was written."""


def check_finite(history: list, first_step: int) -> None:
  """Raises Diverged naming the first step and metric of `history` (metrics of consecutive
  steps from `first_step`) that is not finite."""
  for i, metrics in enumerate(jax.device_get(history)):
    for name, value in sorted(metrics.items()):
      if not np.all(np.isfinite(value)):
        raise Diverged(f'train/{name}={float(np.asarray(value).ravel()[0])} at step {first_step + i}: '
                       f'training diverged; the checkpoints saved before it are untouched '
                       f'(lower optim.lr, set optim.grad_clip, or pass --config.debug_nans=True to find the op)')


class WorkdirError(ValueError):
  """The workdir holds something this run must not touch; one line with the fix."""


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
  generative: object = None  # evaluate.generative.GenerativeMetrics when eval.fd_samples > 0
  transfer: dict | None = None  # what init_from loaded (recorded in run.json)
  pmap: bool = False  # config.parallel == 'pmap': train_step takes the state `place`d

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


def _flat(config) -> dict:
  out = {}
  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f'{prefix}{k}.')
      else:
        out[f'{prefix}{k}'] = v
  walk(config.to_dict() if hasattr(config, 'to_dict') else config, '')
  return out


def _jsonable(tree):
  return json.loads(json.dumps(tree, default=str))


def check_workdir_config(config, workdir: str) -> None:
  """Refuses to resume a workdir written by a different config."""
  info = writers.read_json(os.path.join(workdir, 'run.json'))
  if info is None or config.allow_config_change:
    return
  old, new = _flat(info['config']), _flat(_jsonable(config.to_dict()))
  # A key the old run did not have yet (a newer jaxvision) matches when it holds the value the old
  # run used without naming it: base()'s, or for model.X the model's own default for field X.
  default = {**_flat(_jsonable(config_lib.base().to_dict())),
             **_flat({'model': _jsonable(models.defaults(info['config'].get('model', {}).get('name')))})}
  for k in set(new) - set(old):
    if k in default:
      old[k] = default[k]
  differ = sorted(k for k in set(old) | set(new)
                  if k not in RESUMABLE_KEYS and old.get(k, '<unset>') != new.get(k, '<unset>'))
  if differ:
    shown = ', '.join(f'{k}: {old.get(k, "<unset>")!r} -> {new.get(k, "<unset>")!r}' for k in differ[:6])
    raise WorkdirError(f'{workdir} holds a run of another config ({shown}); use a new --workdir '
                       f'or pass --config.allow_config_change=True')


def check_workdir_data(config, workdir: str, fingerprints: dict) -> None:
  """Refuses to resume a workdir trained on other data: another dataset version or subset, other
  cluster ids (data.clusters; e.g. another machine's BLAS moved a border image). The run would go
  on, but not as the run it resumes."""
  info = writers.read_json(os.path.join(workdir, 'run.json'))
  if info is None or config.allow_config_change or 'data' not in info:
    return
  for split in ('train', 'eval'):
    old, new = info['data'].get(split), fingerprints[split]
    if old is not None and old != new:
      raise WorkdirError(f'{workdir} was trained on other {split} data ({old} -> {new}); use a new '
                         f'--workdir or pass --config.allow_config_change=True')


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


def params_sha256(params) -> str:
  """Bitwise fingerprint of a params PyTree (names, dtypes, shapes and bytes)."""
  h = hashlib.sha256()
  if not all(getattr(x, 'is_fully_addressable', True) for x in jax.tree_util.tree_leaves(params)):
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    params = multihost_utils.process_allgather(params, tiled=True)  # collective: every process calls
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]:
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def setup(config, workdir: str) -> Experiment:
  """Everything before the first step; every check that can fail runs here, before compute."""
  config_lib.validate(config)
  check_workdir_config(config, workdir)
  jax.config.update('jax_debug_nans', bool(config.debug_nans))
  mesh = parallel.make_mesh(config.mesh)
  shards = parallel.batch_size_per_shard(mesh)
  for key in ('batch_size', 'eval_batch_size'):
    size = config.data[key]
    if size % shards:
      raise config_lib.ConfigError(f'data.{key}={size} must be divisible by the {shards} batch shards '
                                   f'of the mesh; pick a multiple of {shards}')
  task = tasks.get(config.task)
  train_split = pipeline.load_split(config.data, config.data.train_split)
  eval_split = pipeline.load_split(config.data, config.data.eval_split)
  if hasattr(task, 'validate_data'):
    task.validate_data(config, train_split)
  check_workdir_data(config, workdir, {'train': train_split.fingerprint,
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
    raise config_lib.ConfigError(
        f'model {config.model.name!r} cannot take {config.data.name} images of shape '
        f'{train_split.image_shape}: {type(e).__name__}: {first[:300]}') from e
  state_sharding = parallel.state_sharding(mesh, abstract)
  batch_sharding = parallel.batch_sharding(mesh)
  replicated = parallel.replicated(mesh)
  if config.freeze:
    transfer.check_freeze(config, abstract.params)
  state = jax.jit(init, out_shardings=state_sharding)(rng)
  transfer_info = None
  if config.init_from.path:
    if not hasattr(state, 'tx'):
      raise config_lib.ConfigError(f'init_from works with single-optimizer tasks (classification, vae), '
                                   f'not task {config.task!r}')
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
                    eval_step, batch_sharding, final_eval_step, generative, transfer_info, pmap)


def run_eval(exp: Experiment, state, final: bool = False) -> dict:
  step_fn = exp.final_eval_step if final else exp.eval_step
  sums = None
  for batch in pipeline.eval_batches(exp.config, exp.eval_split):
    out = step_fn(state, parallel.to_global(batch, exp.batch_sharding))
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  count = sums.pop('count')
  metrics = {f'eval/{k}': float(v) / float(count) for k, v in sums.items()}
  if exp.generative is not None:
    metrics.update(exp.generative(state))
  return metrics


def write_samples(exp: Experiment, state, step: int, writer) -> None:
  """The task's image grids (if it makes any) as PNGs in WORKDIR/samples and to TensorBoard."""
  if not hasattr(exp.task, 'sample_images'):
    return
  first = next(iter(pipeline.eval_batches(exp.config, exp.eval_split)))
  images = jax.device_get(exp.task.sample_images(state, exp.config, first))
  if jax.process_index() == 0:
    writers.write_pngs(os.path.join(exp.workdir, 'samples'), step, images)
    writer.write_images(step, images)


def _run_info(exp: Experiment) -> dict:
  return {'config': exp.config.to_dict(), 'git_commit': _git_commit(), 'versions': _versions(),
          'devices': {'count': jax.device_count(), 'processes': jax.process_count(),
                      'platform': jax.devices()[0].platform, 'kind': jax.devices()[0].device_kind,
                      'mesh': dict(exp.mesh.shape)},
          'data': {'train': exp.train_split.fingerprint, 'eval': exp.eval_split.fingerprint},
          'num_params': sum(int(x.size) for x in jax.tree_util.tree_leaves(exp.state.params)),
          'init_from': exp.transfer}


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop checks between steps."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no preemption handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (resuming from the workdir's latest checkpoint) and returns the final eval metrics."""
  exp = setup(config, workdir)
  is_main = jax.process_index() == 0
  cfg = exp.config.train
  data_iter = iter(pipeline.train_dataset(exp.config, exp.train_split))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, 'checkpoints'), cfg.keep_ckpts)
  start, state = ckpt.restore(exp.state, data_iter)
  start, state = start or 0, exp.place(state)
  run_json = os.path.join(workdir, 'run.json')
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    writers.truncate_metrics(workdir, start)
    writers.write_json(run_json, {**_run_info(exp), 'resumed_from_step': start})
  writer = writers.MetricWriter(workdir, enabled=is_main)
  if start and is_main:
    print(f'resuming {workdir} from step {start}', file=sys.stderr)

  batch_images = exp.config.data.batch_size
  history, metrics, final = [], {}, {}
  bar = tqdm.tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and is_main),
                  dynamic_ncols=True, mininterval=1.0, desc='train')
  t_last, step_last = None, start
  try:
    with _SigtermFlag() as sigterm:
      for step in range(start + 1, cfg.steps + 1):
        state, metrics = exp.train_step(state, exp.train_batch(next(data_iter)))
        history.append(metrics)
        if t_last is None:  # first step: compilation
          jax.block_until_ready(metrics)
          t_last, step_last = time.perf_counter(), step
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
          check_finite(history, step - len(history) + 1)
          scalars = {f'train/{k}': float(v) for k, v in
                     jax.tree.map(lambda *x: np.mean(x), *jax.device_get(history)).items()}
          now = time.perf_counter()
          if step > step_last:
            scalars['perf/images_per_sec'] = (step - step_last) * batch_images / (now - t_last)
          t_last, step_last, history = now, step, []
          writer.write(step, scalars)
          bar.set_postfix(loss=f'{scalars["train/loss"]:.4f}',
                          ips=f'{scalars.get("perf/images_per_sec", 0):.0f}')
        saving = step % cfg.ckpt_every == 0 or step == cfg.steps or sigterm.raised
        evaluating = step % cfg.eval_every == 0 or step == cfg.steps
        current = exp.unplace(state) if saving or evaluating else None  # once per step (pmap: a copy)
        if saving:
          check_finite(history, step - len(history) + 1)  # never checkpoint a diverged state
          ckpt.save(step, current, data_iter)  # before the eval: a failing eval loses no training
        if evaluating:
          final = run_eval(exp, current, final=step == cfg.steps)
          writer.write(step, final)
          write_samples(exp, current, step, writer)
          bar.write(f'step {step}: ' + ', '.join(f'{k}={v:.4f}' for k, v in final.items()))
          t_last = time.perf_counter()  # eval time is not training throughput
        if sigterm.raised and step < cfg.steps:
          ckpt.wait()
          raise Preempted(f'SIGTERM at step {step}: checkpoint saved in {workdir}; '
                          f'run the same command again to resume')
    ckpt.wait()
  finally:
    bar.close()
    writer.close()
    ckpt.close()

  state = exp.unplace(state)
  if start >= cfg.steps:  # nothing left to train: report the restored state
    final = run_eval(exp, state, final=True)
  sha = params_sha256(state.params)
  if is_main:
    writers.write_json(run_json, {**writers.read_json(run_json),
                                  'final_step': int(jax.device_get(state.step)),
                                  'final_params_sha256': sha,
                                  'final_metrics': final})
  return final


def restore_latest(exp: Experiment):
  """(step, state) of the workdir's latest readable checkpoint; WorkdirError if there is none."""
  ckpt = checkpoint.Checkpointer(os.path.join(exp.workdir, 'checkpoints'), exp.config.train.keep_ckpts)
  try:
    step, state = ckpt.restore(exp.state)
  finally:
    ckpt.close()
  if step is None:
    raise WorkdirError(f'no checkpoint in {exp.workdir}/checkpoints; train first with --mode train')
  return step, state


def evaluate(config, workdir: str) -> dict:
  """Evaluates the latest checkpoint of `workdir`; prints and records the metrics."""
  exp = setup(config, workdir)
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
    raise config_lib.ConfigError(f'task {config.task!r} does not generate images; --mode sample is '
                                 f'for the generative tasks ({", ".join(k for k, t in tasks.TASKS.items() if hasattr(t, "sample"))})')
  if config.sample.n <= 0:
    raise config_lib.ConfigError(f'sample.n={config.sample.n} must be > 0')
  exp = setup(config, workdir)
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
    os.makedirs(out, exist_ok=True)
    from PIL import Image  # pylint: disable=g-import-not-at-top
    for i, image in enumerate(images):
      Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(os.path.join(out, f'{i:05d}.png'))
    # a self-conditioned GAN's cluster ids are no class labels: saved apart, so CAS and
    # data.synthetic (which need 'labels') cannot take them for classes
    tag = 'clusters' if config.data.clusters else 'labels'
    np.savez(out + '.npz', images=images, **({} if labels is None else {tag: labels}))
  return {'step': step, 'samples': n, 'written': out}

