"""Box helpers (XYXY, float32 IoU) and packed batch containers."""

from detkit.structures.boxes import (
    batched_box_iou,
    box_area,
    box_iou,
    box_math_dtype,
    clip_boxes,
    cxcywh_to_xyxy,
    remove_small_boxes,
    validate_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from detkit.structures.containers import Detections, ImageBatch, PackedTargets

__all__ = [
    "Detections",
    "ImageBatch",
    "PackedTargets",
    "batched_box_iou",
    "box_math_dtype",
    "box_area",
    "box_iou",
    "clip_boxes",
    "cxcywh_to_xyxy",
    "remove_small_boxes",
    "validate_boxes",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]
