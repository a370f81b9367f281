"""COCO json conversion, COCO evaluation, Pascal VOC AP, proposal recall and precision-recall plots."""

from detkit.evaluation.coco_eval import (
    STAT_NAMES,
    COCOEvaluator,
    EvalResult,
    format_summary,
    gather_and_deduplicate,
)
from detkit.evaluation.proposal_recall import proposal_recall
from detkit.evaluation.results import detections_to_coco_results, save_results_json
from detkit.evaluation.voc_eval import VOCGroundTruth, VOCResult, evaluate_voc, voc_ap

__all__ = [
    "STAT_NAMES",
    "COCOEvaluator",
    "EvalResult",
    "VOCGroundTruth",
    "VOCResult",
    "detections_to_coco_results",
    "evaluate_voc",
    "format_summary",
    "gather_and_deduplicate",
    "plot_pr_curves",
    "proposal_recall",
    "save_results_json",
    "voc_ap",
]


def __getattr__(name: str):
    if name == "plot_pr_curves":  # imported on use: it needs OpenCV
        from detkit.evaluation.pr_curve import plot_pr_curves

        return plot_pr_curves
    raise AttributeError(f"module 'detkit.evaluation' has no attribute {name!r}")
