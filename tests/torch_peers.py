"""The PyTorch peers of the parity tests (the bench extra): torchvision, timm and pytorch-fid.

The package index serves torchvision built against CUDA torch; beside the CPU torch of the
bench extra its C ops cannot load, and its import then fails registering a fake kernel for
`torchvision::nms`. The models need none of those ops, so their two schemas are declared first.
"""

import contextlib
import importlib.util

import pytest

torch = pytest.importorskip('torch')


def import_torchvision():
  """torchvision (and the packages that import it: timm, pytorch_fid), or the test is skipped."""
  if importlib.util.find_spec('torchvision') is None:
    pytest.skip('torchvision is not installed (the bench extra)')
  for name in ('nms', 'qnms'):
    # declared already (torchvision's own ops loaded, or an earlier call): RuntimeError
    with contextlib.suppress(RuntimeError):
      torch.library.define(
        f'torchvision::{name}', '(Tensor dets, Tensor scores, float iou_threshold) -> Tensor'
      )
  import torchvision

  return torchvision
