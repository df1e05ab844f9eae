"""Every path a user gives: --workdir, init_from.path, data.synthetic.path, data.tfds_dir,
eval.fid_stats, eval.inception_weights. Each may be relative, `~/...` or a URL such as
gs://bucket/run; it is resolved once (`resolve`), then read and written through etils.epath,
whose fsspec backend serves gs:// through gcsfs (TensorFlow's gfile where TensorFlow is
installed). Orbax writes checkpoints through TensorStore, which reads gs:// itself.

This module imports nothing of jaxvision, so every layer may use it.
"""

import os

from etils import epath


def resolve(path) -> str:
  """A path as every later step uses it: `~` expanded, a local path made absolute (Orbax needs
  absolute paths; symlinks are kept as written), a URL (gs://, s3://) left as it is but for a
  trailing '/'.

  Args:
    path: the path as typed (str or os.PathLike).

  Returns:
    The resolved path; '' stays '' (an optional path left unset).
  """
  path = os.fspath(path)
  if not path:
    return path
  if is_remote(path):
    return path.rstrip('/')
  return os.path.abspath(os.path.expanduser(path))


def is_remote(path) -> bool:
  """Whether `path` is a URL (gs://...) rather than a local path.

  Args:
    path: a path (str or os.PathLike).

  Returns:
    True for a URL.
  """
  return '://' in os.fspath(path)


def makedirs(path) -> None:
  """Creates the directory `path` and its parents (none missing: nothing). A URL's is not
  created: an object store has no directories (an object's name holds its whole path), and
  gcsfs would create a missing *bucket*; a run must not make one behind the user's back, so a
  deleted or mistyped bucket fails at the first write instead.

  Args:
    path: a directory (str or os.PathLike).
  """
  if not is_remote(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)
