"""Fast R-CNN (Girshick, ICCV 2015): one backbone pass per image, RoI max pooling of external proposals.

A `TwoStageDetector` without RPN: `model(images, targets, proposals=...)` returns the losses,
`model.predict(images, proposals=...)` the detections, with one `Tensor[P_i, 4]` XYXY of
proposals per image in original-image pixels (selective search from a `ProposalCache`).

Paper settings kept by the builders: RoIPool 7 x 7, fc6/fc7 (+ dropout for VGG-16), softmax
over K+1 classes and class-specific box regression trained jointly (cross-entropy + smooth
L1 with beta 1), 64 RoIs per image with 25% foreground (IoU >= 0.5) and background drawn from
IoU in [0.1, 0.5), per-class NMS at 0.3.

Shape shorthand: N images, G gt slots per image, P proposals per image.
"""

from __future__ import annotations

from typing import Sequence, TypedDict, Unpack

from torch import Tensor

from detkit.backbones import build_backbone
from detkit.heads.roi_heads import RoIHeads
from detkit.matching import Matcher
from detkit.models.builders import build_roi_heads, build_transform, check_features, default_freeze_at
from detkit.models.registry import register_keywords, register_model
from detkit.models.transform import DetectionTransform
from detkit.models.two_stage import TwoStageDetector

__all__ = ["BackgroundBandMatcher", "FastRCNN", "FastRCNNRules", "build_fast_rcnn"]


