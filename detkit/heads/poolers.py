"""RoI feature extraction from one or several feature levels.

Shape shorthand: R RoIs (packed over the batch), C channels, S x S output resolution.
RoIs are Tensor[R, 4] XYXY in input-image pixels with a separate `batch_idx` Tensor[R].
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops import roi_pool

# Below this many output values (RoIs x channels x bins), splitting a CPU RoIAlign over
# threads costs more than it saves.
_MIN_PARALLEL_WORK = 1 << 19
_pool_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, workers, executor)


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide executor with `workers` threads, re-made after fork or a size change."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != workers:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            _pool = (os.getpid(), workers, ThreadPoolExecutor(workers, thread_name_prefix="detkit-roi-align"))
        return _pool[2]


def _split_channels(x: Tensor, parts: int) -> list[Tensor]:
    return [c.contiguous() for c in x.tensor_split(parts, dim=1)]


class _ChannelParallelRoIAlign(torch.autograd.Function):
    """torchvision's CPU RoIAlign run on channel slices in threads, forward and backward.

    The CPU kernels of `torchvision.ops.roi_align` use one core; RoIAlign treats every channel
    alone, so slicing the channels gives the same numbers bit for bit, `parts` x as fast at best.
    """

    @staticmethod
    def forward(ctx, x, rois, spatial_scale, output_size, sampling_ratio, aligned, parts):
        ctx.save_for_backward(rois)
        ctx.args = (x.shape, spatial_scale, output_size, sampling_ratio, aligned, parts)
        op = torch.ops.torchvision.roi_align

        def run(chunk):
            return op(chunk, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned)

        return torch.cat(list(_thread_pool(parts).map(run, _split_channels(x, parts))), dim=1)

    @staticmethod
    def backward(ctx, grad_out):
        (rois,) = ctx.saved_tensors
        shape, spatial_scale, output_size, sampling_ratio, aligned, parts = ctx.args
        op = torch.ops.torchvision._roi_align_backward
        batch, _, height, width = shape

        def run(chunk):
            return op(
                chunk, rois, spatial_scale, output_size[0], output_size[1],
                batch, chunk.shape[1], height, width, sampling_ratio, aligned,
            )  # fmt: skip

        grad_x = torch.cat(list(_thread_pool(parts).map(run, _split_channels(grad_out, parts))), dim=1)
        return grad_x, None, None, None, None, None, None


def roi_align(
    x: Tensor,
    rois: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """`torchvision.ops.roi_align` with `rois` Tensor[R, 5] (batch index, x1, y1, x2, y2).

    Same results; on the CPU, large float32/float64 calls run on `torch.get_num_threads()`
    threads (the torchvision CPU kernel alone uses one core, and its backward is a large
    share of a CPU training step). Otherwise (GPU, small calls, autocast) it is
    torchvision's op.
    """
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    parts = min(torch.get_num_threads(), x.shape[1]) if x.dim() == 4 else 1
    if (
        x.device.type != "cpu"
        or x.dtype not in (torch.float32, torch.float64)
        or torch.is_autocast_enabled("cpu")
        or parts < 2
        or rois.dim() != 2
        or rois.shape[1] != 5
        or rois.shape[0] * x.shape[1] * size[0] * size[1] < _MIN_PARALLEL_WORK
        or torch.jit.is_scripting()
        or torch.compiler.is_compiling()
    ):
        return tv_roi_align(x, rois, size, spatial_scale, sampling_ratio, aligned)
    rois = rois.to(x.dtype)  # what torchvision's wrapper does
    args = (float(spatial_scale), size, int(sampling_ratio), bool(aligned), parts)
    return _ChannelParallelRoIAlign.apply(x, rois, *args)


def assign_fpn_levels(
    boxes: Tensor, k_min: int, k_max: int, *, canonical_scale: float = 224.0, canonical_level: int = 4
) -> Tensor:
    """FPN paper eq. (1): level = floor(k0 + log2(sqrt(area) / 224)), clamped; returns 0-based Tensor[R]."""
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).float()
    level = torch.floor(canonical_level + torch.log2(area.sqrt() / canonical_scale) + 1e-6)
    return (level.clamp(k_min, k_max) - k_min).to(torch.int64)


class RoIPooler(nn.Module):
    """RoIAlign (default) or RoIPool over the named feature maps.

    With several features (FPN), each RoI is pooled from the level its size maps to; the
    features must have power-of-two strides.
    """

    def __init__(
        self,
        in_features: Sequence[str],
        strides: Sequence[int],
        *,
        output_size: int = 7,
        sampling_ratio: int = 2,
        pool_type: str = "align",
        aligned: bool = False,
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
    ):
        super().__init__()
        if pool_type not in ("align", "pool"):
            raise ValueError(f"pool_type must be 'align' or 'pool', got {pool_type!r}")
        if len(in_features) != len(strides) or not in_features:
            raise ValueError("in_features and strides must be non-empty and of equal length")
        self.in_features, self.strides = list(in_features), list(strides)
        self.output_size, self.sampling_ratio = output_size, sampling_ratio
        self.pool_type, self.aligned = pool_type, aligned
        levels = [math.log2(s) for s in strides]
        if len(strides) > 1 and any(abs(lv - round(lv)) > 1e-6 for lv in levels):
            raise ValueError(f"multi-level pooling needs power-of-two strides, got {strides}")
        self.k_min, self.k_max = int(round(levels[0])), int(round(levels[-1]))
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def _pool(self, x: Tensor, rois: Tensor, stride: int) -> Tensor:
        size = (self.output_size, self.output_size)
        if self.pool_type == "pool":
            return roi_pool(x, rois, size, spatial_scale=1.0 / stride)
        return roi_align(
            x, rois, size, spatial_scale=1.0 / stride, sampling_ratio=self.sampling_ratio, aligned=self.aligned
        )

    def forward(self, features: dict[str, Tensor], boxes: Tensor, batch_idx: Tensor) -> Tensor:
        """boxes Tensor[R, 4], batch_idx Tensor[R] -> pooled Tensor[R, C, S, S]."""
        feats = [features[name] for name in self.in_features]
        rois = torch.cat([batch_idx[:, None].to(boxes.dtype), boxes], dim=1)
        if len(feats) == 1:
            return self._pool(feats[0], rois.to(feats[0].dtype), self.strides[0])
        levels = assign_fpn_levels(
            boxes, self.k_min, self.k_max, canonical_scale=self.canonical_scale, canonical_level=self.canonical_level
        )
        first = feats[0]
        out = first.new_zeros((rois.shape[0], first.shape[1], self.output_size, self.output_size))
        for level, (x, stride) in enumerate(zip(feats, self.strides)):
            idx = torch.nonzero(levels == level).squeeze(1)
            if idx.numel():
                out[idx] = self._pool(x, rois[idx].to(x.dtype), stride).to(out.dtype)
        return out
