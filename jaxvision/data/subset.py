"""Class and label-count subsets of a split, for transfer learning and scarce-data experiments.

  data.classes = (5, 6, 7, 8, 9)   keep only these labels (train and eval splits); () = all
  data.per_class = 50              train split only: the FIRST 50 examples of each kept class, in
                                   file order (so the subset is fixed, not a function of the seed)

Labels are not renumbered: a 10-way head still reads digit 7 as class 7.
"""

import dataclasses

import numpy as np

from jaxvision.errors import DataError


def select(split, data_config, is_train: bool):
  """The `Split` restricted to data.classes (and data.per_class on the train split).

  Args:
    split: the split to restrict.
    data_config: config.data (classes, per_class).
    is_train: `split` is the train split, where data.per_class applies.

  Returns:
    The split itself when neither key is set, else the subset, its fingerprint tagged with it.

  Raises:
    DataError: a class outside the split's labels, a class with fewer than data.per_class
      examples, or a selection that is empty.
  """
  classes = tuple(int(c) for c in data_config.classes)
  per_class = int(data_config.per_class) if is_train else 0
  if not classes and not per_class:
    return split
  bad = [c for c in classes if not 0 <= c < split.num_classes]
  if bad:
    raise DataError(
      f'data.classes has {bad}, outside the {split.num_classes} classes of {split.name}'
    )
  labels = np.asarray(split.read(np.arange(split.size))['label'])
  keep = np.isin(labels, classes) if classes else np.ones(split.size, bool)
  index = np.flatnonzero(keep)
  if per_class:
    first = [index[labels[index] == c][:per_class] for c in np.unique(labels[index])]
    short = [int(labels[f[0]]) for f in first if len(f) < per_class]
    if short:
      raise DataError(
        f'data.per_class={per_class}: classes {short} of {split.name} have fewer examples'
      )
    index = np.sort(np.concatenate(first))
  if not len(index):
    raise DataError(f'data.classes={classes} selects no example of {split.name}/{split.split}')
  read = split.read
  tag = f'classes={",".join(map(str, classes)) or "all"}' + (
    f',per_class={per_class}' if per_class else ''
  )
  return dataclasses.replace(
    split,
    size=len(index),
    read=lambda idx: read(index[np.asarray(idx)]),
    fingerprint=f'{split.fingerprint}[{tag}]',
  )
