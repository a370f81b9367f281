"""Box helpers. Boxes are XYXY in absolute pixels; IoU runs in float32 even under autocast.

dtype rule of all box math in detkit (IoU, box coding, mask pasting, RoI ops): it runs in
float64 when an input is float64 and in float32 otherwise (float16 / bfloat16 / integer
inputs and autocast included), and returns that dtype; `box_math_dtype` gives it. The rule
holds on every code path (small and large inputs, CPU and GPU).

Shape shorthand:
    N  images in a batch
    M, G, P  numbers of boxes (generic, ground truth, predictions/proposals)
    ...  any leading batch dimensions; the last dimension of a box tensor is 4
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou as _tv_box_iou

__all__ = [
    "batched_box_iou",
    "box_math_dtype",
    "box_area",
    "box_iou",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "hw_to_whwh",
    "remove_small_boxes",
    "validate_boxes",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """`Tensor[..., 4]` (x, y, w, h) -> `Tensor[..., 4]` (x1, y1, x2, y2)."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack((x, y, x + w, y + h), dim=-1)


def xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """`Tensor[..., 4]` (x1, y1, x2, y2) -> `Tensor[..., 4]` (x, y, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """`Tensor[..., 4]` (cx, cy, w, h) -> `Tensor[..., 4]` (x1, y1, x2, y2)."""
    cx, cy, w, h = boxes.unbind(-1)
    half_w, half_h = 0.5 * w, 0.5 * h
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """`Tensor[..., 4]` (x1, y1, x2, y2) -> `Tensor[..., 4]` (cx, cy, w, h)."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = x2 - x1, y2 - y1
    return torch.stack((x1 + 0.5 * w, y1 + 0.5 * h, w, h), dim=-1)


def hw_to_whwh(hw: Tensor) -> Tensor:
    """`Tensor[..., 2]` (h, w) pairs -> `Tensor[..., 4]` (w, h, w, h): image sizes as XYXY limits,
    or (y, x) scale ratios as factors for XYXY boxes."""
    h, w = hw.unbind(-1)
    return torch.stack((w, h, w, h), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of XYXY boxes: `Tensor[..., 4]` -> `Tensor[...]` (negative for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes(boxes: Tensor, size: tuple[int, int] | Tensor) -> Tensor:
    """Clamp XYXY boxes to the image rectangle [0, w] x [0, h].

    Args:
        boxes: `Tensor[..., 4]`.
        size: `(h, w)` for all boxes, or `Tensor[..., 2]` of (h, w) broadcastable against
            `boxes[..., :2]` (e.g. `image_sizes[batch_idx]` for packed boxes, or
            `image_sizes[:, None, :]` for `Tensor[N, M, 4]`).
    Returns:
        `Tensor[..., 4]`, same dtype as `boxes`.
    """
    if isinstance(size, Tensor):
        return torch.minimum(boxes.clamp(min=0), hw_to_whwh(size.to(dtype=boxes.dtype)))
    h, w = size
    xs = boxes[..., 0::2].clamp(min=0, max=w)
    ys = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((xs[..., 0], ys[..., 0], xs[..., 1], ys[..., 1]), dim=-1)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Keep mask `Tensor[...]` bool: True where width >= min_size and height >= min_size."""
    wh = boxes[..., 2:] - boxes[..., :2]
    return (wh >= min_size).all(-1)


def box_math_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 when any of `tensors` is float64, else float32 (the module's dtype rule)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU `Tensor[M, 4]` x `Tensor[N, 4]` -> `Tensor[M, N]` (float32, float64 for float64 input).

    Uses `torchvision.ops.box_iou` with autocast disabled. As there, a pair of two zero-area
    boxes gives NaN (0 / 0).
    """
    dtype = box_math_dtype(boxes1, boxes2)
    with torch.autocast(device_type=boxes1.device.type, enabled=False):
        return _tv_box_iou(boxes1.to(dtype), boxes2.to(dtype))


def batched_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Per-image pairwise IoU `Tensor[N, G, 4]` x `Tensor[N, P, 4]` -> `Tensor[N, G, P]` (float32,
    float64 for float64 input).

    Vectorised over the batch by broadcasting. Pairs whose union is zero (e.g. zero padding
    against zero padding) get IoU 0 instead of NaN, so padded rows are harmless.
    """
    if boxes1.dim() != 3 or boxes2.dim() != 3 or boxes1.shape[0] != boxes2.shape[0]:
        raise ValueError(
            f"batched_box_iou expects [N, G, 4] and [N, P, 4], got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}"
        )
    with torch.autocast(device_type=boxes1.device.type, enabled=False):
        dtype = box_math_dtype(boxes1, boxes2)
        a = boxes1.to(dtype)
        b = boxes2.to(dtype)
        area_a = box_area(a)  # [N, G]
        area_b = box_area(b)  # [N, P]
        ax1, ay1, ax2, ay2 = (c[:, :, None] for c in a.unbind(-1))  # [N, G, 1] each
        bx1, by1, bx2, by2 = (c[:, None, :] for c in b.unbind(-1))  # [N, 1, P] each
        inter_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp_(min=0)
        inter_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp_(min=0)
        inter = inter_w.mul_(inter_h)  # [N, G, P]
        union = (area_a[:, :, None] + area_b[:, None, :]).sub_(inter)
        # union == 0 implies inter == 0, so the clamp turns 0 / 0 into 0 / tiny = 0; pairs
        # with a NaN coordinate give 0, never NaN
        return inter.div_(union.clamp_(min=torch.finfo(dtype).tiny)).nan_to_num_(nan=0.0)


def validate_boxes(boxes: Tensor, name: str = "boxes", *, require_positive: bool = False) -> None:
    """Raise ValueError unless `boxes` is a floating `Tensor[..., 4]` of finite values.

    With `require_positive`, also require x2 > x1 and y2 > y1 for every box.
    Note: the finiteness check reads the values (a device sync on accelerators).
    """
    if not isinstance(boxes, Tensor):
        raise ValueError(f"{name} must be a Tensor[..., 4], got {type(boxes).__name__}")  # noqa: TRY004
    if boxes.dim() < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {tuple(boxes.shape)}")
    if not boxes.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {boxes.dtype}")
    if boxes.numel() == 0:
        return
    if not bool(torch.isfinite(boxes).all()):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    if require_positive:
        bad = (boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])
        if bool(bad.any()):
            first = bad.reshape(-1).nonzero()[0].item()
            raise ValueError(
                f"{name} must have x2 > x1 and y2 > y1; box {first} is {boxes.reshape(-1, 4)[first].tolist()}"
            )
