"""R-CNN (Girshick et al., CVPR 2014): warp every region proposal to a fixed size and run a CNN on it.

Calling convention (as `TwoStageDetector`, with external proposals):
    losses = model(images, targets, proposals=proposals)   # dict of named scalar losses
    detections = model.predict(images, proposals=proposals) # one dict per image, original pixels

`proposals` holds one `Tensor[P_i, 4]` XYXY per image in original-image pixels (selective
search, read from a `ProposalCache`, e.g. `target["proposals"]` of `detkit.data.WithProposals`);
the base `detkit.models.base.Detector` validates and packs them.

Per region: the box is enlarged so that, once warped to S x S, `context_padding` pixels of
image context surround it (the paper's p = 16 at S = 227/224); all crops of a batch come from
one `roi_align` call on the normalised image batch (outside the image: zeros = the mean
colour, as in the paper). A CNN (backbone + max pooling + fc6/fc7) maps each crop to a
feature vector; on top sit either a softmax classifier (the paper's fine-tuning stage) or
one linear SVM per class (the paper's detector, hinge loss with hard negative mining), and
a class-specific box regressor.

Differences from the paper, on purpose: everything trains jointly and online (no feature
cache, no separate SVM / ridge-regression stages); hard negatives are mined inside each
mini-batch; box regression reads the fc7 features by default (the paper: pool5, which
`box_features="pool5"` selects) with smooth L1 on normalised deltas (`bbox_reg_weights`)
instead of ridge regression.

Shape shorthand:
    N images   P proposals per image (padded to P_max)   G gt boxes (Gmax per image)
    B candidate regions (proposals + gt) packed over the batch
    R sampled regions (training) or all proposals (inference), packed with `batch_idx`
    S crop size   K classes without background   D feature size   E detections
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, TypedDict, Unpack

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detkit.backbones import build_backbone
from detkit.heads.box_head import ClassRows, TwoFCHead
from detkit.heads.postprocess import ClassDetectionsMixin
from detkit.heads.roi_align_cpu import roi_align
from detkit.losses import BOX_LOSSES, box_regression_loss, multiclass_hinge_loss, uses_decoded_boxes
from detkit.losses.selection import check_loss_name
from detkit.matching import BalancedSampler, BoxCoder
from detkit.models.base import Detector
from detkit.models.builders import check_features, default_freeze_at
from detkit.models.registry import register_keywords, register_model
from detkit.models.transform import DetectionTransform
from detkit.structures import Detections, ImageBatch, PackedTargets, batched_box_iou
from detkit.structures.packed import PackedRows, pack_to_padded, take_rows

__all__ = [
    "RCNN",
    "RCNNRules",
    "CropFeatureHead",
    "SampledRegions",
    "build_rcnn",
    "context_padded_boxes",
    "hard_negative_mask",
    "warp_regions",
]

CLASSIFIERS = ("softmax", "svm")


# --------------------------------------------------------------------------- helpers
def context_padded_boxes(boxes: Tensor, crop_size: int, padding: float) -> Tensor:
    """Enlarge `Tensor[R, 4]` boxes about their centres for `padding` px of context at the warped size.

    Once the result is warped to `crop_size`, the original box fills the central
    `crop_size - 2 * padding` pixels: width and height grow by
    `crop_size / (crop_size - 2 * padding)` each (anisotropic, as the warp itself).
    """
    if not 0 <= 2 * padding < crop_size:
        raise ValueError(f"context padding must lie in [0, crop_size / 2), got {padding} for crop_size {crop_size}")
    scale = crop_size / (crop_size - 2 * padding)
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * (0.5 * scale)
    return torch.cat([centre - half, centre + half], dim=1)


def warp_regions(
    images: Tensor,
    boxes: Tensor,
    batch_idx: Tensor,
    crop_size: int,
    padding: float = 0.0,
    *,
    cpu_kernels: bool = True,
) -> Tensor:
    """Warp regions of a batch to fixed-size crops, all in one `roi_align` call.

    Args:
        images: `Tensor[N, C, H, W]` (normalised, padded) image batch.
        boxes: `Tensor[R, 4]` XYXY in `images`' pixels; batch_idx: `Tensor[R]` their images.
        crop_size: S.
        padding: context pixels at the warped size (see `context_padded_boxes`).
        cpu_kernels: detkit's threaded RoIAlign on the CPU (False: torchvision's; see `roi_align`).
    Returns:
        `Tensor[R, C, S, S]`; samples outside the image (beyond its 1-px border) are 0.
    """
    padded = context_padded_boxes(boxes.float(), crop_size, padding) if padding else boxes.float()
    rois = torch.cat([batch_idx[:, None].to(padded.dtype), padded], dim=1)  # float32: see roi_align
    # sampling_ratio=0: ceil(box / S) samples per bin, i.e. area averaging when shrinking
    return roi_align(
        images, rois, (crop_size, crop_size), spatial_scale=1.0, sampling_ratio=0, aligned=True, cpu_kernels=cpu_kernels
    )


def hard_negative_mask(scores: Tensor, negatives: Tensor, num_hard: int) -> Tensor:
    """Per class, the `num_hard` negatives with the highest scores (the hardest for an SVM).

    Args:
        scores: `Tensor[R, K]` classifier scores.
        negatives: `Tensor[R, K]` bool, region r is a negative of class k.
        num_hard: negatives kept per class (all of them if fewer).
    Returns:
        `Tensor[R, K]` bool, a subset of `negatives`.
    """
    if scores.shape != negatives.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and negatives {tuple(negatives.shape)} must have the same shape"
        )
    keep = torch.zeros_like(negatives)
    k = min(int(num_hard), scores.shape[0])
    if k <= 0:
        return keep
    masked = scores.detach().float().masked_fill(~negatives, float("-inf"))
    top = masked.topk(k, dim=0).indices  # [k, K]
    return keep.scatter_(0, top, True) & negatives


@dataclass(kw_only=True)
class SampledRegions(PackedRows):
    """R-CNN's training regions, packed over the batch (R of them); `regions[index]` indexes every field.

    Attributes:
        boxes: `Tensor[R, 4]` in the batch's pixels; batch_idx: `Tensor[R]` int64 image of each region.
        labels: `Tensor[R]` int64, 0 background, else the class of the matched object.
        class_iou: `Tensor[R, K]` best IoU with the objects of each class, -1 without any.
        svm_positive: `Tensor[R]` bool, an SVM positive of its class `labels`.
        matched_gt: `Tensor[R]` int64 the best-overlapping gt box among its image's (0 without any).
        reg_mask: `Tensor[R]` bool, has a box-regression target (best IoU >= `reg_iou_threshold`).
        reg_labels: `Tensor[R]` int64 class of the matched object (the regressor's column).
        reg_targets: `Tensor[R, 4]` deltas encoding the matched gt box, zeros where `reg_mask` is False.
    """

    row_fields: ClassVar[tuple[str, ...]] = (
        "boxes",
        "batch_idx",
        "labels",
        "class_iou",
        "svm_positive",
        "matched_gt",
        "reg_mask",
        "reg_labels",
        "reg_targets",
    )

    boxes: Tensor
    batch_idx: Tensor
    labels: Tensor
    class_iou: Tensor
    svm_positive: Tensor
    matched_gt: Tensor
    reg_mask: Tensor
    reg_labels: Tensor
    reg_targets: Tensor


class CropFeatureHead(nn.Module):
    """Feature map of a crop `Tensor[R, C, h, w]` -> adaptive max pool to `pool_size` -> fc6 -> fc7 -> `Tensor[R, D]`.

    For VGG-16 at S = 224, conv5_3 is 14 x 14 and the pool is the network's own pool5.
    `forward(x, return_pooled=True)` also returns the flattened pool5 `Tensor[R, pooled_dim]`.
    """

    def __init__(self, in_channels: int, pool_size: int, fc_dim: int, *, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveMaxPool2d(pool_size)
        self.fcs = TwoFCHead(in_channels, pool_size, fc_dim, dropout=dropout)
        self.out_channels = fc_dim
        self.pooled_dim = in_channels * pool_size * pool_size

    def forward(self, x: Tensor, *, return_pooled: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        pooled = self.pool(x)
        out = self.fcs(pooled)
        return (out, pooled.flatten(1)) if return_pooled else out


# --------------------------------------------------------------------------- model
class RCNN(ClassDetectionsMixin, Detector):
    """R-CNN: per-region CNN features, softmax or per-class SVM scores, class-specific box regression.

    Args:
        backbone: a detkit backbone run on every crop; `feature` names its output used.
        head: crop feature map -> `Tensor[R, D]` (`out_channels` = D), e.g. `CropFeatureHead`.
        num_classes: K, background excluded.
        transform: image normalisation / resizing (default: ImageNet normalisation, no resizing,
            so crops come from the original pixels as in the paper).
        crop_size: S, the warped region size.
        context_padding: p, context pixels around the box at the warped size.
        classifier: "softmax" (cross-entropy over K+1 classes) or "svm" (one linear SVM per
            class, one-vs-rest hinge loss with hard negative mining).
        fg_iou_threshold / bg_iou_threshold: regions with best IoU >= fg are positives of the
            matched class, < bg background (fine-tuning labels of the paper: 0.5 / 0.5).
        reg_iou_threshold: regions with best IoU >= this get a box-regression target (0.6).
        batch_size / positive_fraction: regions sampled per mini-batch (all images together)
            and the largest positive share: the paper's 32 positives + 96 background = 128.
        add_gt_as_proposals: ground-truth boxes join the candidates in training.
        svm_fg_iou_threshold: SVM positives; None = ground-truth boxes only (the paper), else
            regions with best IoU >= this.
        svm_bg_iou_threshold: a region is a negative of class k if its IoU with every
            class-k object is below this (0.3); between the two it is ignored for class k.
        svm_hard_negatives: negatives per class kept by hard negative mining, per mini-batch.
        svm_margin: hinge margin.
        bbox_reg_weights: (wx, wy, ww, wh) of the box coder (delta normalisation).
        box_features: what the box regressor reads: "fc7" (default) or "pool5", the paper's
            choice (needs a head with `return_pooled`, e.g. `CropFeatureHead`).
        box_loss: "smooth_l1" (default), "l1", or "giou" / "diou" / "ciou" on decoded boxes.
        smooth_l1_beta: smooth L1 switch point of the box loss.
        score_threshold: detections below are dropped; None = 0.05 (softmax) or -1.0 (svm scores).
        nms_threshold: per-class NMS IoU (0.3 in the paper).
        detections_per_image: top-k kept per image.
        test_batch_size: crops per CNN call at inference.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        num_classes: int,
        feature: str | None = None,
        transform: DetectionTransform | None = None,
        crop_size: int = 224,
        context_padding: float = 16.0,
        classifier: str = "softmax",
        fg_iou_threshold: float = 0.5,
        bg_iou_threshold: float = 0.5,
        reg_iou_threshold: float = 0.6,
        batch_size: int = 128,
        positive_fraction: float = 0.25,
        add_gt_as_proposals: bool = True,
        svm_fg_iou_threshold: float | None = None,
        svm_bg_iou_threshold: float = 0.3,
        svm_hard_negatives: int = 32,
        svm_margin: float = 1.0,
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        box_features: str = "fc7",
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 1.0,
        score_threshold: float | None = None,
        nms_threshold: float = 0.3,
        detections_per_image: int = 100,
        test_batch_size: int = 256,
        min_box_size: float = 1e-2,
    ):
        super().__init__()
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        if box_features not in ("fc7", "pool5"):
            raise ValueError(f"box_features must be 'fc7' or 'pool5', got {box_features!r}")
        if box_features == "pool5" and not hasattr(head, "pooled_dim"):
            raise ValueError(f"box_features='pool5' needs a head with `pooled_dim`, got {type(head).__name__}")
        if bg_iou_threshold > fg_iou_threshold:
            raise ValueError(f"bg_iou_threshold ({bg_iou_threshold}) must be <= fg_iou_threshold ({fg_iou_threshold})")
        specs = backbone.feature_specs()
        [self.feature] = check_features(specs, [feature or list(specs)[-1]])
        context_padded_boxes(torch.zeros(0, 4), crop_size, context_padding)  # validates the pair
        self.backbone, self.head = backbone, head
        self.transform = (
            transform if transform is not None else DetectionTransform(min_size=None, max_size=None, size_divisible=1)
        )
        self.num_classes, self.classifier = num_classes, classifier
        dim = head.out_channels
        self.cls_score = nn.Linear(dim, num_classes + 1 if classifier == "softmax" else num_classes)
        self.box_features = box_features
        self.bbox_pred = nn.Linear(head.pooled_dim if box_features == "pool5" else dim, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

        self.crop_size, self.context_padding = int(crop_size), float(context_padding)
        self.fg_iou_threshold, self.bg_iou_threshold = float(fg_iou_threshold), float(bg_iou_threshold)
        self.reg_iou_threshold = float(reg_iou_threshold)
        self.sampler = BalancedSampler(batch_size, positive_fraction)
        self.add_gt_as_proposals = add_gt_as_proposals
        self.svm_fg_iou_threshold, self.svm_bg_iou_threshold = svm_fg_iou_threshold, float(svm_bg_iou_threshold)
        self.svm_hard_negatives, self.svm_margin = int(svm_hard_negatives), float(svm_margin)
        self.box_coder = BoxCoder(weights=bbox_reg_weights)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.box_loss_type = check_loss_name(box_loss, BOX_LOSSES, "box_loss")
        if score_threshold is None:
            score_threshold = 0.05 if classifier == "softmax" else -1.0
        self.score_threshold, self.nms_threshold = float(score_threshold), float(nms_threshold)
        self.detections_per_image, self.test_batch_size = int(detections_per_image), int(test_batch_size)
        self.min_box_size = float(min_box_size)
        self.cpu_kernels = True  # the crop warp's RoIAlign (see `detkit.models.configure_kernels`)

    @property
    def requires_proposals(self) -> bool:
        return True

    def class_rows(self) -> dict[str, ClassRows]:
        """Softmax logits have a background row, SVM scores none; box deltas are 4 rows per class, no background."""
        softmax = self.classifier == "softmax"
        return {
            "cls_score.weight": ClassRows(1, softmax),
            "cls_score.bias": ClassRows(1, softmax),
            "bbox_pred.weight": ClassRows(4, False),
            "bbox_pred.bias": ClassRows(4, False),
        }

    # ------------------------------------------------------------------ network
    def region_features(self, images: Tensor, boxes: Tensor, batch_idx: Tensor) -> tuple[Tensor, Tensor]:
        """Warp regions `Tensor[R, 4]` of the batch `Tensor[N, 3, Hp, Wp]` and embed them.

        Returns the classifier's input `Tensor[R, D]` and the box regressor's (the same, or pool5).
        """
        crops = warp_regions(
            images, boxes, batch_idx, self.crop_size, self.context_padding, cpu_kernels=self.cpu_kernels
        )
        feature_map = self.backbone(crops)[self.feature]
        if self.box_features == "pool5":
            return self.head(feature_map, return_pooled=True)
        x = self.head(feature_map)
        return x, x

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def sample_regions(self, proposals: Tensor, batch_idx: Tensor, targets: PackedTargets) -> SampledRegions:
        """Label candidates (proposals + gt) by IoU and sample a balanced mini-batch, vectorised over the batch.

        proposals `Tensor[B, 4]` with `batch_idx` `Tensor[B]` (grouped by image), in the batch's
        pixels -> the R sampled regions with their targets (see `SampledRegions`).
        """
        device = proposals.device
        is_gt = torch.zeros(proposals.shape[0], dtype=torch.bool, device=device)
        if self.add_gt_as_proposals and targets.boxes.numel():
            proposals = torch.cat([proposals, targets.boxes.to(proposals.dtype)])
            batch_idx = torch.cat([batch_idx, targets.batch_idx])
            is_gt = torch.cat([is_gt, torch.ones_like(targets.batch_idx, dtype=torch.bool)])
            order = torch.sort(batch_idx, stable=True).indices  # group by image again
            proposals, batch_idx, is_gt = take_rows(order, proposals, batch_idx, is_gt)
        b, k = proposals.shape[0], self.num_classes
        gt_boxes, gt_labels, gt_valid = targets.padded()  # [N, Gmax, 4], [N, Gmax], [N, Gmax]
        if gt_boxes.shape[1] and b:
            padded, _, slot = pack_to_padded(proposals, batch_idx, targets.num_images)
            iou = batched_box_iou(gt_boxes, padded).masked_fill(~gt_valid[:, :, None], -1.0)  # [N, Gmax, P_max]
            iou = iou[batch_idx, :, slot]  # padded -> packed: [B, Gmax]
            best_iou, best_gt = iou.max(dim=1)
            gt_cls = gt_labels[batch_idx]  # [B, Gmax], 0 in padding
            class_iou = iou.new_full((b, k), -1.0).scatter_reduce(1, (gt_cls - 1).clamp(min=0), iou, reduce="amax")
        else:
            best_iou = proposals.new_full((b,), -1.0)
            best_gt = torch.zeros(b, dtype=torch.int64, device=device)
            class_iou = proposals.new_full((b, k), -1.0)
        matched_cls = gt_labels[batch_idx, best_gt] if gt_labels.shape[1] else torch.zeros_like(best_gt)
        labels = torch.where(best_iou >= self.fg_iou_threshold, matched_cls, 0)
        sample_labels = torch.where(
            best_iou >= self.fg_iou_threshold, 1, torch.where(best_iou < self.bg_iou_threshold, 0, -1)
        )
        pos, neg = self.sampler(sample_labels[None])  # one row: sampled over the whole batch
        keep = torch.nonzero((pos | neg)[0]).squeeze(1)

        svm_positive = is_gt if self.svm_fg_iou_threshold is None else best_iou >= self.svm_fg_iou_threshold
        candidates = SampledRegions(
            boxes=proposals,
            batch_idx=batch_idx,
            labels=labels,
            class_iou=class_iou,
            svm_positive=svm_positive & (labels > 0),
            matched_gt=best_gt,
            reg_mask=best_iou >= self.reg_iou_threshold,
            reg_labels=matched_cls,
            reg_targets=proposals.new_zeros((b, 4)),
        )
        sampled = candidates[keep]
        if bool(sampled.reg_mask.any()):
            idx = torch.nonzero(sampled.reg_mask).squeeze(1)
            matched = gt_boxes[sampled.batch_idx[idx], sampled.matched_gt[idx]]
            sampled.reg_targets[idx] = self.box_coder.encode(matched, sampled.boxes[idx])
        return sampled

    def classifier_loss(self, scores: Tensor, sampled: SampledRegions) -> Tensor:
        """Cross-entropy over `Tensor[R, K+1]` logits, or the one-vs-rest SVM hinge loss over `Tensor[R, K]` scores."""
        labels = sampled.labels
        r = labels.numel()
        if r == 0:
            return scores.sum() * 0.0
        if self.classifier == "softmax":
            return F.cross_entropy(scores.float(), labels)
        k = self.num_classes
        classes = torch.arange(1, k + 1, device=labels.device)
        positives = sampled.svm_positive[:, None] & (labels[:, None] == classes)  # [R, K]
        negatives = (sampled.class_iou < self.svm_bg_iou_threshold) & ~positives
        active = positives | hard_negative_mask(scores, negatives, self.svm_hard_negatives)
        target = torch.where(sampled.svm_positive, labels - 1, k)  # k: a negative for every class
        loss = multiclass_hinge_loss(
            scores.float(), target, margin=self.svm_margin, mode="one_vs_rest", weight=active.float(), reduction="sum"
        )
        return loss / r

    def box_loss(self, box_deltas: Tensor, sampled: SampledRegions) -> Tensor:
        """Smooth L1 on the matched class's deltas of regions with IoU >= reg_iou_threshold, / R."""
        idx = torch.nonzero(sampled.reg_mask).squeeze(1)
        deltas = box_deltas.view(box_deltas.shape[0], self.num_classes, 4)
        pred, target = deltas[idx, sampled.reg_labels[idx] - 1].float(), sampled.reg_targets[idx]
        if uses_decoded_boxes(self.box_loss_type):  # IoU losses compare boxes: decode both against the regions
            regions = sampled.boxes[idx]
            pred, target = self.box_coder.decode(pred, regions), self.box_coder.decode(target, regions)
        loss = box_regression_loss(self.box_loss_type, pred, target, beta=self.smooth_l1_beta, reduction="sum")
        return loss / max(sampled.labels.numel(), 1)

    # ------------------------------------------------------------------ API
    def batch_losses(self, batch: ImageBatch, targets: PackedTargets, *, proposals=None) -> dict[str, Tensor]:
        boxes, batch_idx = self.pack_proposals(proposals, batch)
        sampled = self.sample_regions(boxes, batch_idx, targets)
        x, x_box = self.region_features(batch.tensor, sampled.boxes, sampled.batch_idx)
        scores, box_deltas = self.cls_score(x), self.bbox_pred(x_box)
        return {
            "loss_classifier": self.classifier_loss(scores, sampled),
            "loss_box_reg": self.box_loss(box_deltas, sampled),
        }

    def batch_detections(self, batch: ImageBatch, *, proposals=None) -> Detections:
        """Score every proposal in chunks of `test_batch_size` crops; `scores`: softmax probabilities or SVM scores."""
        boxes, batch_idx = self.pack_proposals(proposals, batch)
        k = self.num_classes
        scores, deltas = [], []
        for start in range(0, boxes.shape[0], self.test_batch_size):
            x, x_box = self.region_features(
                batch.tensor,
                boxes[start : start + self.test_batch_size],
                batch_idx[start : start + self.test_batch_size],
            )
            scores.append(self.cls_score(x).float())
            deltas.append(self.bbox_pred(x_box).float())
        width = k + 1 if self.classifier == "softmax" else k
        scores = torch.cat(scores) if scores else boxes.new_zeros((0, width))
        deltas = torch.cat(deltas) if deltas else boxes.new_zeros((0, 4 * k))
        if self.classifier == "softmax":
            scores = F.softmax(scores, dim=1)[:, 1:]
        dets = self.postprocess(scores, deltas, boxes, batch_idx, batch.image_sizes)
        return dets.resize(batch.image_sizes, batch.original_sizes)  # boxes to original pixels


# --------------------------------------------------------------------------- builders
class RCNNRules(TypedDict, total=False):
    """The keywords of `RCNN` every registered R-CNN variant leaves at their defaults: classifier,
    labelling, sampling, losses, post-processing. Types, defaults and meaning: `RCNN`."""

    classifier: str
    fg_iou_threshold: float
    bg_iou_threshold: float
    reg_iou_threshold: float
    batch_size: int
    positive_fraction: float
    add_gt_as_proposals: bool
    svm_fg_iou_threshold: float | None
    svm_bg_iou_threshold: float
    svm_hard_negatives: int
    svm_margin: float
    bbox_reg_weights: tuple[float, float, float, float]
    box_loss: str
    smooth_l1_beta: float
    score_threshold: float | None
    nms_threshold: float
    detections_per_image: int
    min_box_size: float


register_keywords(RCNNRules, RCNN)


def build_rcnn(
    backbone: nn.Module,
    *,
    num_classes: int,
    feature: str | None = None,
    crop_size: int = 224,
    context_padding: float = 16.0,
    pool_size: int = 7,
    representation_size: int = 4096,
    dropout: float = 0.5,
    box_features: str = "fc7",
    test_batch_size: int = 256,
    min_size: int | None = None,
    max_size: int | None = None,
    **kwargs: Unpack[RCNNRules],
) -> RCNN:
    """R-CNN around `backbone`, its head (max pool to `pool_size`, fc6 / fc7 of `representation_size`
    with `dropout`) sized from the backbone's feature specs; images resized to `min_size` / `max_size`
    (None: as given, as the paper). The other keywords are `RCNN`'s, where they are documented."""
    specs = backbone.feature_specs()
    [feature] = check_features(specs, [feature or list(specs)[-1]])
    head = CropFeatureHead(specs[feature].channels, pool_size, representation_size, dropout=dropout)
    transform = DetectionTransform(min_size=min_size, max_size=max_size, size_divisible=1)
    return RCNN(
        backbone,
        head,
        num_classes=num_classes,
        feature=feature,
        transform=transform,
        crop_size=crop_size,
        context_padding=context_padding,
        box_features=box_features,
        test_batch_size=test_batch_size,
        **kwargs,
    )


@register_model("rcnn_vgg16")
def rcnn_vgg16(
    *,
    num_classes: int,
    backbone_weights: str | None = None,
    freeze_at: int | None = None,
    crop_size: int = 224,
    context_padding: float = 16.0,
    pool_size: int = 7,
    representation_size: int = 4096,
    dropout: float = 0.5,
    box_features: str = "fc7",
    test_batch_size: int = 256,
    min_size: int | None = None,
    max_size: int | None = None,
    **kwargs: Unpack[RCNNRules],
) -> RCNN:
    """The R-CNN paper's model on VGG-16: 224 x 224 warps with 16 px context, pool5, fc6/fc7 4096 with dropout.

    Keywords: `build_rcnn` and `RCNN`; `backbone_weights`: ImageNet weights, `freeze_at`: stages frozen
    (default: conv1-conv2 when fine-tuning, as Fast R-CNN).
    """
    freeze_at = default_freeze_at(freeze_at, backbone_weights)  # conv1-conv2 fixed when fine-tuning, as Fast R-CNN
    backbone = build_backbone("vgg16", weights=backbone_weights, out_features=("c5",), freeze_at=freeze_at)
    return build_rcnn(
        backbone,
        num_classes=num_classes,
        crop_size=crop_size,
        context_padding=context_padding,
        pool_size=pool_size,
        representation_size=representation_size,
        dropout=dropout,
        box_features=box_features,
        test_batch_size=test_batch_size,
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )


@register_model("rcnn_tiny")
def rcnn_tiny(
    *,
    num_classes: int,
    norm: str = "bn",
    backbone_weights: str | None = None,
    crop_size: int = 64,
    context_padding: float = 4.0,
    pool_size: int = 4,
    representation_size: int = 256,
    dropout: float = 0.0,
    box_features: str = "fc7",
    test_batch_size: int = 512,
    min_size: int | None = None,
    max_size: int | None = None,
    **kwargs: Unpack[RCNNRules],
) -> RCNN:
    """R-CNN on the 7-conv `simple_convnet` (stride 8) for the shapes data set on a CPU.

    64 x 64 warps with 4 px of context (the paper's 16 / 224 share of the crop), a 4 x 4 max
    pool of c3 and two 256-d fc layers. Keywords: `build_rcnn` and `RCNN`; `norm`, `backbone_weights`:
    the backbone's.
    """
    backbone = build_backbone("simple_convnet", weights=backbone_weights, out_features=("c3",), norm=norm)
    return build_rcnn(
        backbone,
        num_classes=num_classes,
        crop_size=crop_size,
        context_padding=context_padding,
        pool_size=pool_size,
        representation_size=representation_size,
        dropout=dropout,
        box_features=box_features,
        test_batch_size=test_batch_size,
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )
