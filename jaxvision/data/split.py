"""`Split`: one split of a dataset as the pipeline reads it, by index."""

import dataclasses
from collections.abc import Callable


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset, readable by index.

  Attributes:
    name: the dataset (data.name).
    split: the split's name, e.g. 'train' or 'train[:90%]'.
    size: examples in the split.
    image_shape: the shape of one example's input (for tokens: (max_len,)).
    num_classes: label values (after data.clusters: the clusters).
    fingerprint: the identity of the data read, recorded in run.json and checked on resume.
    read: int64[k] indices -> {input_key: [k, ...], 'label': [k]} numpy arrays.
    input_key: the model's input: 'image' (uint8 pixels) or 'tokens' (int32 ids).
    augment: (image, np.random.Generator) -> uint8[*image_shape]: the random augmentation that
      the input pipeline applies to each image it reads (data.augment=inception_crop's train
      split; `read` then gives the images as stored: encoded bytes or arrays of any size), or
      None.
  """

  name: str
  split: str
  size: int
  image_shape: tuple[int, ...]
  num_classes: int
  fingerprint: str
  read: Callable  # int64[k] indices -> dict of numpy arrays with leading dim k
  input_key: str = 'image'  # the model's input: 'image' (uint8 pixels) or 'tokens' (int32 ids)
  augment: Callable | None = None  # (image, np.random.Generator) -> uint8 image, on the host
