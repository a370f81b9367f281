"""RoI heads: sample proposals -> pool -> predict -> losses, or post-process into detections.

Shape shorthand:
    N images   P proposals per image (padded to P_max for matching)   G gt boxes
    R sampled / kept RoIs, packed over the batch with `batch_idx` Tensor[R]
    K classes without background (logits have K+1 columns, column 0 = background)
    D detections, packed over the batch
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms

from detkit.heads.mask_head import mask_targets, paste_masks
from detkit.heads.poolers import RoIPooler
from detkit.losses import BOX_LOSSES, CLS_LOSSES, box_regression_loss, classification_loss, uses_decoded_boxes
from detkit.losses.selection import check_loss_name
from detkit.matching import BalancedSampler, BoxCoder, Matcher
from detkit.proposals.rpn import top_k_per_image
from detkit.structures import Detections, ImageBatch, PackedTargets, batched_box_iou
from detkit.structures.containers import avoid_host_syncs, count_per_image


def pack_to_padded(boxes: Tensor, batch_idx: Tensor, num_images: int) -> tuple[Tensor, Tensor, Tensor]:
    """Packed Tensor[B, 4] with batch_idx -> (padded Tensor[N, P_max, 4], valid Tensor[N, P_max], slot Tensor[B]).

    `slot` is each box's position inside its image; boxes must be grouped by image.
    """
    counts = count_per_image(batch_idx, num_images)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(batch_idx.numel(), device=boxes.device) - starts[batch_idx]
    p_max = int(counts.max()) if num_images else 0
    padded = boxes.new_zeros((num_images, p_max, 4))
    valid = torch.zeros((num_images, p_max), dtype=torch.bool, device=boxes.device)
    padded[batch_idx, slot] = boxes
    valid[batch_idx, slot] = True
    return padded, valid, slot


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
    """Per-class boxes Tensor[R, K, 4] and scores Tensor[R, K] (class k+1 in column k) -> Detections.

    Clips to `image_sizes` Tensor[B, 2] (h, w), drops low scores and tiny boxes, runs one NMS
    per (image, class) in a single batched call and keeps the top `detections_per_image`.
    """
    r, k = scores.shape
    hw = image_sizes[batch_idx].to(boxes.dtype)
    limits = torch.stack([hw[:, 1], hw[:, 0], hw[:, 1], hw[:, 0]], 1)[:, None, :]
    boxes = torch.minimum(boxes.clamp(min=0), limits)
    labels = torch.arange(1, k + 1, device=scores.device).expand(r, k)
    img = batch_idx[:, None].expand(r, k)
    boxes, scores, labels, img = boxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1), img.reshape(-1)
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = (scores > score_threshold) & (wh >= min_box_size).all(1)
    sel = torch.nonzero(keep).squeeze(1)  # one host sync for the four selections
    boxes, scores, labels, img = boxes[sel], scores[sel], labels[sel], img[sel]
    kept = batched_nms(boxes, scores, img * (k + 1) + labels, nms_threshold)
    kept = top_k_per_image(kept, img[kept], detections_per_image)
    return Detections(
        boxes=boxes[kept],
        scores=scores[kept],
        labels=labels[kept],
        batch_idx=img[kept],
        num_images=image_sizes.shape[0],
    )


class RoIHeads(nn.Module):
    """Box branch (and optional mask branch) of Fast / Faster / Mask R-CNN."""

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
    ):
        super().__init__()
        self.box_pooler, self.box_head, self.box_predictor = box_pooler, box_head, box_predictor
        self.mask_pooler, self.mask_head = mask_pooler, mask_head
        self.num_classes = num_classes
        self.matcher = Matcher(fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=False)
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
    def has_mask(self) -> bool:
        return self.mask_head is not None

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def sample_proposals(self, proposals: Tensor, batch_idx: Tensor, targets: PackedTargets) -> dict[str, Tensor]:
        """Match proposals (plus gt boxes) to gt and sample a balanced set, for the whole batch at once.

        Returns packed RoIs with their class targets, matched gt index and regression targets.
        """
        n = targets.num_images
        if self.add_gt_as_proposals:
            proposals = torch.cat([proposals, targets.boxes.to(proposals.dtype)])
            batch_idx = torch.cat([batch_idx, targets.batch_idx])
            order = torch.sort(batch_idx, stable=True).indices
            proposals, batch_idx = proposals[order], batch_idx[order]
        padded, valid, slot = pack_to_padded(proposals, batch_idx, n)
        gt_boxes, gt_labels, gt_valid = targets.padded(min_slots=1)  # G >= 1: batches without boxes
        iou = batched_box_iou(gt_boxes, padded)  # [N, G, P_max]
        matched_idx, labels = self.matcher(iou, gt_valid)
        labels = labels.masked_fill(~valid, -1)
        pos, neg = self.sampler(labels, valid=valid)
        keep = torch.nonzero((pos | neg)[batch_idx, slot]).squeeze(1)  # packed view; one host sync
        rois, roi_batch = proposals[keep], batch_idx[keep]
        roi_slot = slot[keep]
        roi_matched = matched_idx[roi_batch, roi_slot]
        is_pos = pos[roi_batch, roi_slot]
        cls = torch.where(is_pos, gt_labels[roi_batch, roi_matched], torch.zeros_like(roi_matched))
        matched_boxes = gt_boxes[roi_batch, roi_matched]
        reg = self.box_coder.encode(matched_boxes, rois)
        # index of the matched gt in the packed targets, for mask targets
        counts = targets.per_image_counts()
        gt_start = torch.cumsum(counts, 0) - counts
        return {
            "boxes": rois,
            "batch_idx": roi_batch,
            "labels": cls,
            "regression_targets": reg,
            "matched_boxes": matched_boxes,
            "matched_in_image": roi_matched,
            "matched_packed": gt_start[roi_batch] + roi_matched,
        }

    def box_loss(self, class_logits: Tensor, box_deltas: Tensor, sampled: dict[str, Tensor]) -> dict[str, Tensor]:
        labels = sampled["labels"]
        if labels.numel():
            loss_cls = classification_loss(self.cls_loss_type, class_logits.float(), labels)
        else:
            loss_cls = class_logits.sum() * 0
        deltas = box_deltas.view(box_deltas.shape[0], box_deltas.shape[1] // 4, 4)
        if avoid_host_syncs(labels) and not uses_decoded_boxes(self.box_loss_type):
            # every RoI, the negatives contribute 0: no boolean masks (host syncs on a GPU)
            is_pos = (labels > 0)[:, None]
            column = labels if deltas.shape[1] > 1 else torch.zeros_like(labels)
            pred = deltas.gather(1, column[:, None, None].expand(-1, 1, 4))[:, 0].float()
            target = torch.where(is_pos, sampled["regression_targets"].float(), pred.detach())
            per_coord = box_regression_loss(
                self.box_loss_type, pred, target, beta=self.smooth_l1_beta, reduction="none"
            )
            loss_box = torch.where(is_pos, per_coord, 0.0).sum()
        else:
            pos = torch.nonzero(labels > 0).squeeze(1)
            if deltas.shape[1] > 1:
                pred = deltas[pos, labels[pos]]
            else:
                pred = deltas[pos, 0]
            target = sampled["regression_targets"][pos]
            if uses_decoded_boxes(self.box_loss_type):  # IoU losses compare boxes: decode against the RoIs
                pred, target = self.box_coder.decode(pred.float(), sampled["boxes"][pos]), sampled["matched_boxes"][pos]
            loss_box = box_regression_loss(
                self.box_loss_type, pred.float(), target.float(), beta=self.smooth_l1_beta, reduction="sum"
            )
        loss_box = loss_box / max(labels.numel(), 1)
        return {"loss_classifier": loss_cls, "loss_box_reg": loss_box}

    def mask_loss(
        self, features: dict[str, Tensor], sampled: dict[str, Tensor], targets: PackedTargets, images: ImageBatch
    ) -> Tensor:
        pos = torch.nonzero(sampled["labels"] > 0).squeeze(1)
        if pos.numel() == 0:
            return sum(p.sum() for p in self.mask_head.parameters()) * 0.0
        boxes, bidx, labels = sampled["boxes"][pos], sampled["batch_idx"][pos], sampled["labels"][pos]
        logits = self.mask_head(self.mask_pooler(features, boxes, bidx))  # [R, K, M, M]
        logits = logits[torch.arange(pos.numel(), device=logits.device), labels - 1]
        if targets.masks is None:
            raise ValueError("Mask R-CNN training needs targets[i]['masks'] (uint8 Tensor[K, H, W])")
        # gt masks are in original pixels: map the RoIs back instead of resizing every mask
        scale = (images.original_sizes.float() / images.image_sizes.float())[bidx]  # (sy, sx)
        orig_boxes = boxes * torch.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], 1)
        target = mask_targets(targets.masks, orig_boxes, bidx, sampled["matched_in_image"][pos], logits.shape[-1])
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        features: dict[str, Tensor],
        proposals: Tensor,
        batch_idx: Tensor,
        images: ImageBatch,
        targets: PackedTargets | None = None,
    ) -> tuple[Detections | None, dict[str, Tensor]]:
        """With targets: (None, losses). Without: (detections in resized-image pixels, {})."""
        if targets is not None:
            sampled = self.sample_proposals(proposals, batch_idx, targets)
            x = self.box_head(self.box_pooler(features, sampled["boxes"], sampled["batch_idx"]))
            class_logits, box_deltas = self.box_predictor(x)
            losses = self.box_loss(class_logits, box_deltas, sampled)
            if self.has_mask:
                losses["loss_mask"] = self.mask_loss(features, sampled, targets, images)
            return None, losses
        x = self.box_head(self.box_pooler(features, proposals, batch_idx))
        class_logits, box_deltas = self.box_predictor(x)
        dets = self.postprocess(class_logits, box_deltas, proposals, batch_idx, images.image_sizes)
        if self.has_mask:
            dets.masks = self.predict_mask_probs(features, dets)
        return dets, {}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def postprocess(
        self, class_logits: Tensor, box_deltas: Tensor, proposals: Tensor, batch_idx: Tensor, image_sizes: Tensor
    ) -> Detections:
        """Softmax, per-class decode and clip, score threshold, per-class NMS, top-k per image."""
        k1 = class_logits.shape[1]  # K + 1
        scores = F.softmax(class_logits.float(), -1)[:, 1:]  # [R, K]
        deltas = box_deltas.float().view(box_deltas.shape[0], box_deltas.shape[1] // 4, 4)
        boxes = self.box_coder.decode(deltas, proposals[:, None, :].expand(-1, deltas.shape[1], -1))  # [R, K+1 or 1, 4]
        if boxes.shape[1] == k1:
            boxes = boxes[:, 1:]
        else:
            boxes = boxes.expand(-1, k1 - 1, -1)
        return select_detections(
            boxes,
            scores,
            batch_idx,
            image_sizes,
            score_threshold=self.score_threshold,
            min_box_size=self.min_box_size,
            nms_threshold=self.nms_threshold,
            detections_per_image=self.detections_per_image,
        )

    def predict_mask_probs(self, features: dict[str, Tensor], dets: Detections) -> Tensor:
        """Mask probabilities Tensor[D, M, M] of each detection's own class."""
        if dets.boxes.shape[0] == 0:
            m = 2 * self.mask_pooler.output_size
            return dets.boxes.new_zeros((0, m, m))
        logits = self.mask_head(self.mask_pooler(features, dets.boxes, dets.batch_idx))
        return logits[torch.arange(logits.shape[0], device=logits.device), dets.labels - 1].float().sigmoid()

    def paste_masks(self, mask_probs: Tensor, boxes: Tensor, batch_idx: Tensor, original_sizes: Tensor) -> list[Tensor]:
        """Per-image uint8 masks Tensor[D_i, H_i, W_i] in original pixels (boxes in original pixels)."""
        n = original_sizes.shape[0]
        order = torch.argsort(batch_idx, stable=True)
        host = torch.cat([original_sizes.flatten(), count_per_image(batch_idx, n)]).tolist()  # one host sync
        sizes, counts = zip(host[: 2 * n : 2], host[1 : 2 * n : 2]), host[2 * n :]
        return [
            paste_masks(mask_probs[idx], boxes[idx], (h, w), threshold=self.mask_threshold)
            for (h, w), idx in zip(sizes, order.split(counts))
        ]
