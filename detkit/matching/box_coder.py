"""Encode boxes as deltas relative to reference boxes (anchors, proposals) and back.

Shape shorthand:
    R    reference boxes (anchors or proposals), packed over the batch
    K    boxes predicted per reference (e.g. one per class)
    ...  any leading dimensions, broadcast between the two arguments

Deltas are (dx, dy, dw, dh) = (wx * (gx - rx) / rw, wy * (gy - ry) / rh,
ww * log(gw / rw), wh * log(gh / rh)) with centres (x, y) and sizes w = x2 - x1 (no +1),
the R-CNN parametrisation used by torchvision. All math runs in float32, also under autocast,
or in float64 when an input is float64 (the box dtype rule of `detkit.structures.boxes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from detkit.structures.boxes import box_math_dtype

__all__ = ["BoxCoder"]


def _centres_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights


class BoxCoder:
    """R-CNN box parametrisation.

    Args:
        weights: (wx, wy, ww, wh) multiplying the deltas; (10, 10, 5, 5) in Fast R-CNN box heads.
        clamp: upper bound on decoded dw, dh (after dividing by the weights) before `exp`, so
            no box grows more than `exp(clamp)` times its reference; default log(1000 / 16).
    """

    def __init__(self, weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clamp: float = math.log(1000.0 / 16)):
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 entries (wx, wy, ww, wh), got {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = float(clamp)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weights={self.weights}, clamp={self.clamp})"

    def encode(self, gt_boxes: Tensor, ref_boxes: Tensor) -> Tensor:
        """Deltas that turn `ref_boxes` into `gt_boxes`.

        Args:
            gt_boxes: `Tensor[..., 4]` XYXY targets.
            ref_boxes: `Tensor[..., 4]` XYXY references (broadcast against `gt_boxes`).
        Returns:
            `Tensor[..., 4]` deltas, float32 (float64 when an input is float64).
        """
        wx, wy, ww, wh = self.weights
        dtype = box_math_dtype(gt_boxes, ref_boxes)
        with torch.autocast(device_type=gt_boxes.device.type, enabled=False):
            gx, gy, gw, gh = _centres_sizes(gt_boxes.to(dtype))
            rx, ry, rw, rh = _centres_sizes(ref_boxes.to(dtype))
            dx = wx * (gx - rx) / rw
            dy = wy * (gy - ry) / rh
            dw = ww * torch.log(gw / rw)
            dh = wh * torch.log(gh / rh)
            return torch.stack((dx, dy, dw, dh), dim=-1)

    def decode(self, deltas: Tensor, ref_boxes: Tensor) -> Tensor:
        """Apply deltas to reference boxes.

        Args:
            deltas: `Tensor[..., 4]`, or `Tensor[..., K*4]` with K > 1 (e.g. class-specific
                regression `Tensor[R, K*4]`).
            ref_boxes: `Tensor[..., 4]` XYXY references (broadcast against the deltas'
                leading dimensions).
        Returns:
            `Tensor[..., 4]` boxes for `[..., 4]` deltas; `Tensor[..., K, 4]` (e.g.
            `Tensor[R, K, 4]`) for `[..., K*4]` deltas with K > 1. float32, float64 when an
            input is float64.
        """
        if deltas.shape[-1] % 4 != 0 or deltas.shape[-1] == 0:
            raise ValueError(f"deltas must have a last dimension of 4*K, got {tuple(deltas.shape)}")
        wx, wy, ww, wh = self.weights
        per_class = deltas.shape[-1] > 4
        dtype = box_math_dtype(deltas, ref_boxes)
        with torch.autocast(device_type=deltas.device.type, enabled=False):
            deltas = deltas.to(dtype)
            ref_boxes = ref_boxes.to(dtype)
            if per_class:
                deltas = deltas.unflatten(-1, (-1, 4))  # [..., K, 4]
                ref_boxes = ref_boxes.unsqueeze(-2)  # [..., 1, 4]
            rx, ry, rw, rh = _centres_sizes(ref_boxes)
            dx = deltas[..., 0] / wx
            dy = deltas[..., 1] / wy
            dw = (deltas[..., 2] / ww).clamp(max=self.clamp)
            dh = (deltas[..., 3] / wh).clamp(max=self.clamp)
            cx = dx * rw + rx
            cy = dy * rh + ry
            half_w = 0.5 * (torch.exp(dw) * rw)
            half_h = 0.5 * (torch.exp(dh) * rh)
            return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)
