"""Region Proposal Network: objectness + box deltas on every anchor, then proposal filtering.

Shape shorthand:
    N  images in the batch          L  feature levels
    A  anchors over all levels      A_l anchors on level l (H_l * W_l * anchors per location)
    G  ground-truth boxes (packed)  R  proposals kept (packed over the batch, with batch_idx)

Everything is batched: anchors are shared by all images of a padded batch, so labelling,
sampling, per-level top-k and decoding run on Tensor[N, A] at once. NMS runs per (image, level)
in `nms_per_image_and_level`: on the CPU one `batched_nms` call for the batch, elsewhere one
`nms` call per image (see there).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, nms

from detkit.losses import BOX_LOSSES, CLS_LOSSES, box_regression_loss, objectness_loss, uses_decoded_boxes
from detkit.losses.selection import check_loss_name
from detkit.matching import AnchorGenerator, BalancedSampler, BoxCoder, Matcher
from detkit.structures import ImageBatch, PackedTargets, batched_box_iou, clip_boxes, remove_small_boxes
from detkit.structures.packed import take_rows, top_k_per_image

__all__ = ["RPN", "RPNHead"]


def nms_per_image_and_level(
    boxes: Tensor,
    scores: Tensor,
    levels: Tensor,
    valid: Tensor,
    iou_threshold: float,
    top_n: int,
    *,
    num_levels: int,
    batched: bool,
) -> Tensor:
    """NMS per (image, level) of the valid candidates, then the best `top_n` of each image.

    boxes Tensor[N, K, 4] (clipped: coordinates >= 0), scores Tensor[N, K], levels Tensor[K]
    (each column's level in 0..num_levels-1, the same in every image), valid Tensor[N, K] bool
    -> rows Tensor[R]: indices into the flattened N*K candidates, grouped by image, by descending
    score inside an image.

    The one place that picks the strategy. Both keep the same rows in the same order (tested on
    the CPU) where the level offsets below add exactly; otherwise they may differ by the float
    rounding of an IoU at the threshold, as torchvision's two `batched_nms` strategies do. Equal
    scores: the per-image path keeps row order (CPU); `batched_nms` leaves them to an unstable
    sort above 1,000 boxes, kept as it is so that CPU results do not change.

    - `batched=True` (the CPU): the valid candidates of all images in one `batched_nms` call
      with (image, level) groups. torchvision loops over the groups there above 1,000 boxes,
      which is what the CPU does fastest (its NMS is quadratic in the boxes of one call).
    - `batched=False` (CUDA and other devices): one `nms` call per image, the levels of an image
      kept apart by shifting each level's boxes by `level * (max coordinate + 1)`. On CUDA,
      `batched_nms` over the batch would loop per (image, level) group above 25,000 boxes (one
      launch and one host sync each); this costs one sync per image and one for the valid rows.
      Invalid candidates stay in with score -inf and zero boxes: they come last and suppress
      nothing, so no host sync is needed to drop them before NMS.
    """
    n, k = scores.shape
    if batched:
        sel = torch.nonzero(valid.flatten()).squeeze(1)  # one host sync for the selections below
        batch_idx = torch.div(sel, k, rounding_mode="floor")
        groups = batch_idx * num_levels + levels[sel % k]
        kept = batched_nms(boxes.flatten(0, 1)[sel].float(), scores.flatten()[sel], groups, iou_threshold)
        return sel[top_k_per_image(kept, batch_idx[kept], top_n)]
    boxes = torch.where(valid[..., None], boxes.float(), 0.0)
    shifted = boxes + (levels.to(boxes) * (boxes.max() + 1))[:, None] if boxes.numel() else boxes  # [N, K, 4]
    masked = torch.where(valid, scores, float("-inf"))
    # nms sorts by score (stably on the CPU): the invalid ones come last and their zero boxes overlap nothing
    rows = [nms(shifted[i], masked[i], iou_threshold)[:top_n] + i * k for i in range(n)]  # one sync per image
    rows = torch.cat(rows) if rows else scores.new_zeros((0,), dtype=torch.int64)
    return rows[valid.flatten()[rows]]  # one sync


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then 1x1 objectness logits and 1x1 box deltas, shared across levels."""

    def __init__(self, in_channels: int, num_anchors: int, *, conv_depth: int = 1):
        super().__init__()
        layers = []
        for _ in range(conv_depth):
            layers += [nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.conv = nn.Sequential(*layers)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors, 1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor, list[int]]:
        """Features per level Tensor[N, C, H_l, W_l] -> (logits Tensor[N, A], deltas Tensor[N, A, 4], A_l per level).

        Anchor order inside a level is (y, x, anchor), matching AnchorGenerator.
        """
        logits, deltas, counts = [], [], []
        for x in features:
            t = self.conv(x)
            n, _, h, w = t.shape
            lg = self.cls_logits(t)  # [N, a, H, W], a anchors per location
            a = lg.shape[1]
            logits.append(lg.permute(0, 2, 3, 1).reshape(n, -1))  # (N, a, H, W) -> (N, H*W*a)
            # (N, a*4, H, W) -> (N, a, 4, H, W) -> (N, H, W, a, 4) -> (N, H*W*a, 4)
            deltas.append(self.bbox_pred(t).view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
            counts.append(h * w * a)
        return torch.cat(logits, 1), torch.cat(deltas, 1), counts


class RPN(nn.Module):
    """Anchors, IoU labelling and sampling for the loss, and proposal filtering.

    Counts are per image (`pre_nms_top_n` per level, as in Detectron and torchvision).

    Args:
        head: `RPNHead` (objectness logits and box deltas for every anchor).
        anchor_generator: anchors of every level, in the head's (y, x, anchor) order.
        in_features: names of the backbone outputs the RPN runs on, one per anchor level.
        fg_iou_threshold: IoU with a gt box at or above which an anchor is positive (the
            best anchor of each gt box is positive too).
        bg_iou_threshold: IoU below which an anchor is negative (between the two: ignored).
        batch_size_per_image: anchors sampled per image for the loss.
        positive_fraction: largest share of positives in a sample.
        pre_nms_top_n_train / pre_nms_top_n_test: proposals kept per image and level before
            NMS (training / evaluation mode).
        post_nms_top_n_train / post_nms_top_n_test: proposals kept per image after NMS.
        nms_threshold: IoU of the per-(image, level) NMS.
        score_threshold: proposals need an objectness probability at or above this.
        min_box_size: proposals with a side under this many pixels (resized image) are dropped.
        smooth_l1_beta: beta of the smooth L1 box loss.
        box_loss: box loss name ("smooth_l1" / "l1" / "giou" / "diou" / "ciou").
        cls_loss: objectness loss name ("ce" / "focal").
        cpu_kernels: on the CPU, NMS as one `batched_nms` call (torchvision's per-group loop);
            False runs the per-image NMS of other devices (see `nms_per_image_and_level`; set by
            `detkit.models.configure_kernels`).
    """

    def __init__(
        self,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        *,
        in_features: Sequence[str],
        fg_iou_threshold: float = 0.7,
        bg_iou_threshold: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n_train: int = 2000,
        post_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_test: int = 1000,
        nms_threshold: float = 0.7,
        score_threshold: float = 0.0,
        min_box_size: float = 1e-3,
        smooth_l1_beta: float = 1.0 / 9,
        box_loss: str = "smooth_l1",
        cls_loss: str = "ce",
        cpu_kernels: bool = True,
    ):
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.in_features = list(in_features)
        self.matcher = Matcher(fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=True)
        self.sampler = BalancedSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self.pre_nms_top_n = {True: pre_nms_top_n_train, False: pre_nms_top_n_test}
        self.post_nms_top_n = {True: post_nms_top_n_train, False: post_nms_top_n_test}
        self.nms_threshold, self.score_threshold, self.min_box_size = nms_threshold, score_threshold, min_box_size
        self.smooth_l1_beta = smooth_l1_beta
        # the losses, by name (detkit.losses.selection): "smooth_l1" / "l1" / "giou" / "diou" / "ciou", "ce" / "focal"
        self.box_loss_type = check_loss_name(box_loss, BOX_LOSSES, "box_loss")
        self.cls_loss_type = check_loss_name(cls_loss, CLS_LOSSES, "cls_loss")
        self.cpu_kernels = cpu_kernels

    def forward(
        self, features: dict[str, Tensor], batch: ImageBatch, targets: PackedTargets | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Return (proposals Tensor[R, 4] in the batch's pixels, proposal batch_idx Tensor[R], losses).

        Losses are computed when `targets` is given (training or validation loss).
        """
        feats = [features[name] for name in self.in_features]
        logits, deltas, counts = self.head(feats)
        anchor_levels = self.anchor_generator(
            [f.shape[-2:] for f in feats], device=logits.device, image_size=batch.padded_size
        )
        anchors = torch.cat(anchor_levels)  # [A, 4]
        # proposals are detached: the RoI heads take them as fixed boxes (approximate joint
        # training, as in Faster R-CNN and torchvision); the RPN learns only from its own loss
        # below, and top-k / NMS have no useful gradient anyway
        proposals = self.box_coder.decode(deltas.detach(), anchors.expand(deltas.shape[0], -1, -1))  # [N, A, 4]
        boxes, batch_idx = self.filter_proposals(proposals, logits.detach(), counts, batch.image_sizes)
        losses = {}
        if targets is not None:
            losses = self.loss(logits, deltas, anchors, targets)
        return boxes, batch_idx, losses

    @torch.no_grad()
    def filter_proposals(
        self, proposals: Tensor, logits: Tensor, counts: list[int], image_sizes: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Per-level top-k, clip, remove small / low-scoring, NMS per (image, level), post-NMS top-k.

        proposals Tensor[N, A, 4], logits Tensor[N, A] -> (boxes Tensor[R, 4], batch_idx Tensor[R]).
        """
        pre_nms = self.pre_nms_top_n[self.training]
        top_idx, level_ids, offset = [], [], 0
        for level, count in enumerate(counts):  # levels, not images: a few iterations
            k = min(pre_nms, count)
            idx = logits[:, offset : offset + count].topk(k, dim=1).indices + offset  # [N, k]
            top_idx.append(idx)
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=logits.device))
            offset += count
        top_idx = torch.cat(top_idx, 1)  # [N, K], K = sum over levels of min(pre_nms, A_l)
        levels = torch.cat(level_ids)  # [K]
        scores = torch.sigmoid(logits.gather(1, top_idx).float())  # [N, K]
        boxes = proposals.gather(1, top_idx[..., None].expand(-1, -1, 4))  # [N, K, 4]
        boxes = clip_boxes(boxes, image_sizes[:, None, :])  # each image's (resized, unpadded) size
        keep = remove_small_boxes(boxes, self.min_box_size) & (scores >= self.score_threshold)  # [N, K]
        batched = self.cpu_kernels and boxes.device.type == "cpu"
        top_n = self.post_nms_top_n[self.training]
        rows = nms_per_image_and_level(
            boxes, scores, levels, keep, self.nms_threshold, top_n, num_levels=len(counts), batched=batched
        )
        return boxes.flatten(0, 1)[rows], torch.div(rows, boxes.shape[1], rounding_mode="floor")

    def loss(self, logits: Tensor, deltas: Tensor, anchors: Tensor, targets: PackedTargets) -> dict[str, Tensor]:
        """Binary cross-entropy on sampled anchors and smooth L1 on sampled positives.

        Both are normalised by the number of sampled anchors, as in torchvision.
        """
        n = logits.shape[0]
        gt_boxes, _, gt_valid = targets.padded(min_slots=1)  # [N, G, 4], [N, G]; G >= 1 for the gather
        with torch.no_grad():
            iou = batched_box_iou(gt_boxes, anchors.expand(n, -1, -1))  # [N, G, A]
            matched_idx, labels = self.matcher(iou, gt_valid)
            del iou
            pos, neg = self.sampler(labels)
            matched = gt_boxes.gather(1, matched_idx[..., None].expand(-1, -1, 4))  # [N, A, 4]
        sampled = pos | neg
        num_sampled = sampled.sum().clamp(min=1)
        # the sampled anchors and the positives by index (N*A rows): two host syncs on a GPU
        sampled_idx = torch.nonzero(sampled.flatten()).squeeze(1)
        pos_idx = torch.nonzero(pos.flatten()).squeeze(1)
        objectness = objectness_loss(
            self.cls_loss_type,
            logits.flatten()[sampled_idx].float(),
            pos.flatten()[sampled_idx].float(),
            reduction="sum",
        )
        pos_deltas, pos_matched = take_rows(pos_idx, deltas.flatten(0, 1), matched.flatten(0, 1))
        pos_anchors = anchors[pos_idx % anchors.shape[0]]  # the same anchors in every image
        if uses_decoded_boxes(self.box_loss_type):  # IoU losses compare boxes: decode against the anchors
            pred, target = self.box_coder.decode(pos_deltas.float(), pos_anchors), pos_matched
        else:
            pred, target = pos_deltas.float(), self.box_coder.encode(pos_matched, pos_anchors)
        box = box_regression_loss(self.box_loss_type, pred, target.float(), beta=self.smooth_l1_beta, reduction="sum")
        return {"loss_rpn_objectness": objectness / num_sampled, "loss_rpn_box": box / num_sampled}