class BackgroundBandMatcher:
    """A `Matcher` whose negatives are only predictions with best IoU in [bg_iou_low, bg_iou_threshold).

    Fast R-CNN's background band [0.1, 0.5): predictions overlapping no object by at least
    `bg_iou_low` are ignored (-1), a heuristic for hard example mining. Images without a
    ground-truth box keep all their negatives. Drop-in for `RoIHeads.matcher`.

    Returns what `Matcher.__call__` does: matched_idx `Tensor[N, P]`, labels `Tensor[N, P]`.
    """

    def __init__(self, fg_iou_threshold: float = 0.5, bg_iou_threshold: float = 0.5, bg_iou_low: float = 0.1):
        if not 0.0 <= bg_iou_low <= bg_iou_threshold:
            raise ValueError(f"need 0 <= bg_iou_low ({bg_iou_low}) <= bg_iou_threshold ({bg_iou_threshold})")
        self.matcher = Matcher(fg_iou_threshold, bg_iou_threshold, allow_low_quality_matches=False)
        self.bg_iou_low = float(bg_iou_low)

    def __repr__(self) -> str:
        m = self.matcher
        return f"{type(self).__name__}(fg={m.high_threshold}, bg=[{self.bg_iou_low}, {m.low_threshold}))"

    def __call__(self, iou: Tensor, gt_valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """iou `Tensor[N, G, P]`, gt_valid `Tensor[N, G]` bool -> (matched_idx, labels), both `Tensor[N, P]`."""
        matched_idx, labels = self.matcher(iou, gt_valid)
        if self.bg_iou_low <= 0 or iou.shape[1] == 0 or iou.shape[2] == 0:
            return matched_idx, labels
        if gt_valid is None:
            best, has_gt = iou.max(dim=1).values, True
        else:
            best = iou.masked_fill(~gt_valid[:, :, None], -1.0).max(dim=1).values
            has_gt = gt_valid.any(dim=1, keepdim=True)
        too_easy = (labels == 0) & (best < self.bg_iou_low) & has_gt
        return matched_idx, labels.masked_fill(too_easy, -1)


class FastRCNN(TwoStageDetector):
    """`TwoStageDetector` without RPN: it requires `proposals` (ValueError naming the expected form)."""

    def __init__(self, backbone, roi_heads: RoIHeads, *, transform: DetectionTransform | None = None, num_classes: int):
        super().__init__(backbone, roi_heads, rpn=None, transform=transform, num_classes=num_classes)


class FastRCNNRules(TypedDict, total=False):
    """The keywords of `build_fast_rcnn` every registered Fast R-CNN variant leaves at their defaults:
    sampling share, matching, losses, post-processing, padding. Types and defaults: `build_fast_rcnn`."""

    roi_positive_fraction: float
    roi_fg_iou_threshold: float
    roi_bg_iou_threshold: float
    roi_bg_iou_low: float
    box_loss: str
    cls_loss: str
    smooth_l1_beta: float
    box_score_threshold: float
    box_nms_threshold: float
    detections_per_image: int
    size_divisible: int
    memory_format: str


def build_fast_rcnn(
    backbone,
    *,
    num_classes: int,
    feature: str | None = None,
    # sizes
    roi_batch_size_per_image: int = 64,
    pool_type: str = "pool",
    box_resolution: int = 7,
    representation_size: int = 4096,
    dropout: float = 0.0,
    min_size: int | Sequence[int] | None = 600,
    max_size: int | None = 1000,
    # rules
    roi_positive_fraction: float = 0.25,
    roi_fg_iou_threshold: float = 0.5,
    roi_bg_iou_threshold: float = 0.5,
    roi_bg_iou_low: float = 0.1,
    box_loss: str = "smooth_l1",
    cls_loss: str = "ce",
    smooth_l1_beta: float = 1.0,
    box_score_threshold: float = 0.05,
    box_nms_threshold: float = 0.3,
    detections_per_image: int = 100,
    size_divisible: int = 32,
    memory_format: str = "auto",
) -> FastRCNN:
    """Fast R-CNN around `backbone`: RoIPool of one feature map, fc6/fc7, softmax + class-specific boxes.

    The one place the Fast R-CNN keywords are documented:
    - RoI head on `feature` (default: the backbone's last output): `pool_type` ("pool" as the paper,
      "align") at `box_resolution`, fc6 / fc7 of `representation_size` with `dropout` after each.
    - `roi_batch_size_per_image` RoIs sampled per image with at most `roi_positive_fraction` positives
      (IoU >= `roi_fg_iou_threshold`), background from IoU in [`roi_bg_iou_low`, `roi_bg_iou_threshold`)
      (`roi_bg_iou_low` = 0 turns the band into [0, 0.5); see `BackgroundBandMatcher`).
    - Losses: `box_loss` ("smooth_l1" with `smooth_l1_beta`, "l1", "giou", "diou", "ciou"), `cls_loss` ("ce", "focal").
    - Detections: score >= `box_score_threshold`, per-class NMS at `box_nms_threshold`, top `detections_per_image`.
    - Images: shorter side `min_size`, longer at most `max_size` (None: as given), padded to a multiple of
      `size_divisible`, laid out as `memory_format` (see `DetectionTransform`).
    """
    specs = backbone.feature_specs()
    roi_features = check_features(specs, [feature or list(specs)[-1]])  # one level: the last by default
    roi_heads = build_roi_heads(
        backbone,
        num_classes=num_classes,
        roi_features=roi_features,
        pool_type=pool_type,
        box_resolution=box_resolution,
        representation_size=representation_size,
        dropout=dropout,
        box_loss=box_loss,
        cls_loss=cls_loss,
        smooth_l1_beta=float(smooth_l1_beta),
        roi_batch_size_per_image=roi_batch_size_per_image,
        roi_positive_fraction=roi_positive_fraction,
        roi_matcher=BackgroundBandMatcher(roi_fg_iou_threshold, roi_bg_iou_threshold, roi_bg_iou_low),
        box_score_threshold=box_score_threshold,
        box_nms_threshold=box_nms_threshold,
        detections_per_image=detections_per_image,
    )
    transform = build_transform(
        min_size=min_size, max_size=max_size, size_divisible=size_divisible, memory_format=memory_format
    )
    return FastRCNN(backbone, roi_heads, transform=transform, num_classes=num_classes)


register_keywords(FastRCNNRules, build_fast_rcnn)


@register_model("fast_rcnn_vgg16")
def fast_rcnn_vgg16(
    *,
    num_classes: int,
    backbone_weights: str | None = None,
    freeze_at: int | None = None,
    roi_batch_size_per_image: int = 64,
    pool_type: str = "pool",
    box_resolution: int = 7,
    representation_size: int = 4096,
    dropout: float = 0.5,
    min_size: int | Sequence[int] | None = 600,
    max_size: int | None = 1000,
    **kwargs: Unpack[FastRCNNRules],
) -> FastRCNN:
    """The Fast R-CNN paper's model: VGG-16 conv5_3 (stride 16), RoIPool 7x7, fc6/fc7 4096, images at 600 px.

    Keywords: `build_fast_rcnn`; `backbone_weights`: ImageNet weights, `freeze_at`: stages frozen
    (default: conv1-conv2 when fine-tuning, as the paper).
    """
    freeze_at = default_freeze_at(freeze_at, backbone_weights)  # the paper fine-tunes from conv3_1 on
    backbone = build_backbone("vgg16", weights=backbone_weights, out_features=("c5",), freeze_at=freeze_at)
    return build_fast_rcnn(
        backbone,
        num_classes=num_classes,
        roi_batch_size_per_image=roi_batch_size_per_image,
        pool_type=pool_type,
        box_resolution=box_resolution,
        representation_size=representation_size,
        dropout=dropout,
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )


@register_model("fast_rcnn_r18")
def fast_rcnn_r18(
    *,
    num_classes: int,
    backbone_weights: str | None = None,
    norm: str = "frozen_bn",
    freeze_at: int | None = None,
    roi_batch_size_per_image: int = 64,
    pool_type: str = "pool",
    box_resolution: int = 7,
    representation_size: int = 1024,
    dropout: float = 0.0,
    min_size: int | Sequence[int] | None = 600,
    max_size: int | None = 1000,
    **kwargs: Unpack[FastRCNNRules],
) -> FastRCNN:
    """Fast R-CNN on ResNet-18 c4 (stride 16, 256 channels): RoIPool 7x7, fc6/fc7 1024.

    Keywords: `build_fast_rcnn`; `backbone_weights`, `norm`, `freeze_at`: the backbone's (stem and res2
    frozen when fine-tuning).
    """
    freeze_at = default_freeze_at(freeze_at, backbone_weights)
    backbone = build_backbone(
        "resnet18", weights=backbone_weights, out_features=("c4",), freeze_at=freeze_at, norm=norm
    )
    return build_fast_rcnn(
        backbone,
        num_classes=num_classes,
        roi_batch_size_per_image=roi_batch_size_per_image,
        pool_type=pool_type,
        box_resolution=box_resolution,
        representation_size=representation_size,
        dropout=dropout,
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )


@register_model("fast_rcnn_tiny")
def fast_rcnn_tiny(
    *,
    num_classes: int,
    norm: str = "bn",
    backbone_weights: str | None = None,
    roi_batch_size_per_image: int = 64,
    pool_type: str = "pool",
    box_resolution: int = 7,
    representation_size: int = 256,
    dropout: float = 0.0,
    min_size: int | Sequence[int] | None = None,
    max_size: int | None = None,
    **kwargs: Unpack[FastRCNNRules],
) -> FastRCNN:
    """Fast R-CNN on the 7-conv `simple_convnet` (c3, stride 8), images at their own size: shapes on a CPU.

    Keywords: `build_fast_rcnn`; `norm`, `backbone_weights`: the backbone's.
    """
    backbone = build_backbone("simple_convnet", weights=backbone_weights, out_features=("c3",), norm=norm)
    return build_fast_rcnn(
        backbone,
        num_classes=num_classes,
        roi_batch_size_per_image=roi_batch_size_per_image,
        pool_type=pool_type,
        box_resolution=box_resolution,
        representation_size=representation_size,
        dropout=dropout,
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )
