"""Where a run writes: metrics.jsonl, TensorBoard event files, run.json, PNG grids.

Every file goes through etils.epath, so a workdir may be local or remote (gs://...). Object
stores cannot append (gcsfs opens mode 'a' as 'w', replacing the object), so a file that grows
(metrics.jsonl, error.log; the TensorBoard events, see `MetricWriter`) is uploaded whole for a
remote workdir at each write; an upload replaces the object atomically, so a killed run leaves
the last written version, never half a file. Local files are appended to as before.

Only process 0 writes; the others get a writer that does nothing.
"""

import contextlib
import io
import json
import os
import shutil
import tempfile
import time

import numpy as np
from etils import epath
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from jaxvision import paths
from jaxvision.errors import SaveError, WorkdirError


@contextlib.contextmanager
def _writing(path):
  """An OSError while writing `path` (a full disk, a gs:// bucket deleted or not writable: gcsfs
  raises FileNotFoundError / PermissionError) becomes a one-line SaveError (exit 4)."""
  try:
    yield
  except OSError as e:
    raise SaveError(
      f'could not write {os.fspath(path)}: {type(e).__name__}: {e.strerror or e}; free disk '
      f'space or fix the workdir permissions (a gs:// workdir: its bucket must exist and be '
      f'writable), then run the same command again (the checkpoints saved before are intact)'
    ) from e


class AppendFile:
  """A UTF-8 text file that grows by appends, local or remote (see the module's docstring)."""

  def __init__(self, path):
    """Opens `path` for appending (created if missing).

    Args:
      path: the file (str or epath.Path).
    """
    self.path = epath.Path(path)
    self._local = None
    self._content = None
    if paths.is_remote(self.path):
      self._content = self.path.read_text(encoding='utf-8') if self.path.exists() else ''
    else:
      self._local = self.path.open('a')  # UTF-8; open for the file's life, closed by close()

  @property
  def name(self) -> str:
    """The file's path."""
    return os.fspath(self.path)

  def write(self, text: str) -> None:
    """Appends `text` and flushes it to the file (a remote one: uploads the whole file)."""
    with _writing(self.path):
      if self._local is not None:
        self._local.write(text)
        self._local.flush()
      else:
        self._content += text
        self.path.write_text(self._content, encoding='utf-8')

  def close(self) -> None:
    """Closes the file (a remote one is already whole)."""
    if self._local is not None:
      self._local.close()


def append_text(path, text: str) -> None:
  """Appends `text` to the file `path`, local or remote.

  Args:
    path: the file (created if missing).
    text: what to append.
  """
  f = AppendFile(path)
  try:
    f.write(text)
  finally:
    f.close()


class MetricWriter:
  """Scalars to WORKDIR/metrics.jsonl (one JSON object per event) and TensorBoard.

  TensorBoard events go through `tensorboard`'s own event-file writer and summary protos (not
  tensorboardX, whose import pulls in PyTorch wherever it is installed: seconds per run). Without
  TensorFlow that writer reaches gs:// through its fsspec stub, whose appends gcsfs turns into
  overwrites (each flush would replace the file with its last records); so for a remote workdir
  it writes to a local temporary directory and every flush uploads the whole events file to the
  workdir through epath."""

  def __init__(self, workdir: str, enabled: bool = True):
    """Opens WORKDIR/metrics.jsonl for appending and a TensorBoard event file.

    Args:
      workdir: the run directory (created if missing).
      enabled: False: write nothing (processes other than 0).
    """
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    self._workdir = epath.Path(workdir)
    self._tb_local = None  # the local directory of a remote workdir's events
    if enabled:
      paths.makedirs(self._workdir)
      self._jsonl = AppendFile(self._workdir / 'metrics.jsonl')
      if paths.is_remote(workdir):
        self._tb_local = tempfile.mkdtemp(prefix='jaxvision-events-')
        self._tb = EventFileWriter(self._tb_local, flush_secs=30)
        self._upload_events()
      else:
        self._tb = EventFileWriter(os.fspath(workdir), flush_secs=30)

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
    if self._tb_local is not None:
      self._upload_events()

  def _upload_events(self) -> None:
    """A remote workdir: the local events file, flushed, uploaded whole to the workdir."""
    self._tb.flush()
    for name in os.listdir(self._tb_local):
      with open(os.path.join(self._tb_local, name), 'rb') as f, _writing(self._workdir / name):
        (self._workdir / name).write_bytes(f.read())

  def close(self) -> None:
    """Flushes and closes both files."""
    if self.enabled:
      self._jsonl.close()
      self._tb.close()  # a remote workdir's events are uploaded by every _add
      if self._tb_local is not None:
        shutil.rmtree(self._tb_local, ignore_errors=True)


def read_events(path: str) -> list[tuple[dict | None, str]]:
  """(event, line) of every line of a metrics.jsonl; event None for a line that is not a whole
  JSON object (the last line of a run killed while writing it)."""
  out = []
  for line in io.StringIO(epath.Path(path).read_text(encoding='utf-8'), newline=None):
    if not line.strip():
      continue
    try:
      event = json.loads(line)
    except ValueError:
      event = None
    out.append((event if isinstance(event, dict) and 'step' in event else None, line))
  return out


def _replace(path: epath.Path, text: str) -> None:
  """Writes `text` as the whole file `path`, atomically: a local file through a temporary file
  and a rename; a remote object by one upload (which replaces an object whole; a rename there
  would be a copy and a delete)."""
  with _writing(path):
    if paths.is_remote(path):
      path.write_text(text, encoding='utf-8')
      return
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text, encoding='utf-8')
    tmp.replace(path)


def truncate_metrics(workdir: str, after_step: int) -> None:
  """Drops metrics.jsonl events past `after_step` (written by an interrupted run
  after its last checkpoint), so a resumed run's file reads as one run. A line cut short by a
  killed run is dropped too; every other line is kept as it was.

  Args:
    workdir: the run directory.
    after_step: the step the run resumes from (0 for a new run).
  """
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return
  events = read_events(path)
  lines = [
    line if line.endswith('\n') else line + '\n'
    for event, line in events
    if event is not None and event['step'] <= after_step
  ]
  if len(lines) == len(events) and all(kept == line for kept, (_, line) in zip(lines, events)):
    return  # nothing to drop: the file is left untouched
  _replace(path, ''.join(lines))


def has_eval(workdir: str, step: int) -> bool:
  """Whether metrics.jsonl holds eval metrics of `step`.

  Args:
    workdir: the run directory.
    step: the step.

  Returns:
    True if an event of `step` has an 'eval/' key.
  """
  path = epath.Path(workdir) / 'metrics.jsonl'
  return path.exists() and any(
    event is not None and event['step'] == step and any(k.startswith('eval/') for k in event)
    for event, _ in read_events(path)
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
  directory = epath.Path(directory)
  paths.makedirs(directory)
  for name, grid in images.items():
    save_png(directory / f'{name}_step_{int(step)}.png', _check_grid(name, grid))


def save_png(path, image) -> None:
  """Writes one image as a PNG file, local or remote.

  Args:
    path: the file (str or epath.Path).
    image: uint8 [H, W], [H, W, 1] or [H, W, 3], or a PIL image.
  """
  if not isinstance(image, Image.Image):
    image = np.asarray(image)
    image = _pil(image) if image.ndim == 3 else Image.fromarray(image)
  with _writing(path), epath.Path(path).open('wb') as f:  # PIL writes to epath's file object
    image.save(f, format='PNG')


def save_npz(path, **arrays) -> None:
  """Writes arrays as an .npz (np.savez), local or remote.

  Args:
    path: the file (str or epath.Path), named as given (no '.npz' is added).
    **arrays: name -> array.
  """
  with _writing(path), epath.Path(path).open('wb') as f:
    np.savez(f, **arrays)


def load_npz(path) -> dict[str, np.ndarray]:
  """The arrays of an .npz (np.load), local or remote; the counterpart of `save_npz`.

  Args:
    path: the file (str or epath.Path; resolved as every user path is, see `paths.resolve`).

  Returns:
    {name: array}, read whole.

  Raises:
    OSError, ValueError: the file cannot be read or is not an .npz (np.load's errors).
  """
  with epath.Path(paths.resolve(path)).open('rb') as file, np.load(file) as f:
    return {k: np.asarray(f[k]) for k in f.files}


def write_text(path, text: str) -> None:
  """Writes `text` as the whole file `path` (UTF-8), local or remote.

  Args:
    path: the file (str or epath.Path).
    text: its content.
  """
  with _writing(path):
    epath.Path(path).write_text(text, encoding='utf-8')


def read_json(path) -> dict | None:
  """The JSON object in `path`, or None if there is no such file.

  Args:
    path: a JSON file (run.json; str or epath.Path).

  Returns:
    The parsed object, or None.

  Raises:
    WorkdirError: the file is not valid JSON.
  """
  path = epath.Path(path)
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text(encoding='utf-8'))
  except ValueError as e:
    raise WorkdirError(
      f'{path} is not valid JSON ({e}); move it away or use another --workdir'
    ) from e


def write_json(path, obj: dict) -> None:
  """Writes `obj` to `path` atomically (a local file: a temporary file, then a rename; a remote
  one: one upload).

  Args:
    path: the file (str or epath.Path).
    obj: a dict; values JSON cannot hold are written as strings.
  """
  _replace(epath.Path(path), json.dumps(obj, indent=2, sort_keys=True, default=str))
