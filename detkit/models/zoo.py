"""The registered two-stage variants (Faster / Mask R-CNN on ResNet-FPN, MobileNet-FPN, VGG, the
tiny 7-conv net): small functions with explicit keyword arguments on `detkit.models.builders`.

Each lists the keywords that make its variant (backbone, anchors, sizes) with the variant's values
and passes the rest on to `build_two_stage`, where they are documented; `model_keywords(name)`
lists them all with the model's defaults. Defaults follow the papers and torchvision's detection
references; every number can be overridden through `build_model(name, num_classes=..., **keywords)`.
"""

from __future__ import annotations

from typing import Sequence, Unpack

from detkit.backbones import FPN, build_backbone
from detkit.heads.cascade_roi_heads import CASCADE_BBOX_REG_WEIGHTS, CASCADE_IOU_THRESHOLDS, CASCADE_STAGE_WEIGHTS
from detkit.models.builders import (
    CascadeKeywords,
    KeypointHeadKeywords,
    MaskHeadKeywords,
    TwoStageHeadsKeywords,
    TwoStageKeywords,
    TwoStageRules,
    build_two_stage,
    default_freeze_at,
)
from detkit.models.registry import register_keywords, register_model
from detkit.models.two_stage import TwoStageDetector

FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_ANCHOR_SIZES_C3 = FPN_ANCHOR_SIZES[:-1]  # FPN on c3-c5 (+ P6): one level fewer, the same smallest anchors


class FPNDetectorKeywords(TwoStageKeywords, total=False):
    """The keywords of `build_fpn_detector` an FPN variant passes on: `TwoStageKeywords` and the backbone's."""

    backbone_weights: str | None
    norm: str
    freeze_at: int | None
    fpn_channels: int


class MaskFPNDetectorKeywords(FPNDetectorKeywords, MaskHeadKeywords, total=False):
    """`FPNDetectorKeywords` and the mask head's: what a Mask R-CNN FPN variant passes on."""


class KeypointFPNDetectorKeywords(FPNDetectorKeywords, KeypointHeadKeywords, total=False):
    """`FPNDetectorKeywords` and the keypoint head's: what a Keypoint R-CNN FPN variant passes on."""


def build_fpn_detector(
    backbone_name: str,
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]],
    with_mask: bool = False,
    with_keypoints: bool = False,
    in_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
    backbone_kwargs: dict | None = None,
    backbone_weights: str | None = None,
    norm: str = "frozen_bn",
    freeze_at: int | None = None,
    fpn_channels: int = 256,
    cascade_iou_thresholds: Sequence[float] = (),
    cascade_stage_weights: Sequence[float] = CASCADE_STAGE_WEIGHTS,
    cascade_bbox_reg_weights: Sequence[Sequence[float]] = CASCADE_BBOX_REG_WEIGHTS,
    **kwargs: Unpack[TwoStageHeadsKeywords],
) -> TwoStageDetector:
    """Faster / Mask / Keypoint R-CNN on the registered backbone `backbone_name` with an FPN (`fpn_channels`, + P6 by
    max pooling) on its `in_features`: the RPN on every FPN level (one `anchor_sizes` tuple each), the RoI
    heads on all but P6.

    `backbone_weights`: ImageNet weights of the backbone; `freeze_at`: stages frozen (default: the
    stem and first stage when fine-tuning, none from scratch); `norm`: "frozen_bn" (default), "bn", ...;
    `backbone_kwargs`: more keywords of the backbone builder. `kwargs`: see `build_two_stage` (the
    mask head's only with `with_mask`, the keypoint head's only with `with_keypoints`).
    """
    body = build_backbone(
        backbone_name,
        weights=backbone_weights,
        out_features=in_features,
        freeze_at=default_freeze_at(freeze_at, backbone_weights),
        norm=norm,
        **(backbone_kwargs or {}),
    )
    backbone = FPN(body, out_channels=fpn_channels, extra_block="maxpool")
    names = list(backbone.feature_specs())
    return build_two_stage(
        backbone,
        num_classes=num_classes,
        rpn_features=names,
        roi_features=names[:-1],
        anchor_sizes=anchor_sizes,
        with_mask=with_mask,
        with_keypoints=with_keypoints,
        cascade_iou_thresholds=cascade_iou_thresholds,
        cascade_stage_weights=cascade_stage_weights,
        cascade_bbox_reg_weights=cascade_bbox_reg_weights,
        **kwargs,
    )


register_keywords(FPNDetectorKeywords, build_fpn_detector)
register_keywords(MaskFPNDetectorKeywords, build_fpn_detector)
register_keywords(KeypointFPNDetectorKeywords, build_fpn_detector)


@register_model("faster_rcnn_r50_fpn")
def faster_rcnn_r50_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES,
    **kwargs: Unpack[FPNDetectorKeywords],
) -> TwoStageDetector:
    """Faster R-CNN, ResNet-50 + FPN (P2-P6), RoIAlign: torchvision's fasterrcnn_resnet50_fpn layout.

    Keywords: `build_fpn_detector` (backbone) and `build_two_stage` (the rest)."""
    return build_fpn_detector("resnet50", num_classes=num_classes, anchor_sizes=anchor_sizes, **kwargs)


@register_model("faster_rcnn_r18_fpn")
def faster_rcnn_r18_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES,
    **kwargs: Unpack[FPNDetectorKeywords],
) -> TwoStageDetector:
    """Faster R-CNN, ResNet-18 + FPN. Keywords: `build_fpn_detector` (backbone) and `build_two_stage`."""
    return build_fpn_detector("resnet18", num_classes=num_classes, anchor_sizes=anchor_sizes, **kwargs)


@register_model("faster_rcnn_mobilenet_v2_fpn")
def faster_rcnn_mobilenet_v2_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES_C3,
    **kwargs: Unpack[FPNDetectorKeywords],
) -> TwoStageDetector:
    """Faster R-CNN, MobileNetV2 (depthwise-separable) + FPN on strides 8-32 (+ P6).

    Keywords: `build_fpn_detector` (backbone) and `build_two_stage` (the rest)."""
    return build_fpn_detector(
        "mobilenet_v2", num_classes=num_classes, anchor_sizes=anchor_sizes, in_features=("c3", "c4", "c5"), **kwargs
    )


@register_model("mask_rcnn_r50_fpn")
def mask_rcnn_r50_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES,
    **kwargs: Unpack[MaskFPNDetectorKeywords],
) -> TwoStageDetector:
    """Mask R-CNN, ResNet-50 + FPN: torchvision's maskrcnn_resnet50_fpn layout.

    Keywords: `build_fpn_detector` (backbone) and `build_two_stage` (the rest)."""
    return build_fpn_detector("resnet50", num_classes=num_classes, anchor_sizes=anchor_sizes, with_mask=True, **kwargs)


@register_model("keypoint_rcnn_r50_fpn")
def keypoint_rcnn_r50_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES,
    **kwargs: Unpack[KeypointFPNDetectorKeywords],
) -> TwoStageDetector:
    """Keypoint R-CNN, ResNet-50 + FPN: torchvision's keypointrcnn_resnet50_fpn layout (17 keypoints; its COCO
    checkpoint has one class, person: `num_classes=1`). torchvision trains it at a shorter side drawn from
    640-800: `min_size=(640, 672, 704, 736, 768, 800)` (evaluation at the largest).

    Keywords: `build_fpn_detector` (backbone) and `build_two_stage` (the rest)."""
    return build_fpn_detector(
        "resnet50", num_classes=num_classes, anchor_sizes=anchor_sizes, with_keypoints=True, **kwargs
    )


@register_model("faster_rcnn_vgg16")
def faster_rcnn_vgg16(
    *,
    num_classes: int,
    backbone_weights: str | None = None,
    freeze_at: int | None = None,
    anchor_sizes: Sequence[Sequence[float]] = ((128, 256, 512),),
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    roi_batch_size_per_image: int = 512,
    box_resolution: int = 7,
    representation_size: int = 4096,
    dropout: float = 0.5,
    min_size: int | Sequence[int] | None = 600,
    max_size: int | None = 1000,
    **kwargs: Unpack[TwoStageRules],
) -> TwoStageDetector:
    """The Faster R-CNN paper's model: VGG-16 conv5_3 (stride 16), one-level RPN, RoIPool 7x7, fc6/fc7 (dropout 0.5).

    Keywords: `build_two_stage`; `backbone_weights`: ImageNet weights, `freeze_at`: stages frozen
    (default: conv1-conv2 when fine-tuning, as the paper).
    """
    freeze_at = default_freeze_at(freeze_at, backbone_weights)  # the paper fine-tunes from conv3_1 on
    backbone = build_backbone("vgg16", weights=backbone_weights, out_features=("c5",), freeze_at=freeze_at)
    return build_two_stage(
        backbone,
        num_classes=num_classes,
        anchor_sizes=anchor_sizes,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        roi_batch_size_per_image=roi_batch_size_per_image,
        pool_type="pool",
        box_resolution=box_resolution,
        representation_size=representation_size,
        dropout=dropout,
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )


class TinyDetectorKeywords(TwoStageKeywords, total=False):
    """The keywords of `build_tiny_detector` a tiny variant passes on: `TwoStageKeywords`, the backbone's
    and the anchors."""

    norm: str
    backbone_weights: str | None
    anchor_sizes: Sequence[Sequence[float]]


class MaskTinyDetectorKeywords(TinyDetectorKeywords, MaskHeadKeywords, total=False):
    """`TinyDetectorKeywords` and the mask head's: what `mask_rcnn_tiny` passes on."""


class KeypointTinyDetectorKeywords(TinyDetectorKeywords, KeypointHeadKeywords, total=False):
    """`TinyDetectorKeywords` and the keypoint head's: what `keypoint_rcnn_tiny` passes on."""


def build_tiny_detector(
    *,
    num_classes: int,
    with_mask: bool,
    with_keypoints: bool = False,
    norm: str = "bn",
    backbone_weights: str | None = None,
    anchor_sizes: Sequence[Sequence[float]] = ((16, 32, 64),),
    rpn_pre_nms_top_n_train: int = 600,
    rpn_post_nms_top_n_train: int = 300,
    rpn_pre_nms_top_n_test: int = 300,
    rpn_post_nms_top_n_test: int = 100,
    rpn_batch_size_per_image: int = 128,
    roi_batch_size_per_image: int = 128,
    pool_type: str = "align",
    box_resolution: int = 7,
    representation_size: int = 256,
    dropout: float = 0.0,
    mask_resolution: int = 14,
    mask_conv_dims: Sequence[int] = (128, 128),
    mask_threshold: float = 0.5,
    num_keypoints: int = 4,  # the synthetic shapes' extreme points: top, right, bottom, left
    keypoint_resolution: int = 14,
    keypoint_conv_dims: Sequence[int] = (128,) * 4,
    min_size: int | Sequence[int] | None = 128,  # the scale these from-scratch models train at (shapes: 128x128)
    max_size: int | None = 213,  # 128 * 1333 / 800: the usual 5:3 cap on the longer side
    cascade_iou_thresholds: Sequence[float] = (),
    cascade_stage_weights: Sequence[float] = CASCADE_STAGE_WEIGHTS,
    cascade_bbox_reg_weights: Sequence[Sequence[float]] = CASCADE_BBOX_REG_WEIGHTS,
    **kwargs: Unpack[TwoStageRules],
) -> TwoStageDetector:
    """A from-scratch Faster R-CNN (Mask R-CNN with `with_mask`, Keypoint R-CNN with `with_keypoints`) that
    trains on a CPU in minutes: the 7-conv `simple_convnet` (c3, stride 8; `norm` "bn"), anchors 16-64 px,
    fewer proposals and samples,
    fc6/fc7 of 256, images resized to a shorter side of 128 px (the synthetic shapes images' size).

    Keywords: the sizes here (the mask / keypoint head's only with `with_mask` / `with_keypoints`); the rest:
    `build_two_stage`.
    """
    backbone = build_backbone("simple_convnet", weights=backbone_weights, out_features=("c3",), norm=norm)
    return build_two_stage(
        backbone,
        num_classes=num_classes,
        with_mask=with_mask,
        anchor_sizes=anchor_sizes,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        roi_batch_size_per_image=roi_batch_size_per_image,
        pool_type=pool_type,
        box_resolution=box_resolution,
        representation_size=representation_size,
        dropout=dropout,
        mask_resolution=mask_resolution,
        mask_conv_dims=mask_conv_dims,
        mask_threshold=mask_threshold,
        with_keypoints=with_keypoints,
        num_keypoints=num_keypoints,
        keypoint_resolution=keypoint_resolution,
        keypoint_conv_dims=keypoint_conv_dims,
        min_size=min_size,
        max_size=max_size,
        cascade_iou_thresholds=cascade_iou_thresholds,
        cascade_stage_weights=cascade_stage_weights,
        cascade_bbox_reg_weights=cascade_bbox_reg_weights,
        **kwargs,
    )


register_keywords(TinyDetectorKeywords, build_tiny_detector)
register_keywords(MaskTinyDetectorKeywords, build_tiny_detector)
register_keywords(KeypointTinyDetectorKeywords, build_tiny_detector)


@register_model("faster_rcnn_tiny")
def faster_rcnn_tiny(*, num_classes: int, **kwargs: Unpack[TinyDetectorKeywords]) -> TwoStageDetector:
    """A from-scratch Faster R-CNN that trains on a CPU in minutes (7-conv backbone, stride 8).

    Images are resized so the shorter side is 128 px (longer side at most 213; `min_size` /
    `max_size` change it), the size of the synthetic shapes images; anchors 16-64 px. The
    default model of the synthetic shapes data set. Keywords: `build_tiny_detector`.
    """
    return build_tiny_detector(num_classes=num_classes, with_mask=False, **kwargs)


