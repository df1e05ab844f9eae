"""Where a run writes: metrics.jsonl, TensorBoard event files, run.json, PNG grids.

Only process 0 writes; the others get a writer that does nothing.
"""

import io
import json
import os
import time

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from jaxvision.errors import WorkdirError


class MetricWriter:
  """Scalars to WORKDIR/metrics.jsonl (one JSON object per event) and TensorBoard.

  TensorBoard events go through `tensorboard`'s own event-file writer and summary protos (not
  tensorboardX, whose import pulls in PyTorch wherever it is installed: seconds per run)."""

  def __init__(self, workdir: str, enabled: bool = True):
    """Opens WORKDIR/metrics.jsonl for appending and a TensorBoard event file.

    Args:
      workdir: the run directory (created if missing).
      enabled: False: write nothing (processes other than 0).
    """
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      # open for the writer's life, closed by close()
      self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')  # noqa: SIM115
      self._tb = EventFileWriter(workdir, flush_secs=30)

  def write(self, step: int, scalars: dict) -> None:
    """Appends one event {'step': step, **scalars} and the TensorBoard scalars.

    Args:
      step: the step.
      scalars: {name: number}, converted to float.
    """
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({'step': int(step), **scalars}) + '\n')
    self._jsonl.flush()
    self._add(step, [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()])

  def write_images(self, step: int, images: dict) -> None:
    """Writes image grids as PNG image summaries.

    Args:
      step: the step.
      images: name -> uint8[H, W, C] grid, C 1 or 3.

    Raises:
      ValueError: a grid is not uint8 [H, W, 1 or 3].
    """
    if not self.enabled:
      return
    values = []
    for k, v in images.items():
      v = _check_grid(k, v)
      image = summary_pb2.Summary.Image(
        height=v.shape[0], width=v.shape[1], colorspace=v.shape[2], encoded_image_string=_png(v)
      )
      values.append(summary_pb2.Summary.Value(tag=k, image=image))
    self._add(step, values)

  def _add(self, step: int, values: list) -> None:
    self._tb.add_event(
      event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary_pb2.Summary(value=values)
      )
    )

  def close(self) -> None:
    """Flushes and closes both files."""
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


def _events(path: str) -> list[tuple[dict | None, str]]:
  """(event, line) of every line of a metrics.jsonl; event None for a line that is not a whole
  JSON object (the last line of a run killed while writing it)."""
  out = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      if not line.strip():
        continue
      try:
        event = json.loads(line)
      except ValueError:
        event = None
      out.append((event if isinstance(event, dict) and 'step' in event else None, line))
  return out


def truncate_metrics(workdir: str, after_step: int) -> None:
  """Drops metrics.jsonl events past `after_step` (written by an interrupted run
  after its last checkpoint), so a resumed run's file reads as one run. A line cut short by a
  killed run is dropped too; every other line is kept as it was.

  Args:
    workdir: the run directory.
    after_step: the step the run resumes from (0 for a new run).
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return
  events = _events(path)
  lines = [
    line if line.endswith('\n') else line + '\n'
    for event, line in events
    if event is not None and event['step'] <= after_step
  ]
  if len(lines) == len(events) and all(kept == line for kept, (_, line) in zip(lines, events)):
    return  # nothing to drop: the file is left untouched
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(lines)
  os.replace(tmp, path)


def has_eval(workdir: str, step: int) -> bool:
  """Whether metrics.jsonl holds eval metrics of `step`.

  Args:
    workdir: the run directory.
    step: the step.

  Returns:
    True if an event of `step` has an 'eval/' key.
  """
  path = os.path.join(workdir, 'metrics.jsonl')
  return os.path.exists(path) and any(
    event is not None and event['step'] == step and any(k.startswith('eval/') for k in event)
    for event, _ in _events(path)
  )


def _check_grid(name: str, grid) -> np.ndarray:
  """The grid as numpy; ValueError unless it is uint8 [H, W, 1 or 3]."""
  grid = np.asarray(grid)
  if grid.dtype != np.uint8 or grid.ndim != 3 or grid.shape[-1] not in (1, 3):
    raise ValueError(
      f'image grid {name!r} must be uint8 [H, W, 1 or 3], got {grid.dtype} {grid.shape}'
    )
  return grid


def _pil(grid: np.ndarray):
  return Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)


def _png(grid: np.ndarray) -> bytes:
  out = io.BytesIO()
  _pil(grid).save(out, format='PNG')
  return out.getvalue()


def write_pngs(directory: str, step: int, images: dict) -> None:
  """Writes image grids as PNG files.

  Args:
    directory: where they go (created if missing).
    step: the step, in the file names.
    images: name -> uint8[H, W, C] grid, written as DIRECTORY/<name>_step_<step>.png.

  Raises:
    ValueError: a grid is not uint8 [H, W, 1 or 3].
  """
  os.makedirs(directory, exist_ok=True)
  for name, grid in images.items():
    _pil(_check_grid(name, grid)).save(os.path.join(directory, f'{name}_step_{int(step)}.png'))


def read_json(path: str) -> dict | None:
  """The JSON object in `path`, or None if there is no such file.

  Args:
    path: a JSON file (run.json).

  Returns:
    The parsed object, or None.

  Raises:
    WorkdirError: the file is not valid JSON.
  """
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise WorkdirError(
        f'{path} is not valid JSON ({e}); move it away or use another --workdir'
      ) from e


def write_json(path: str, obj: dict) -> None:
  """Writes `obj` to `path` atomically (a temporary file, then a rename).

  Args:
    path: the file.
    obj: a dict; values JSON cannot hold are written as strings.
  """
  tmp = path + '.tmp'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)
