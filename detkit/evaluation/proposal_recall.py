"""Recall of region proposals against ground-truth boxes.

Shape shorthand: N proposals of one image (ranked, best first); G ground-truth boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported on use: `detkit evaluate` starts without it
    import torch

__all__ = ["AR_IOU_THRESHOLDS", "proposal_recall"]

# IoU 0.5:0.95 step 0.05, over which average recall (AR) is taken
AR_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def _as_boxes(x, what: str, i: int) -> torch.Tensor:
    import torch

    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to(device="cpu", dtype=torch.float64)
    if t.numel() == 0:
        return t.reshape(0, 4)
    if t.ndim != 2 or t.shape[1] != 4:
        raise ValueError(f"{what}[{i}] must have shape (N, 4), got {tuple(t.shape)}")
    return t


def proposal_recall(
    proposals: Sequence[np.ndarray | torch.Tensor],
    gt_boxes: Sequence[np.ndarray | torch.Tensor],
    *,
    iou_thresholds: Sequence[float] = (0.5, 0.7),
    top_ks: Sequence[int] = (100, 300, 1000, 2000),
) -> dict[str, float]:
    """Fraction of ground-truth boxes covered by the top-k proposals of their image.

    A gt box counts as recalled at IoU t with the top k proposals if its best IoU over
    the first k proposals of its image is >= t. Recall is pooled over all gt boxes of
    the dataset. AR@k is the mean recall over IoU 0.5:0.95 step 0.05 (the
    discretised average recall of Hosang et al., as in COCO).

    Args:
        proposals: per image, `[N, 4]` XYXY proposals ranked best first (k > N uses all).
        gt_boxes: per image, `[G, 4]` XYXY ground truth (crowd boxes already removed).

    Returns:
        {"R@{t}/{k}": recall, ..., "AR@{k}": average recall, ..., "num_gt": G total},
        e.g. "R@0.5/100", "AR@1000".
    """
    if len(proposals) != len(gt_boxes):
        raise ValueError(f"got proposals for {len(proposals)} images but gt boxes for {len(gt_boxes)}")
    top_ks = [int(k) for k in top_ks]
    if any(k < 1 for k in top_ks):
        raise ValueError(f"top_ks must be positive, got {top_ks}")
    import torch
    from torchvision.ops import box_iou

    thresholds = sorted({float(t) for t in iou_thresholds} | set(AR_IOU_THRESHOLDS))
    thr = torch.tensor(thresholds, dtype=torch.float64)

    # hits[k][j]: number of gt boxes recalled with top-k proposals at thresholds[j]
    hits = {k: torch.zeros(len(thresholds), dtype=torch.int64) for k in top_ks}
    num_gt = 0
    for i, (props, gts) in enumerate(zip(proposals, gt_boxes, strict=True)):
        props = _as_boxes(props, "proposals", i)
        gts = _as_boxes(gts, "gt_boxes", i)
        if len(gts) == 0:
            continue
        num_gt += len(gts)
        if len(props) == 0:
            continue
        props = props[: max(top_ks)]
        # best IoU of each gt over the first j+1 proposals: running max along proposals
        best = box_iou(gts, props).cummax(dim=1).values  # [G, N]
        for k in top_ks:
            best_k = best[:, min(k, best.shape[1]) - 1]  # [G]
            hits[k] += (best_k[:, None] >= thr[None, :]).sum(dim=0)

    if num_gt == 0:
        raise ValueError("proposal_recall needs at least one ground-truth box")
    out: dict[str, float] = {}
    ar_cols = [thresholds.index(t) for t in AR_IOU_THRESHOLDS]
    for k in top_ks:
        recall = hits[k].double() / num_gt
        for t in iou_thresholds:
            out[f"R@{float(t):g}/{k}"] = recall[thresholds.index(float(t))].item()
        out[f"AR@{k}"] = recall[ar_cols].mean().item()
    out["num_gt"] = num_gt
    return out
