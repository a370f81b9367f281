"""RoI feature extraction from one or several feature levels.

Shape shorthand: R RoIs (packed over the batch), C channels, S x S output resolution.
RoIs are Tensor[R, 4] XYXY in input-image pixels with a separate `batch_idx` Tensor[R].
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from detkit.heads.roi_align_cpu import roi_align, roi_pool
from detkit.structures.packed import count_values

__all__ = ["RoIPooler", "assign_fpn_levels"]


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

    `cpu_kernels` (read at each call): RoIAlign on the CPU runs detkit's threaded forward and
    matrix-product backward (`detkit.heads.roi_align_cpu.roi_align`: the forward bit-identical,
    the gradient equal up to float summation order); False runs torchvision's kernels, as on CUDA.
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
        cpu_kernels: bool = True,
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
        self.cpu_kernels = cpu_kernels

    def _pool(self, x: Tensor, rois: Tensor, stride: int) -> Tensor:
        size = (self.output_size, self.output_size)
        if self.pool_type == "pool":
            return roi_pool(x, rois, size, spatial_scale=1.0 / stride)
        return roi_align(
            x,
            rois,
            size,
            spatial_scale=1.0 / stride,
            sampling_ratio=self.sampling_ratio,
            aligned=self.aligned,
            cpu_kernels=self.cpu_kernels,
        )

    def forward(self, features: dict[str, Tensor], boxes: Tensor, batch_idx: Tensor) -> Tensor:
        """boxes Tensor[R, 4], batch_idx Tensor[R] -> pooled Tensor[R, C, S, S] in the features' dtype.

        RoIs stay in float32 (float64 boxes stay float64) even for 16-bit features or under
        autocast: `roi_align` / `roi_pool` compute in float32 there, as torchvision's autocast
        path does.
        """
        feats = [features[name] for name in self.in_features]
        if boxes.dtype != torch.float64:
            boxes = boxes.float()
        rois = torch.cat([batch_idx[:, None].to(boxes.dtype), boxes], dim=1)
        if len(feats) == 1:
            return self._pool(feats[0], rois, self.strides[0])
        levels = assign_fpn_levels(
            boxes, self.k_min, self.k_max, canonical_scale=self.canonical_scale, canonical_level=self.canonical_level
        )
        first = feats[0]
        out = first.new_zeros((rois.shape[0], first.shape[1], self.output_size, self.output_size))
        order = torch.argsort(levels, stable=True)
        rois_per_level = count_values(levels, len(feats)).tolist()  # one host sync for all levels
        for x, stride, idx in zip(feats, self.strides, order.split(rois_per_level)):
            if idx.numel():
                out[idx] = self._pool(x, rois[idx], stride).to(out.dtype)
        return out
