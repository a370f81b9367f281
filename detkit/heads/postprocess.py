"""Detection post-processing shared by every detector: per-class boxes and scores -> Detections.

Shape shorthand:
    R  RoIs, packed over the batch with `batch_idx` Tensor[R]
    K  classes without background (class k+1 in column k)
    N  images   D  detections kept, packed over the batch
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from detkit.structures import Detections, clip_boxes, remove_small_boxes
from detkit.structures.packed import top_k_per_image

__all__ = ["select_detections"]


def select_detections(
    boxes: Tensor,
    scores: Tensor,
    batch_idx: Tensor,
    image_sizes: Tensor,
    *,
    score_threshold: float,
    min_box_size: float,
    nms_threshold: float,
    detections_per_image: int,
) -> Detections:
    """Per-class boxes `Tensor[R, K, 4]` and scores `Tensor[R, K]` (class k+1 in column k) -> Detections.

    Clips to `image_sizes` `Tensor[N, 2]` (h, w), drops scores <= `score_threshold` and boxes
    with a side under `min_box_size`, runs one NMS per (image, class) in a single batched call
    and keeps the `detections_per_image` best of each image (grouped by image, best first).
    One host sync (the selection), besides NMS.
    """
    r, k = scores.shape
    boxes = clip_boxes(boxes, image_sizes[batch_idx][:, None, :])  # each RoI's image (h, w), broadcast over K
    labels = torch.arange(1, k + 1, device=scores.device).expand(r, k)
    # one candidate per (RoI, class): [R, K, ...] -> [R*K, ...]
    dets = Detections(
        boxes=boxes.reshape(-1, 4),
        scores=scores.reshape(-1),
        labels=labels.reshape(-1),
        batch_idx=batch_idx[:, None].expand(r, k).reshape(-1),
        num_images=image_sizes.shape[0],
    )
    keep = (dets.scores > score_threshold) & remove_small_boxes(dets.boxes, min_box_size)
    dets = dets[torch.nonzero(keep).squeeze(1)]  # one host sync for all fields
    kept = batched_nms(dets.boxes, dets.scores, dets.batch_idx * (k + 1) + dets.labels, nms_threshold)
    return dets[top_k_per_image(kept, dets.batch_idx[kept], detections_per_image)]
