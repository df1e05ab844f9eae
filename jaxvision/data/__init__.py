"""Datasets (TFDS builders, incl. the offline `mnist10k`) and the input pipeline."""

from jaxvision.data import mnist10k  # noqa: F401  (importing registers the mnist10k TFDS builder)
