"""The kernel options of a built model, set in one call.

Two choices change which kernels run, and with them the float rounding (never the algorithm):

- `fold_bn` (`ConvNormAct.fold_bn`): a fixed batch norm (frozen, or BatchNorm in eval mode)
  after a convolution runs folded into it, one convolution instead of conv + norm, where no
  gradient is needed for their parameters (`detkit.layers.fold`). False keeps conv and norm as
  two ops, torchvision's arithmetic.
- `cpu_kernels` (`MaxPool2d`, `RoIPooler`, `DetectionTransform`, `RPN` and `RCNN.cpu_kernels`): on the CPU,
  the stem's 3x3 / stride-2 max pool as strided maxima (`detkit.layers.pool`), RoIAlign with a
  threaded forward and a matrix-product backward (`detkit.heads.roi_align_cpu`) and
  channels-last batches for `memory_format="auto"` (`detkit.models.transform`), and the RPN's NMS
  as one `batched_nms` over every (image, level) group (a loop over the groups on the CPU). False
  runs on the CPU the same kernels and layout as on CUDA (aten's max pool, torchvision's RoIAlign,
  NCHW, one NMS per image with the levels offset apart: `detkit.proposals.rpn`).
  Other devices always run those.

The defaults (both True) are the fast CPU kernels; their results equal the plain ops' up to float
rounding (the pool and the RoIAlign forward bit for bit, the RoIAlign gradient up to summation
order, folding and channels-last up to ~1e-4 in detection scores).
"""

from __future__ import annotations

from torch import nn

__all__ = ["configure_kernels"]


def configure_kernels(model: nn.Module, *, fold_bn: bool = True, cpu_kernels: bool = True) -> nn.Module:
    """Set `fold_bn` and `cpu_kernels` (see the module docstring) on every module of `model`
    that has the attribute (a module of another package joins by defining it), and return `model`.
    The options are read at each call: they can be changed between calls, and
    `configure_kernels(model)` restores the defaults."""
    for module in model.modules():
        if hasattr(module, "fold_bn"):
            module.fold_bn = fold_bn
        if hasattr(module, "cpu_kernels"):
            module.cpu_kernels = cpu_kernels
    return model
