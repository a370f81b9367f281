"""RoI heads: sample proposals -> pool -> predict -> losses, or post-process into detections.

Shape shorthand:
    N images   P proposals per image (padded to P_max for matching)   G gt boxes
    R sampled / kept RoIs, packed over the batch with `batch_idx` Tensor[R]
    K classes without background (logits have K+1 columns, column 0 = background)
    D detections, packed over the batch
    Kp keypoints per object (Keypoint R-CNN), M heatmap resolution
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.heads.keypoint_head import heatmaps_to_keypoints, keypoint_loss, keypoint_targets
from detkit.heads.mask_head import mask_targets, paste_masks
from detkit.heads.poolers import RoIPooler
from detkit.heads.postprocess import ClassDetectionsMixin
from detkit.losses import BOX_LOSSES, CLS_LOSSES, box_regression_loss, classification_loss, uses_decoded_boxes
from detkit.losses.selection import check_loss_name
from detkit.matching import BalancedSampler, BoxCoder, Matcher
from detkit.structures import Detections, ImageBatch, PackedTargets, batched_box_iou
from detkit.structures.packed import PackedRows, count_per_image, pack_to_padded, resize_boxes

__all__ = ["RoIHeads", "SampledRoIs"]


@dataclass(kw_only=True)
class SampledRoIs(PackedRows):
    """RoIs sampled for the loss, packed over the batch (R of them); `rois[index]` indexes every field.

    Attributes:
        boxes: `Tensor[R, 4]` RoIs in resized-image pixels.
        batch_idx: `Tensor[R]` int64 image of each RoI.
        labels: `Tensor[R]` int64 class target (0 background, else 1..K).
        regression_targets: `Tensor[R, 4]` encoded deltas from the RoI to its matched gt box.
        matched_boxes: `Tensor[R, 4]` the matched gt box (meaningful for positives only).
        matched_in_image: `Tensor[R]` int64 index of the matched gt among its image's gt
            boxes (row k of `targets.masks[batch_idx]`, for mask targets).
    """

    row_fields: ClassVar[tuple[str, ...]] = (
        "boxes",
        "batch_idx",
        "labels",
        "regression_targets",
        "matched_boxes",
        "matched_in_image",
    )

    boxes: Tensor
    batch_idx: Tensor
    labels: Tensor
    regression_targets: Tensor
    matched_boxes: Tensor
    matched_in_image: Tensor


class RoIHeads(ClassDetectionsMixin, nn.Module):
    """Box branch (and optional mask and keypoint branches) of Fast / Faster / Mask / Keypoint R-CNN.

    Args:
        box_pooler: pools `Tensor[R, C, S, S]` features of each RoI for the box head.
        box_head: pooled features -> `Tensor[R, F]` RoI features (e.g. `TwoFCHead`).
        box_predictor: RoI features -> (class logits `Tensor[R, K+1]`, box deltas `Tensor[R, (K+1)*4]`
            or `Tensor[R, 4]` class-agnostic).
        num_classes: K, without the background.
        fg_iou_threshold: IoU with a gt box at or above which a proposal is foreground.
        bg_iou_threshold: IoU below which a proposal is background (between the two: ignored).
        batch_size_per_image: RoIs sampled per image for the loss.
        positive_fraction: largest share of foreground RoIs in a sample.
        bbox_reg_weights: (wx, wy, ww, wh) weights of the box coder.
        score_threshold: inference: detections need a score above this.
        nms_threshold: inference: IoU of the per-(image, class) NMS.
        detections_per_image: inference: the best this many detections of each image are kept.
        min_box_size: inference: detections with a side under this many pixels are dropped.
        smooth_l1_beta: beta of the smooth L1 box loss.
        box_loss: box loss name ("smooth_l1" / "l1" / "giou" / "diou" / "ciou").
        cls_loss: classification loss name ("ce" / "focal").
        add_gt_as_proposals: training: append the gt boxes to the proposals before sampling.
        mask_pooler: pools features for the mask head (Mask R-CNN), or None.
        mask_head: pooled features -> mask logits `Tensor[R, K, M, M]`, or None (no mask branch).
        mask_threshold: inference: probability at which a pasted mask pixel is on.
        keypoint_pooler: pools features for the keypoint head (Keypoint R-CNN), or None.
        keypoint_head: pooled features -> heatmap logits `Tensor[R, Kp, M, M]` (`KeypointHead`), or None.
        matcher: labels proposals by IoU (`(iou, gt_valid) -> (matched_idx, labels)`, as `Matcher`);
            None: `Matcher(fg_iou_threshold, bg_iou_threshold)` (Fast R-CNN passes its background band).
    """

    def __init__(
        self,
        box_pooler: RoIPooler,
        box_head: nn.Module,
        box_predictor: nn.Module,
        *,
        num_classes: int,
        fg_iou_threshold: float = 0.5,
        bg_iou_threshold: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        score_threshold: float = 0.05,
        nms_threshold: float = 0.5,
        detections_per_image: int = 100,
        min_box_size: float = 1e-2,
        smooth_l1_beta: float = 1.0 / 9,
        box_loss: str = "smooth_l1",
        cls_loss: str = "ce",
        add_gt_as_proposals: bool = True,
        mask_pooler: RoIPooler | None = None,
        mask_head: nn.Module | None = None,
        mask_threshold: float = 0.5,
        matcher: Callable[..., tuple[Tensor, Tensor]] | None = None,
        keypoint_pooler: RoIPooler | None = None,
        keypoint_head: nn.Module | None = None,
    ):
        super().__init__()
        self.box_pooler, self.box_head, self.box_predictor = box_pooler, box_head, box_predictor
        self.mask_pooler, self.mask_head = mask_pooler, mask_head
        if (keypoint_pooler is None) != (keypoint_head is None):
            raise ValueError("RoIHeads needs both keypoint_pooler and keypoint_head, or neither")
        self.keypoint_pooler, self.keypoint_head = keypoint_pooler, keypoint_head
        self.num_classes = num_classes
        if matcher is None:
            matcher = Matcher(fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=False)
        self.matcher = matcher
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(weights=bbox_reg_weights)
        self.score_threshold, self.nms_threshold = score_threshold, nms_threshold
        self.detections_per_image, self.min_box_size = detections_per_image, min_box_size
        self.smooth_l1_beta, self.add_gt_as_proposals = smooth_l1_beta, add_gt_as_proposals
        # the losses, by name (detkit.losses.selection): "smooth_l1" / "l1" / "giou" / "diou" / "ciou", "ce" / "focal"
        self.box_loss_type = check_loss_name(box_loss, BOX_LOSSES, "box_loss")
        self.cls_loss_type = check_loss_name(cls_loss, CLS_LOSSES, "cls_loss")
        self.mask_threshold = mask_threshold

    @property
    def has_masks(self) -> bool:
        """True when the heads have a mask branch (Mask R-CNN)."""
        return self.mask_head is not None

    @property
    def has_keypoints(self) -> bool:
        """True when the heads have a keypoint branch (Keypoint R-CNN)."""
        return self.keypoint_head is not None

    @property
    def num_keypoints(self) -> int:
        """Keypoints per object of the keypoint branch (0 without one)."""
        return self.keypoint_head.num_keypoints if self.keypoint_head is not None else 0

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def sample_proposals(
        self,
        proposals: Tensor,
        batch_idx: Tensor,
        targets: PackedTargets,
        *,
        matcher: Callable[..., tuple[Tensor, Tensor]] | None = None,
        box_coder: BoxCoder | None = None,
    ) -> SampledRoIs:
        """Match proposals (plus gt boxes) to gt and sample a balanced set, for the whole batch at once.

        proposals `Tensor[P, 4]` with `batch_idx` `Tensor[P]` (grouped by image) -> the sampled RoIs
        with their class targets, matched gt and regression targets. `matcher` / `box_coder` replace
        the heads' own (a cascade stage's IoU threshold and target normalisation).
        """
        matcher = self.matcher if matcher is None else matcher
        box_coder = self.box_coder if box_coder is None else box_coder
        n = targets.num_images
        if self.add_gt_as_proposals:
            proposals = torch.cat([proposals, targets.boxes.to(proposals.dtype)])
            batch_idx = torch.cat([batch_idx, targets.batch_idx])
            order = torch.sort(batch_idx, stable=True).indices  # group by image again
            proposals, batch_idx = proposals[order], batch_idx[order]
        padded, valid, slot = pack_to_padded(proposals, batch_idx, n)  # [N, P_max, 4], [N, P_max], [P]
        gt_boxes, gt_labels, gt_valid = targets.padded(min_slots=1)  # G >= 1: batches without boxes
        iou = batched_box_iou(gt_boxes, padded)  # [N, G, P_max]
        matched_idx, labels = matcher(iou, gt_valid)  # [N, P_max] each
        labels = labels.masked_fill(~valid, -1)
        pos, neg = self.sampler(labels, valid=valid)
        keep = torch.nonzero((pos | neg)[batch_idx, slot]).squeeze(1)  # padded -> packed view; one host sync
        boxes, batch_idx, slot = proposals[keep], batch_idx[keep], slot[keep]
        matched = matched_idx[batch_idx, slot]  # [R] index into the image's gt boxes
        is_pos = pos[batch_idx, slot]
        matched_boxes = gt_boxes[batch_idx, matched]
        return SampledRoIs(
            boxes=boxes,
            batch_idx=batch_idx,
            labels=torch.where(is_pos, gt_labels[batch_idx, matched], torch.zeros_like(matched)),
            regression_targets=box_coder.encode(matched_boxes, boxes),
            matched_boxes=matched_boxes,
            matched_in_image=matched,
        )

    def box_loss(
        self, class_logits: Tensor, box_deltas: Tensor, sampled: SampledRoIs, *, box_coder: BoxCoder | None = None
    ) -> dict[str, Tensor]:
        """Classification and box losses of the sampled RoIs; `box_coder` (decoding for the IoU losses)
        replaces the heads' own, as in `sample_proposals`."""
        box_coder = self.box_coder if box_coder is None else box_coder
        labels = sampled.labels
        if labels.numel():
            loss_cls = classification_loss(self.cls_loss_type, class_logits.float(), labels)
        else:
            loss_cls = class_logits.sum() * 0
        # (R, C*4) -> (R, C, 4), C = K+1 class-specific or 1 class-agnostic
        deltas = box_deltas.view(box_deltas.shape[0], box_deltas.shape[1] // 4, 4)
        # index selection of the positives (on a GPU a host sync, as in torchvision)
        pos = torch.nonzero(labels > 0).squeeze(1)
        pred = deltas[pos, labels[pos]] if deltas.shape[1] > 1 else deltas[pos, 0]
        target = sampled.regression_targets[pos]
        if uses_decoded_boxes(self.box_loss_type):  # IoU losses compare boxes: decode against the RoIs
            pred, target = box_coder.decode(pred.float(), sampled.boxes[pos]), sampled.matched_boxes[pos]
        loss_box = box_regression_loss(
            self.box_loss_type, pred.float(), target.float(), beta=self.smooth_l1_beta, reduction="sum"
        )
        loss_box = loss_box / max(labels.numel(), 1)
        return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}

    def mask_loss(
        self, features: dict[str, Tensor], sampled: SampledRoIs, targets: PackedTargets, batch: ImageBatch
    ) -> Tensor:
        pos = torch.nonzero(sampled.labels > 0).squeeze(1)
        if pos.numel() == 0:
            return sum(p.sum() for p in self.mask_head.parameters()) * 0.0
        rois = sampled[pos]
        logits = self.mask_head(self.mask_pooler(features, rois.boxes, rois.batch_idx))  # [R, K, M, M]
        logits = logits[torch.arange(pos.numel(), device=logits.device), rois.labels - 1]  # own class: [R, M, M]
        if targets.masks is None:
            raise ValueError("Mask R-CNN training needs targets[i]['masks'] (uint8 Tensor[K, H, W])")
        # gt masks are in original pixels: map the RoIs back instead of resizing every mask
        orig_boxes = resize_boxes(rois.boxes, rois.batch_idx, batch.image_sizes, batch.original_sizes)
        target = mask_targets(targets.masks, orig_boxes, rois.batch_idx, rois.matched_in_image, logits.shape[-1])
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    def keypoint_loss(self, features: dict[str, Tensor], sampled: SampledRoIs, targets: PackedTargets) -> Tensor:
        """Cross-entropy over the heatmap positions of every labelled keypoint inside its positive RoI."""
        if targets.keypoints is None:
            raise ValueError("Keypoint R-CNN training needs targets[i]['keypoints'] (float Tensor[K, Kp, 3])")
        pos = torch.nonzero(sampled.labels > 0).squeeze(1)
        if pos.numel() == 0:
            return sum(p.sum() for p in self.keypoint_head.parameters()) * 0.0
        rois = sampled[pos]
        logits = self.keypoint_head(self.keypoint_pooler(features, rois.boxes, rois.batch_idx))  # [R, Kp, M, M]
        rows = targets.padded_index()[rois.batch_idx, rois.matched_in_image]  # packed gt row of each RoI
        index, valid = keypoint_targets(targets.keypoints[rows], rois.boxes, logits.shape[-1])
        return keypoint_loss(logits, index, valid)

    # ------------------------------------------------------------------ box branch (CascadeRoIHeads overrides)
    def box_branch_losses(
        self, features: dict[str, Tensor], proposals: Tensor, batch_idx: Tensor, targets, image_sizes: Tensor
    ) -> tuple[dict[str, Tensor], SampledRoIs]:
        """Training: the box losses and the sampled RoIs the mask / keypoint branches train on."""
        sampled = self.sample_proposals(proposals, batch_idx, targets)
        x = self.box_head(self.box_pooler(features, sampled.boxes, sampled.batch_idx))
        class_logits, box_deltas = self.box_predictor(x)
        return self.box_loss(class_logits, box_deltas, sampled), sampled

    def box_branch_scores(self, features, proposals: Tensor, batch_idx: Tensor, image_sizes: Tensor, pool=None):
        """Inference on `proposals` `Tensor[R, 4]`: (class probabilities `Tensor[R, K]`, box deltas
        `Tensor[R, C*4]`, the boxes `Tensor[R, 4]` they are relative to). `pool(features, boxes, batch_idx)`
        replaces `box_pooler` (export); `image_sizes` `Tensor[N, 2]` clips a cascade's intermediate boxes."""
        pool = self.box_pooler if pool is None else pool
        class_logits, box_deltas = self.box_predictor(self.box_head(pool(features, proposals, batch_idx)))
        return F.softmax(class_logits.float(), -1)[:, 1:], box_deltas, proposals  # [R, K]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        features: dict[str, Tensor],
        proposals: Tensor,
        batch_idx: Tensor,
        batch: ImageBatch,
        targets: PackedTargets | None = None,
    ) -> tuple[Detections | None, dict[str, Tensor]]:
        """With targets: (None, losses). Without: (detections in resized-image pixels, {}).

        Detections of a mask branch carry `mask_probs` `Tensor[D, M, M]`; `paste_detection_masks`
        turns them into per-image masks. Those of a keypoint branch carry `keypoints` `Tensor[D, Kp, 3]`
        (x, y, 1) in resized-image pixels and `keypoints_scores` `Tensor[D, Kp]`.
        """
        if targets is not None:
            losses, sampled = self.box_branch_losses(features, proposals, batch_idx, targets, batch.image_sizes)
            if self.has_masks:
                losses["loss_mask"] = self.mask_loss(features, sampled, targets, batch)
            if self.has_keypoints:
                losses["loss_keypoint"] = self.keypoint_loss(features, sampled, targets)
            return None, losses
        scores, box_deltas, boxes = self.box_branch_scores(features, proposals, batch_idx, batch.image_sizes)
        dets = self.postprocess(scores, box_deltas, boxes, batch_idx, batch.image_sizes)
        if self.has_masks:
            dets.mask_probs = self.predict_mask_probs(features, dets)
        if self.has_keypoints:
            heatmaps = self.keypoint_head(self.keypoint_pooler(features, dets.boxes, dets.batch_idx))
            dets.keypoints, dets.keypoints_scores = heatmaps_to_keypoints(heatmaps, dets.boxes)
        return dets, {}

    # ------------------------------------------------------------------ inference
    def predict_mask_probs(self, features: dict[str, Tensor], dets: Detections) -> Tensor:
        """Mask probabilities Tensor[D, M, M] of each detection's own class."""
        if dets.boxes.shape[0] == 0:
            m = 2 * self.mask_pooler.output_size
            return dets.boxes.new_zeros((0, m, m))
        logits = self.mask_head(self.mask_pooler(features, dets.boxes, dets.batch_idx))  # [D, K, M, M]
        return logits[torch.arange(logits.shape[0], device=logits.device), dets.labels - 1].float().sigmoid()

    def paste_detection_masks(
        self, mask_probs: Tensor, boxes: Tensor, batch_idx: Tensor, original_sizes: Tensor
    ) -> list[Tensor]:
        """Per-image uint8 masks Tensor[D_i, H_i, W_i] in original pixels (boxes in original pixels).

        Thresholds the pasted `mask_probs` `Tensor[D, M, M]` at `mask_threshold`; one
        `detkit.heads.mask_head.paste_masks` call per image (the images differ in size).
        """
        n = original_sizes.shape[0]
        order = torch.argsort(batch_idx, stable=True)
        host = torch.cat([original_sizes.flatten(), count_per_image(batch_idx, n)]).tolist()  # one host sync
        sizes, counts = zip(host[: 2 * n : 2], host[1 : 2 * n : 2]), host[2 * n :]
        return [
            paste_masks(mask_probs[idx], boxes[idx], (h, w), threshold=self.mask_threshold)
            for (h, w), idx in zip(sizes, order.split(counts))
        ]
