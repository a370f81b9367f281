"""Data sets (COCO, Pascal VOC, synthetic shapes), transforms, collation and samplers.

Every data set returns ``(image, target)`` with ``boxes`` XYXY float32 in absolute pixels,
``labels`` int64 in ``1..num_classes`` (0 is the background) and exposes ``num_classes``,
``class_names``, ``label_to_category_id``, ``category_id_to_label``, ``ann_file`` and a cheap
``aspect_ratios()``.

The data sets are imported on first use (they need pycocotools and OpenCV), so reading an
image file (:func:`read_image_rgb`) needs neither; ``WithProposals`` (cached region proposals
in ``target["proposals"]``) needs OpenCV's contrib module (``pip install 'detkit-rcnn[proposals]'``).
"""

import importlib

from .collate import collate_detection
from .io import ImageReadError, read_image_rgb
from .samplers import (
    AspectRatioGroupedBatchSampler,
    aspect_ratio_groups,
)
from .transforms import build_transforms

# Imported on first use: the data sets need pycocotools and OpenCV (`detkit-rcnn[train]`), while
# reading an image file (`detkit predict --onnx` with `detkit-rcnn[export]`) needs neither.
_LAZY = {
    "AnnotationFormatError": "coco",
    "CocoDetection": "coco",
    "decode_segmentation": "coco",
    "load_coco_json": "coco",
    "SHAPES_CLASSES": "shapes",
    "ShapesConfig": "shapes",
    "ShapesDataset": "shapes",
    "ensure_shapes": "shapes",
    "generate_shapes": "shapes",
    "VOC_CLASSES": "voc",
    "VocDetection": "voc",
    "WithProposals": "proposals",  # its proposal caches need OpenCV's contrib module
}

__all__ = [
    "SHAPES_CLASSES",
    "VOC_CLASSES",
    "AnnotationFormatError",
    "AspectRatioGroupedBatchSampler",
    "CocoDetection",
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
    "WithProposals",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"detkit.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'detkit.data' has no attribute {name!r}")
