"""Error analysis and data-set statistics behind `detkit analyze`: the COCO site's PR curves
(C75 / C50 / Loc / Sim / Oth / BG / FN), TIDE-style AP lost per error type, a confusion
matrix, per-image AP, and the self-contained HTML report that shows them."""

from detkit.analysis.coco_errors import (
    AREA_NAMES,
    CURVE_NAMES,
    ERROR_TYPES,
    CocoErrorAnalysis,
    analyze_coco_errors,
    average_precision,
)
from detkit.analysis.confusion import ConfusionMatrix, confusion_matrix
from detkit.analysis.dataset import dataset_statistics

__all__ = [
    "AREA_NAMES",
    "CURVE_NAMES",
    "ERROR_TYPES",
    "CocoErrorAnalysis",
    "ConfusionMatrix",
    "analyze_coco_errors",
    "average_precision",
    "confusion_matrix",
    "dataset_statistics",
]
