"""Confusion matrix of detections against ground truth (classes + background).

Shape shorthand: K categories; the matrix is `Tensor[K+1, K+1]`, rows the true class
(last row: background, i.e. a detection that matches no object), columns the predicted class
(last column: background, i.e. an object no detection matches).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detkit.analysis.coco_errors import Matches
from detkit.analysis.coco_matching import box_iou_xywh

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


def _greedy_pairs(det: np.ndarray, gt: np.ndarray, iou: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs among the candidate pairs (`det`, `gt`, their `iou`, `same` class): pairs of
    the same class first, then the rest, each best IoU first (ties: earlier detection, then earlier
    object). Candidates of different images never share a detection or an object, so one pass
    over all of them in that order pairs each image as if it were alone."""
    order = np.lexsort((gt, det, -iou, ~same))
    used_det, used_gt, pairs = set(), set(), []
    for d, g in zip(det[order].tolist(), gt[order].tolist()):
        if d not in used_det and g not in used_gt:
            used_det.add(d)
            used_gt.add(g)
            pairs.append((d, g))
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    return pairs[:, 0], pairs[:, 1]


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
    k, n_images = len(m.category_ids), len(m.image_ids)
    scored = m.det_score >= score_threshold
    on_crowd = np.zeros(len(scored), bool)
    cand_det, cand_gt, cand_iou = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0)]
    for d, g in zip(*m.per_image()):  # the IoU of each image's detections and objects, kept where >= threshold
        d = d[scored[d]]
        if len(d) == 0 or len(g) == 0:
            continue
        crowd = m.gt_crowd[g]
        if crowd.any():
            crowd_iou = box_iou_xywh(m.det_box[d], m.gt_box[g[crowd]], np.ones(int(crowd.sum()), bool))
            on_crowd[d] = (crowd_iou >= iou_threshold).any(1)
            g = g[~crowd]
        iou = box_iou_xywh(m.det_box[d], m.gt_box[g])
        rows, cols = np.nonzero(iou >= iou_threshold)
        cand_det.append(d[rows])
        cand_gt.append(g[cols])
        cand_iou.append(iou[rows, cols])
    det, gt = np.concatenate(cand_det), np.concatenate(cand_gt)
    pair_det, pair_gt = _greedy_pairs(det, gt, np.concatenate(cand_iou), m.det_class[det] == m.gt_class[gt])
    matrix = np.zeros((k + 1, k + 1), np.int64)
    np.add.at(matrix, (m.gt_class[pair_gt], m.det_class[pair_det]), 1)
    background = scored & ~on_crowd
    background[pair_det] = False
    missed = ~m.gt_crowd
    missed[pair_gt] = False
    matrix[k, :k] += np.bincount(m.det_class[background], minlength=k)
    matrix[:k, k] += np.bincount(m.gt_class[missed], minlength=k)
    image_fp = np.bincount(m.det_image[background], minlength=n_images)
    image_missed = np.bincount(m.gt_image[missed], minlength=n_images)
    return ConfusionMatrix(matrix, float(score_threshold), float(iou_threshold), image_fp, image_missed)