@register_model("mask_rcnn_tiny")
def mask_rcnn_tiny(*, num_classes: int, **kwargs: Unpack[MaskTinyDetectorKeywords]) -> TwoStageDetector:
    """`faster_rcnn_tiny` with a 2-conv mask head: instance segmentation on a CPU. Keywords: `build_tiny_detector`."""
    return build_tiny_detector(num_classes=num_classes, with_mask=True, **kwargs)


@register_model("keypoint_rcnn_tiny")
def keypoint_rcnn_tiny(*, num_classes: int, **kwargs: Unpack[KeypointTinyDetectorKeywords]) -> TwoStageDetector:
    """`faster_rcnn_tiny` with a 4-conv keypoint head (4 keypoints by default: the synthetic shapes' extreme
    points), keypoints on a CPU. Keywords: `build_tiny_detector`."""
    return build_tiny_detector(num_classes=num_classes, with_mask=False, with_keypoints=True, **kwargs)


# --------------------------------------------------------------------------- Cascade R-CNN
class CascadeFPNDetectorKeywords(FPNDetectorKeywords, CascadeKeywords, total=False):
    """`FPNDetectorKeywords` and the cascade's stage weights and box coder weights."""


class CascadeMaskFPNDetectorKeywords(MaskFPNDetectorKeywords, CascadeKeywords, total=False):
    """`MaskFPNDetectorKeywords` and the cascade's stage weights and box coder weights."""


class CascadeTinyDetectorKeywords(TinyDetectorKeywords, CascadeKeywords, total=False):
    """`TinyDetectorKeywords` and the cascade's stage weights and box coder weights."""


register_keywords(CascadeFPNDetectorKeywords, build_fpn_detector)
register_keywords(CascadeMaskFPNDetectorKeywords, build_fpn_detector)
register_keywords(CascadeTinyDetectorKeywords, build_tiny_detector)


@register_model("cascade_rcnn_r50_fpn")
def cascade_rcnn_r50_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES,
    cascade_iou_thresholds: Sequence[float] = CASCADE_IOU_THRESHOLDS,
    **kwargs: Unpack[CascadeFPNDetectorKeywords],
) -> TwoStageDetector:
    """Cascade R-CNN, ResNet-50 + FPN: `faster_rcnn_r50_fpn` with three box stages (IoU 0.5 / 0.6 / 0.7,
    class-agnostic regression, loss weights 1 / 0.5 / 0.25), as detectron2's and mmdetection's
    cascade_rcnn_R_50_FPN. Keywords: `build_fpn_detector` (backbone) and `build_two_stage` (the rest)."""
    return build_fpn_detector(
        "resnet50",
        num_classes=num_classes,
        anchor_sizes=anchor_sizes,
        cascade_iou_thresholds=cascade_iou_thresholds,
        **kwargs,
    )


@register_model("cascade_mask_rcnn_r50_fpn")
def cascade_mask_rcnn_r50_fpn(
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES,
    cascade_iou_thresholds: Sequence[float] = CASCADE_IOU_THRESHOLDS,
    **kwargs: Unpack[CascadeMaskFPNDetectorKeywords],
) -> TwoStageDetector:
    """Cascade Mask R-CNN, ResNet-50 + FPN: `cascade_rcnn_r50_fpn` with Mask R-CNN's mask head, trained on
    the last stage's sample and run on its boxes. Keywords: `build_fpn_detector` and `build_two_stage`."""
    return build_fpn_detector(
        "resnet50",
        num_classes=num_classes,
        anchor_sizes=anchor_sizes,
        with_mask=True,
        cascade_iou_thresholds=cascade_iou_thresholds,
        **kwargs,
    )


@register_model("cascade_rcnn_tiny")
def cascade_rcnn_tiny(
    *,
    num_classes: int,
    cascade_iou_thresholds: Sequence[float] = CASCADE_IOU_THRESHOLDS,
    **kwargs: Unpack[CascadeTinyDetectorKeywords],
) -> TwoStageDetector:
    """`faster_rcnn_tiny` with Cascade R-CNN's three box stages (IoU 0.5 / 0.6 / 0.7): the cascade on a CPU.
    Keywords: `build_tiny_detector`."""
    return build_tiny_detector(
        num_classes=num_classes, with_mask=False, cascade_iou_thresholds=cascade_iou_thresholds, **kwargs
    )
