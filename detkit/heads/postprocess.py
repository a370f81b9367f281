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

from detkit.matching import BoxCoder
from detkit.structures import Detections, clip_boxes, remove_small_boxes
from detkit.structures.packed import top_k_per_image

__all__ = ["ClassDetectionsMixin", "decode_class_boxes", "select_detections"]


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


def decode_class_boxes(box_coder: BoxCoder, box_deltas: Tensor, proposals: Tensor, num_classes: int) -> Tensor:
    """Each RoI's box for every class, `Tensor[R, K, 4]` float32, from `box_deltas` `Tensor[R, C*4]`
    against `proposals` `Tensor[R, 4]`: C = K+1 class-specific with a background column (dropped),
    C = K class-specific, or C = 1 class-agnostic (one box for every class)."""
    deltas = box_deltas.float().view(box_deltas.shape[0], box_deltas.shape[1] // 4, 4)  # [R, C, 4]
    if deltas.shape[1] == num_classes + 1:
        deltas = deltas[:, 1:]
    boxes = box_coder.decode(deltas, proposals[:, None, :].expand(-1, deltas.shape[1], -1))
    return boxes.expand(-1, num_classes, -1) if boxes.shape[1] == 1 else boxes


class ClassDetectionsMixin:
    """`postprocess` of a detector part that scores every RoI per class and regresses its box
    (RoI heads, R-CNN): the attributes below set it."""

    box_coder: BoxCoder
    num_classes: int
    score_threshold: float
    min_box_size: float
    nms_threshold: float
    detections_per_image: int

    @torch.no_grad()
    def postprocess(
        self, scores: Tensor, box_deltas: Tensor, proposals: Tensor, batch_idx: Tensor, image_sizes: Tensor
    ) -> Detections:
        """Class scores `Tensor[R, K]` (after softmax / SVM, background excluded) and box deltas
        `Tensor[R, C*4]` of the RoIs `proposals` -> Detections: per-class decode and clip, score
        threshold, per-class NMS, top-k per image (see `select_detections`)."""
        return select_detections(
            decode_class_boxes(self.box_coder, box_deltas, proposals, self.num_classes),
            scores,
            batch_idx,
            image_sizes,
            score_threshold=self.score_threshold,
            min_box_size=self.min_box_size,
            nms_threshold=self.nms_threshold,
            detections_per_image=self.detections_per_image,
        )
