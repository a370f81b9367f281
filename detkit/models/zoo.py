"""The registered two-stage variants (Faster / Mask R-CNN on ResNet-FPN, MobileNet-FPN, VGG, the
tiny 7-conv net): small functions with explicit keyword arguments on `detkit.models.builders`.

Defaults follow the papers and torchvision's detection references; every number can be
overridden through `build_model(name, num_classes=..., **overrides)`.
"""

from __future__ import annotations

from typing import Sequence

from detkit.backbones import FPN, build_backbone
from detkit.models.builders import (  # noqa: F401  (re-exported: their former home)
    build_roi_heads,
    build_rpn,
    build_transform,
    build_two_stage,
    check_features,
    default_freeze_at,
    split_kwargs,
)
from detkit.models.registry import register_model
from detkit.models.two_stage import TwoStageDetector

FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))


def _fpn_detector(
    backbone_name: str,
    *,
    num_classes: int,
    with_mask: bool = False,
    backbone_weights: str | None = None,
    norm: str = "frozen_bn",
    freeze_at: int | None = None,
    fpn_channels: int = 256,
    in_features: Sequence[str] = ("c2", "c3", "c4", "c5"),
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    backbone_kwargs: dict | None = None,
    **kwargs,
) -> TwoStageDetector:
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
    anchor_sizes = anchor_sizes or FPN_ANCHOR_SIZES[-len(names) :]
    return build_two_stage(
        backbone,
        num_classes=num_classes,
        rpn_features=names,
        roi_features=names[:-1],
        anchor_sizes=anchor_sizes,
        with_mask=with_mask,
        **kwargs,
    )


@register_model("faster_rcnn_r50_fpn")
def faster_rcnn_r50_fpn(*, num_classes: int, **kwargs) -> TwoStageDetector:
    """Faster R-CNN, ResNet-50 + FPN (P2-P6), RoIAlign: torchvision's fasterrcnn_resnet50_fpn layout."""
    return _fpn_detector("resnet50", num_classes=num_classes, **kwargs)


@register_model("faster_rcnn_r18_fpn")
def faster_rcnn_r18_fpn(*, num_classes: int, **kwargs) -> TwoStageDetector:
    """Faster R-CNN, ResNet-18 + FPN."""
    return _fpn_detector("resnet18", num_classes=num_classes, **kwargs)


@register_model("faster_rcnn_mobilenet_v2_fpn")
def faster_rcnn_mobilenet_v2_fpn(*, num_classes: int, norm: str = "frozen_bn", **kwargs) -> TwoStageDetector:
    """Faster R-CNN, MobileNetV2 (depthwise-separable) + FPN on strides 8-32 (+ P6)."""
    return _fpn_detector(
        "mobilenet_v2",
        num_classes=num_classes,
        norm=norm,
        in_features=("c3", "c4", "c5"),
        anchor_sizes=((32,), (64,), (128,), (256,)),
        **kwargs,
    )


@register_model("mask_rcnn_r50_fpn")
def mask_rcnn_r50_fpn(*, num_classes: int, **kwargs) -> TwoStageDetector:
    """Mask R-CNN, ResNet-50 + FPN: torchvision's maskrcnn_resnet50_fpn layout."""
    return _fpn_detector("resnet50", num_classes=num_classes, with_mask=True, **kwargs)


@register_model("faster_rcnn_vgg16")
def faster_rcnn_vgg16(
    *,
    num_classes: int,
    backbone_weights: str | None = None,
    freeze_at: int | None = None,
    anchor_sizes: Sequence[Sequence[float]] = ((128, 256, 512),),
    representation_size: int = 4096,
    dropout: float = 0.5,
    min_size: int | None = 600,
    max_size: int | None = 1000,
    **kwargs,
) -> TwoStageDetector:
    """The Faster R-CNN paper's model: VGG-16 conv5_3 (stride 16), one-level RPN, RoIPool 7x7, fc6/fc7 (dropout 0.5)."""
    freeze_at = default_freeze_at(freeze_at, backbone_weights)  # the paper fine-tunes from conv3_1 on
    backbone = build_backbone("vgg16", weights=backbone_weights, out_features=("c5",), freeze_at=freeze_at)
    return build_two_stage(
        backbone,
        num_classes=num_classes,
        anchor_sizes=anchor_sizes,
        pool_type="pool",
        representation_size=representation_size,
        dropout=dropout,
        min_size=min_size,
        max_size=max_size,
        **kwargs,
    )


def _tiny_detector(
    *, num_classes: int, with_mask: bool, norm: str = "bn", backbone_weights: str | None = None, **kwargs
) -> TwoStageDetector:
    backbone = build_backbone("simple_convnet", weights=backbone_weights, out_features=("c3",), norm=norm)
    defaults = dict(
        anchor_sizes=((16, 32, 64),),
        representation_size=256,
        min_size=128,  # the scale these from-scratch models are trained at (shapes images are 128x128)
        max_size=213,  # 128 * 1333 / 800: the usual 5:3 cap on the longer side
        rpn_pre_nms_top_n_train=600,
        rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128,
        roi_batch_size_per_image=128,
        mask_conv_dims=(128, 128),
    )
    defaults.update(kwargs)
    return build_two_stage(backbone, num_classes=num_classes, with_mask=with_mask, **defaults)


@register_model("faster_rcnn_tiny")
def faster_rcnn_tiny(*, num_classes: int, **kwargs) -> TwoStageDetector:
    """A from-scratch Faster R-CNN that trains on a CPU in minutes (7-conv backbone, stride 8).

    Images are resized so the shorter side is 128 px (longer side at most 213; `min_size` /
    `max_size` change it), the size of the synthetic shapes images; anchors 16-64 px. The
    default model of the synthetic shapes data set.
    """
    return _tiny_detector(num_classes=num_classes, with_mask=False, **kwargs)


@register_model("mask_rcnn_tiny")
def mask_rcnn_tiny(*, num_classes: int, **kwargs) -> TwoStageDetector:
    """`faster_rcnn_tiny` with a 2-conv mask head: instance segmentation on a CPU."""
    return _tiny_detector(num_classes=num_classes, with_mask=True, **kwargs)
