"""Confusion matrix of detections against ground truth (classes + background).

Shape shorthand: K categories; the matrix is `Tensor[K+1, K+1]`, rows the true class
(last row: background, i.e. a detection that matches no object), columns the predicted class
(last column: background, i.e. an object no detection matches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detkit.analysis.coco_errors import Matches, box_iou_xywh

__all__ = ["ConfusionMatrix", "confusion_matrix"]


@dataclass
class ConfusionMatrix:
    """Counts (`matrix`), the score threshold and IoU it was made at, and per image (in
    `Matches.image_ids` order) the false positives (detections on background) and the
    missed objects at that threshold."""

    matrix: np.ndarray  # Tensor[K+1, K+1] int
    score_threshold: float
    iou_threshold: float
    image_false_positives: np.ndarray  # Tensor[I]
    image_missed: np.ndarray  # Tensor[I]

    def to_dict(self, class_names: list[str]) -> dict:
        return {
            "labels": [*class_names, "background"],
            "rows": "ground truth",
            "columns": "prediction",
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "matrix": self.matrix.astype(int).tolist(),
        }


def _greedy_pairs(iou: np.ndarray, allowed: np.ndarray, threshold: float, det_free, gt_free) -> list[tuple[int, int]]:
    """One-to-one pairs with IoU >= threshold among `allowed`, best IoU first (ties: earlier detection)."""
    cand = np.argwhere(allowed & (iou >= threshold))
    if len(cand) == 0:
        return []
    cand = cand[np.lexsort((cand[:, 0], -iou[cand[:, 0], cand[:, 1]]))]
    pairs = []
    for d, g in cand:
        if det_free[d] and gt_free[g]:
            det_free[d] = gt_free[g] = False
            pairs.append((int(d), int(g)))
    return pairs


def confusion_matrix(m: Matches, score_threshold: float = 0.3, iou_threshold: float = 0.5) -> ConfusionMatrix:
    """Confusion matrix of the detections with score >= `score_threshold`.

    Per image, detections and objects (crowds aside) are paired one to one at IoU >=
    `iou_threshold`: first pairs of the same class, then the rest, each best IoU first. A
    pair counts in [true class, predicted class]; a detection left over counts in
    [background, its class] unless it lies on a crowd (IoU >= threshold as COCO measures a
    crowd), an object left over in [its class, background].
    """
    if not 0.0 <= score_threshold <= 1.0 or not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"score threshold must be in [0, 1] and IoU in (0, 1], got {score_threshold}, {iou_threshold}")
    k = len(m.category_ids)
    matrix = np.zeros((k + 1, k + 1), np.int64)
    n_images = len(m.image_ids)
    image_fp, image_missed = np.zeros(n_images, np.int64), np.zeros(n_images, np.int64)
    for i, (d, g) in enumerate(zip(*m.per_image())):
        d = d[m.det_score[d] >= score_threshold]
        crowd = g[m.gt_crowd[g]]
        g = g[~m.gt_crowd[g]]
        iou = box_iou_xywh(m.det_box[d], m.gt_box[g])
        same = m.det_class[d][:, None] == m.gt_class[g][None, :]
        det_free, gt_free = np.ones(len(d), bool), np.ones(len(g), bool)
        pairs = _greedy_pairs(iou, same, iou_threshold, det_free, gt_free)
        pairs += _greedy_pairs(iou, ~same, iou_threshold, det_free, gt_free)
        for dj, gj in pairs:
            matrix[m.gt_class[g[gj]], m.det_class[d[dj]]] += 1
        on_crowd = np.zeros(len(d), bool)
        if len(crowd):
            on_crowd = (box_iou_xywh(m.det_box[d], m.gt_box[crowd], np.ones(len(crowd), bool)) >= iou_threshold).any(1)
        background = d[det_free & ~on_crowd]
        np.add.at(matrix[k], m.det_class[background], 1)
        np.add.at(matrix[:, k], m.gt_class[g[gt_free]], 1)
        image_fp[i], image_missed[i] = len(background), int(gt_free.sum())
    return ConfusionMatrix(matrix, float(score_threshold), float(iou_threshold), image_fp, image_missed)
