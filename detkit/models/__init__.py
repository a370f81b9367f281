"""Detectors of the R-CNN family as plain nn.Modules, built by name."""

from detkit.models import classic as _classic  # noqa: F401  (registers the variants)
from detkit.models import fast_rcnn as _fast_rcnn  # noqa: F401
from detkit.models import rcnn as _rcnn  # noqa: F401
from detkit.models import zoo as _zoo  # noqa: F401
from detkit.models.base import Detector
from detkit.models.coco_names import COCO_CATEGORY_NAMES
from detkit.models.fast_rcnn import FastRCNN
from detkit.models.kernels import configure_kernels
from detkit.models.rcnn import RCNN
from detkit.models.registry import (
    build_model,
    list_models,
    model_keywords,
    register_keywords,
    register_model,
    unregister_model,
)
from detkit.models.transform import DetectionTransform
from detkit.models.two_stage import TwoStageDetector
from detkit.models.weights import load_detector_weights

__all__ = [
    "COCO_CATEGORY_NAMES",
    "Detector",
    "FastRCNN",
    "RCNN",
    "build_model",
    "configure_kernels",
    "list_models",
    "model_keywords",
    "register_keywords",
    "register_model",
    "unregister_model",
    "DetectionTransform",
    "TwoStageDetector",
    "load_detector_weights",
]
