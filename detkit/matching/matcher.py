"""IoU-based matching of predictions (anchors, proposals) to ground truth, batched.

Shape shorthand:
    N  images
    G  ground-truth slots per image (padded, see `PackedTargets.padded`)
    P  predictions (anchors or proposals) per image

Label convention: 1 positive, 0 negative (background), -1 ignore; kept apart from the
matched ground-truth index.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Matcher"]


class Matcher:
    """Label every prediction by its best IoU with a ground-truth box.

    A prediction is positive when its best IoU >= `high_threshold`, negative when it is
    < `low_threshold`, ignored in between (no ignore band when the thresholds are equal).

    With `allow_low_quality_matches` (Faster R-CNN RPN), for each valid ground truth g every
    prediction whose IoU with g equals g's largest IoU (when that is > 0) also becomes
    positive. Like torchvision and Detectron, such a prediction stays matched to the ground
    truth it overlaps most (its argmax), which is g unless it overlaps another box as much.

    Args:
        high_threshold: IoU at or above which a prediction is positive.
        low_threshold: IoU below which a prediction is negative; <= high_threshold.
        allow_low_quality_matches: see above.
    """

    def __init__(self, high_threshold: float, low_threshold: float, *, allow_low_quality_matches: bool = False):
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})")
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, iou: Tensor, gt_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Match a batch.

        Args:
            iou: `Tensor[N, G, P]` IoU of every ground truth with every prediction.
            gt_valid: `Tensor[N, G]` bool, False for padded ground-truth slots (never matched).

        Returns:
            matched_idx: `Tensor[N, P]` int64 index into G of the matched ground truth; 0 for
                predictions that are not positive (a valid index whenever G > 0).
            labels: `Tensor[N, P]` int64: 1 positive, 0 negative, -1 ignore. All 0 in images
                without a valid ground truth.
        """
        if iou.dim() != 3:
            raise ValueError(f"iou must be [N, G, P], got {tuple(iou.shape)}")
        n, g, p = iou.shape
        if gt_valid is not None and gt_valid.shape != (n, g):
            raise ValueError(f"gt_valid must be [{n}, {g}], got {tuple(gt_valid.shape)}")
        matched_idx = torch.zeros((n, p), dtype=torch.int64, device=iou.device)
        labels = torch.zeros((n, p), dtype=torch.int64, device=iou.device)
        if g == 0 or p == 0:
            return matched_idx, labels

        if gt_valid is not None:
            iou = iou.masked_fill(~gt_valid[:, :, None], -1.0)
        best_iou, best_gt = iou.max(dim=1)  # [N, P]

        labels = torch.where(best_iou >= self.high_threshold, 1, torch.where(best_iou < self.low_threshold, 0, -1))

        if self.allow_low_quality_matches:
            gt_best = iou.max(dim=2, keepdim=True).values  # [N, G, 1]; -1 for padded slots
            # a gt that overlaps nothing (best <= 0) gets no low-quality match: 2 is no IoU
            gt_best = gt_best.masked_fill(gt_best <= 0, 2.0)
            low_quality = (iou == gt_best).any(dim=1)  # [N, P]
            labels = torch.where(low_quality, 1, labels)

        if gt_valid is not None:
            labels = torch.where(gt_valid.any(dim=1, keepdim=True), labels, 0)
        matched_idx = torch.where(labels == 1, best_gt, 0)
        return matched_idx, labels
