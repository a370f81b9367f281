"""Data sets (COCO, Pascal VOC, synthetic shapes), transforms, collation and samplers.

Every data set returns ``(image, target)`` with ``boxes`` XYXY float32 in absolute pixels,
``labels`` int64 in ``1..num_classes`` (0 is the background) and exposes ``num_classes``,
``class_names``, ``label_to_category_id``, ``category_id_to_label``, ``ann_file`` and a cheap
``aspect_ratios()``.

``WithProposals`` (cached region proposals in ``target["proposals"]``) is imported on first
use: its proposal caches need OpenCV (``pip install 'detkit[proposals]'``).
"""

import importlib

from .coco import (
    AnnotationFormatError,
    CocoDetection,
    decode_segmentation,
    load_coco_json,
    xywh_to_xyxy,
    xywh_to_xyxy_array,
)
from .collate import collate_detection
from .io import ImageReadError, read_image_rgb
from .samplers import (
    AspectRatioGroupedBatchSampler,
    GroupedBatchSampler,
    aspect_ratio_groups,
)
from .shapes import (
    SHAPES_CLASSES,
    ShapesConfig,
    ShapesDataset,
    ensure_shapes,
    generate_shapes,
)
from .transforms import build_transforms
from .voc import VOC_CLASSES, VocDetection

__all__ = [
    "SHAPES_CLASSES",
    "VOC_CLASSES",
    "AnnotationFormatError",
    "AspectRatioGroupedBatchSampler",
    "CocoDetection",
    "GroupedBatchSampler",
    "ImageReadError",
    "ShapesConfig",
    "ShapesDataset",
    "VocDetection",
    "aspect_ratio_groups",
    "build_transforms",
    "collate_detection",
    "decode_segmentation",
    "ensure_shapes",
    "generate_shapes",
    "load_coco_json",
    "read_image_rgb",
    "xywh_to_xyxy",
    "xywh_to_xyxy_array",
    "WithProposals",
]


def __getattr__(name: str):
    if name == "WithProposals":  # detkit.data.proposals needs cv2 (through the proposal cache)
        return importlib.import_module("detkit.data.proposals").WithProposals
    raise AttributeError(f"module 'detkit.data' has no attribute {name!r}")
