"""Detectors of the R-CNN family as plain nn.Modules, built by name."""

from detkit.models import zoo as _zoo  # noqa: F401  (registers the variants)
from detkit.models.registry import build_model, list_models, register_model
from detkit.models.transform import DetectionTransform
from detkit.models.two_stage import TwoStageDetector

__all__ = ["build_model", "list_models", "register_model", "DetectionTransform", "TwoStageDetector"]
