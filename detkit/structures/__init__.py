"""Box helpers (XYXY, float32 IoU), packed batch containers and the packed-tensor helpers."""

from detkit.structures.boxes import (
    batched_box_iou,
    box_area,
    box_iou,
    box_math_dtype,
    clip_boxes,
    cxcywh_to_xyxy,
    hw_to_whwh,
    remove_small_boxes,
    validate_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from detkit.structures.containers import Detections, ImageBatch, PackedTargets, pad_images
from detkit.structures.label_map import LabelMap, LabelMapMismatchError
from detkit.structures.packed import (
    PackedRows,
    count_per_image,
    image_starts,
    pack_to_padded,
    position_in_image,
    resize_boxes,
    scale_factors,
    take_rows,
    top_k_per_image,
)

__all__ = [
    "Detections",
    "ImageBatch",
    "LabelMap",
    "LabelMapMismatchError",
    "PackedRows",
    "PackedTargets",
    "batched_box_iou",
    "box_math_dtype",
    "box_area",
    "box_iou",
    "clip_boxes",
    "count_per_image",
    "cxcywh_to_xyxy",
    "hw_to_whwh",
    "image_starts",
    "pack_to_padded",
    "pad_images",
    "position_in_image",
    "remove_small_boxes",
    "resize_boxes",
    "scale_factors",
    "take_rows",
    "top_k_per_image",
    "validate_boxes",
    "xywh_to_xyxy",
    "xyxy_to_cxcywh",
    "xyxy_to_xywh",
]
