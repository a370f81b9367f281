"""Max pooling with a faster CPU path for the 3x3 / stride-2 / padding-1 window (ResNet stem).

aten's CPU max_pool2d kernel for contiguous NCHW input is scalar and also computes the argmax
indices: on the stem of a ResNet (64 x 160 x 160) it costs ~12 ms on one core, the same maxima
as elementwise maxima of strided views ~1.9 ms. The window is separable: a row pass
(max of rows 2i-1, 2i, 2i+1) and then a column pass. No padding is needed: every window of
this shape holds at least one input element, and max_pool2d never picks a padded position.

Same values as F.max_pool2d (NaN propagates in both, at the same positions); the one
difference is the sign of a zero when a window's maximum is a tie of +0.0 and -0.0 (the
strided maxima do not keep max_pool2d's first-in-window rule for ties; a convolution after
it gives the same values). Used only for inference: torch.maximum's backward splits the
gradient of ties between the tied inputs while max_pool2d's sends it to one, so calls that need
a gradient keep F.max_pool2d, as do channels-last inputs (aten's channels-last kernel is
already fast), other devices, tracing and compiling, and `cpu_kernels=False` (the option of
`MaxPool2d` and `max_pool2d_3x3s2`: aten's kernel, the one CUDA runs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.utils.eager import eager_mode

# aten runs an elementwise op on one thread below this many elements (at::internal::GRAIN_SIZE)
_PARALLEL_GRAIN = 32768
# With 2..this many threads the strided maxima run a few planes at a time on one thread: the
# whole-tensor ops are 4 OpenMP regions, and on a machine whose cores are busy each region
# waits for a descheduled worker (2 threads, load ~3 on 2 cores, 64 x 160 x 160: 25-32 ms
# whole-tensor, 2.5-2.8 ms in chunks, 1.9 ms on 1 thread, aten's max_pool2d 12-16 ms).
# Above it, and for planes too large for one grain (64 x 400 x 608, from 800 x 1216 images:
# 36-55 ms whole on 2 threads, aten's 93-120 ms), the ops run whole and in parallel (more
# threads not measured: no such machine here).
_MAX_INLINE_THREADS = 4


def _every_other(x: Tensor, dim: int, start: int, count: int) -> Tensor:
    """`count` slices of `x` along `dim` at start, start + 2, ... (a view)."""
    index = [slice(None)] * x.dim()
    index[dim] = slice(start, start + 2 * count - 1, 2)
    return x[tuple(index)]


def _max3_stride2(x: Tensor, dim: int, out: Tensor | None = None) -> Tensor:
    """out[i] = max(x[2i - 1], x[2i], x[2i + 1]) along `dim`, leaving out indices outside x."""
    n = x.shape[dim]
    m, below = (n + 1) // 2, n // 2  # outputs; outputs with an index 2i + 1 inside x
    centre = _every_other(x, dim, 0, m)
    out = torch.empty_like(centre) if out is None else out
    if below:
        torch.maximum(centre.narrow(dim, 0, below), _every_other(x, dim, 1, below), out=out.narrow(dim, 0, below))
    if below < m:  # odd n: the last window is x[n - 2], x[n - 1] (its x[n - 2] is added below)
        out.narrow(dim, below, m - below).copy_(centre.narrow(dim, below, m - below))
    if m > 1:
        tail = out.narrow(dim, 1, m - 1)
        torch.maximum(_every_other(x, dim, 1, m - 1), tail, out=tail)
    return out


def strided_max_pool_3x3s2(x: Tensor) -> Tensor:
    """max_pool2d(x, 3, stride=2, padding=1) as maxima of strided views, on any device and
    layout (no fallback: see :func:`max_pool2d_3x3s2` for when this is the faster path)."""
    if x.dim() < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(f"strided_max_pool_3x3s2 needs non-empty (..., H, W) input, got shape {tuple(x.shape)}")
    return _max3_stride2(_max3_stride2(x, x.dim() - 2), x.dim() - 1)


def _strided_max_pool_in_chunks(x: Tensor) -> Tensor:
    """strided_max_pool_3x3s2 of contiguous input, a few planes at a time: every op stays below
    aten's parallel grain and runs on the calling thread (no OpenMP regions to wait on)."""
    height, width = x.shape[-2:]
    planes = x.reshape(-1, height, width)
    out = planes.new_empty(planes.shape[0], (height + 1) // 2, (width + 1) // 2)
    step = max(1, _PARALLEL_GRAIN // (out.shape[1] * width))  # the row pass's output is the largest
    for start in range(0, planes.shape[0], step):
        rows = _max3_stride2(planes[start : start + step], 1)
        _max3_stride2(rows, 2, out=out[start : start + step])
    return out.view(*x.shape[:-2], *out.shape[1:])


def max_pool2d_3x3s2(x: Tensor, *, cpu_kernels: bool = True) -> Tensor:
    """F.max_pool2d(x, 3, stride=2, padding=1); with `cpu_kernels`, on contiguous CPU float input
    that needs no gradient, computed as strided maxima, several times faster (the one place that
    picks the kernel)."""
    if (
        eager_mode()
        and x.device.type == "cpu"
        and x.is_floating_point()
        and x.dim() in (3, 4)
        and x.numel() > 0
        and x.is_contiguous()
        and not (x.requires_grad and torch.is_grad_enabled())
        and cpu_kernels
    ):
        plane_work = (x.shape[-2] + 1) // 2 * x.shape[-1]  # elements of one plane's row pass
        if 1 < torch.get_num_threads() <= _MAX_INLINE_THREADS and plane_work <= _PARALLEL_GRAIN:
            return _strided_max_pool_in_chunks(x)
        return strided_max_pool_3x3s2(x)
    return F.max_pool2d(x, 3, stride=2, padding=1)


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d (same arguments, no parameters, same state_dict) that runs
    :func:`max_pool2d_3x3s2` for kernel 3, stride 2, padding 1, dilation 1, floor mode.

    `cpu_kernels` (read at each call) is passed to :func:`max_pool2d_3x3s2`: False keeps aten's
    kernel on the CPU too.
    """

    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        return_indices: bool = False,
        ceil_mode: bool = False,
        *,
        cpu_kernels: bool = True,
    ):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        self.cpu_kernels = cpu_kernels

    def forward(self, x: Tensor) -> Tensor:
        if (
            not self.return_indices
            and not self.ceil_mode
            and _pair(self.kernel_size) == (3, 3)
            and _pair(self.stride) == (2, 2)
            and _pair(self.padding) == (1, 1)
            and _pair(self.dilation) == (1, 1)
        ):
            return max_pool2d_3x3s2(x, cpu_kernels=self.cpu_kernels)
        return super().forward(x)


def _pair(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)
