"""The one loop: `train_and_evaluate(config, workdir)`.

Restore-or-init, then jitted steps with the batch sharded over the mesh and
the state donated; log every `train.log_every`, evaluate every
`train.eval_every` and at the end, checkpoint every `train.ckpt_every`, at
the end and when a stop signal arrives (SIGTERM, Ctrl-C: the step it arrives
in is saved, whatever the loop was doing, and the run ends with
`errors.Preempted`). The loop knows nothing about which task or model it
runs: it calls the `Task` of `experiment.setup`, whose optional hooks are the
final eval (`final_eval_step`) and the sample grids (`sample_images`).
"""

import os
import sys
import time

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from jaxvision import checkpoint, experiment, parallel, preemption, writers
from jaxvision import workdir as workdir_lib
from jaxvision.data import pipeline
from jaxvision.errors import Diverged


def check_finite(history: list, first_step: int) -> None:
  """Checks that every train metric since the last check is finite.

  Args:
    history: the metrics dicts of consecutive steps, on device or host.
    first_step: the step of history[0].

  Raises:
    Diverged: naming the first step and metric of `history` that is NaN or Inf.
  """
  for i, metrics in enumerate(jax.device_get(history)):
    for name, value in sorted(metrics.items()):
      if not np.all(np.isfinite(value)):
        raise Diverged(
          f'train/{name}={float(np.asarray(value).ravel()[0])} at step {first_step + i}: '
          f'training diverged; the checkpoints saved before it are untouched '
          f'(lower optim.lr, set optim.grad_clip, or pass --config.debug_nans=True to find the op)'
        )


def _is_eval_step(config, step: int) -> bool:
  """Every train.eval_every steps, and the last."""
  return step % config.train.eval_every == 0 or step == config.train.steps


def _eval_missing(exp: experiment.Experiment, step: int) -> bool:
  """Whether the eval of `step` (an eval step) is not in metrics.jsonl: the run that saved the
  step was stopped during that eval. Process 0 reads the file; every process gets its answer."""
  missing = np.asarray(jax.process_index() == 0 and not writers.has_eval(exp.workdir, step))
  if jax.process_count() > 1:
    missing = multihost_utils.broadcast_one_to_all(missing)
  return bool(missing)


class _Loop:
  """The state of one `train_and_evaluate` call: what it writes, and its stop request."""

  def __init__(
    self, exp: experiment.Experiment, ckpt: checkpoint.Checkpointer, stop, data_iter, writer, bar
  ):
    self.exp, self.ckpt, self.stop, self.data_iter = exp, ckpt, stop, data_iter
    self.writer, self.bar = writer, bar

  def evaluate(self, state, step: int) -> dict | None:
    """Evaluates, logs and writes the grids of `step`; None if a stop signal cut the eval short."""
    exp = self.exp
    try:
      final = experiment.run_eval(
        exp, state, final=step == exp.config.train.steps, interrupted=lambda: self.stop.local
      )
    except experiment.EvalInterrupted:
      return None
    self.writer.write(step, final)
    if not self.stop.local:
      experiment.write_samples(exp, state, step, self.writer)
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
    in_flight = parallel.DispatchBound()
    for step in range(start + 1, cfg.steps + 1):
      state, metrics = exp.train_step(state, exp.train_batch(next(self.data_iter)))
      history.append(metrics)
      in_flight.add(metrics)
      if t_last is None:  # first step: compilation
        jax.block_until_ready(metrics)
        t_last, step_last = time.perf_counter(), step
      self.bar.update(1)
      if step % cfg.log_every == 0 or step == cfg.steps:
        check_finite(history, step - len(history) + 1)
        scalars = {
          f'train/{k}': float(v)
          for k, v in jax.tree.map(lambda *x: np.mean(x), *jax.device_get(history)).items()
        }
        now = time.perf_counter()
        if step > step_last:
          scalars['perf/images_per_sec'] = (
            (step - step_last) * exp.config.data.batch_size / (now - t_last)
          )
        t_last, step_last, history = now, step, []
        self.writer.write(step, scalars)
        self.bar.set_postfix(
          loss=f'{scalars["train/loss"]:.4f}', ips=f'{scalars.get("perf/images_per_sec", 0):.0f}'
        )
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
    """Checkpoints `step` (with the data position) unless a metric since the last log diverged."""
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
    exp = experiment.setup(config, workdir)
    is_main = jax.process_index() == 0
    cfg = exp.config.train
    data_iter = iter(pipeline.train_dataset(exp.config, exp.train_split))
    if jax.process_count() > 1:  # no process writes before every process has checked the workdir
      multihost_utils.sync_global_devices('jaxvision: setup checks passed')
    workdir_lib.create(workdir)  # every check passed: from here on the workdir is written
    ckpt = checkpoint.Checkpointer(
      exp.checkpoints, cfg.keep_ckpts, async_save=cfg.async_checkpoints
    )
    writer = bar = None
    try:
      start, state = ckpt.restore(exp.state, data_iter, move_unreadable=True)
      start = start or 0
      run_json = os.path.join(workdir, 'run.json')
      if is_main:
        writers.truncate_metrics(workdir, start)
        writers.write_json(run_json, {**experiment.run_info(exp), 'resumed_from_step': start})
        if start:
          print(f'resuming {workdir} from step {start}', file=sys.stderr)
      writer = writers.MetricWriter(workdir, enabled=is_main)
      bar = tqdm.tqdm(
        total=cfg.steps,
        initial=start,
        disable=not (cfg.progress and is_main),
        dynamic_ncols=True,
        mininterval=1.0,
        desc='train',
      )
      state, final = _Loop(exp, ckpt, stop, data_iter, writer, bar).run(state, start)
    finally:
      for closable in (bar, writer, ckpt, data_iter):  # data_iter: ends data.workers' processes
        if closable is not None:
          closable.close()
    if start >= cfg.steps and not final:  # nothing left to train: report the restored state
      final = experiment.run_eval(exp, state, final=True)
    sha = checkpoint.params_sha256(state.params)
    if is_main:
      writers.write_json(
        run_json,
        {
          **writers.read_json(run_json),
          'final_step': int(jax.device_get(state.step)),
          'final_params_sha256': sha,
          'final_metrics': final,
        },
      )
    if stop.local:  # the signal came after the last save: that checkpoint is the run's end
      raise stop.error(cfg.steps, workdir)
    return final
