"""Detectors on the classic networks: R-CNN, Fast and Faster R-CNN on AlexNet, Faster R-CNN on GoogLeNet.

- `rcnn_alexnet`: the R-CNN paper's own network. 227 x 227 warps with 16 px of context through
  AlexNet (torchvision padding, so pool5 is 6 x 6), fc6 / fc7 4096 with dropout 0.5, softmax or
  per-class SVMs (`classifier="svm"`), class-specific box regression on pool5.
- `fast_rcnn_alexnet`: Fast R-CNN's small model (S, CaffeNet): RoIPool 6 x 6 of conv5 (stride 16),
  fc6 / fc7 4096 with dropout 0.5, conv1 frozen when fine-tuning ImageNet weights.
- `faster_rcnn_alexnet`: the small network of the Faster R-CNN paper's experiments (ZF, an
  AlexNet-sized 5-conv net; AlexNet's weights are the ones torchvision ships): one-level RPN on
  conv5 with 3 scales x 3 ratios, RoIPool 6 x 6, fc6 / fc7 4096 with dropout 0.5, 600 px images.
- `faster_rcnn_googlenet`: GoogLeNet with an FPN on its three inception-block outputs (c3-c5,
  strides 8-32, + P6 by max pooling), RoIAlign, as `faster_rcnn_r50_fpn`. FPN rather than one
  level because GoogLeNet's blocks end at three strides with different widths (480 / 832 / 1024):
  a single stride-16 level (inception4e) would drop the inception 5 blocks, a third of the
  pretrained weights, and a single stride-32 level is too coarse for small objects.

AlexNet / GoogLeNet ImageNet weights: `backbone_weights=` torchvision's `alexnet-*.pth` /
`googlenet-*.pth`; GoogLeNet then rescales its input as torchvision does (`transform_input`).
"""

from __future__ import annotations

from typing import Sequence, Unpack

from detkit.backbones import build_backbone
from detkit.models.builders import TwoStageRules, build_two_stage, default_freeze_at
from detkit.models.fast_rcnn import FastRCNN, FastRCNNRules, build_fast_rcnn
from detkit.models.rcnn import RCNN, RCNNRules, build_rcnn
from detkit.models.registry import register_model
from detkit.models.two_stage import TwoStageDetector
from detkit.models.zoo import FPN_ANCHOR_SIZES_C3, FPNDetectorKeywords, build_fpn_detector

__all__ = ["fast_rcnn_alexnet", "faster_rcnn_alexnet", "faster_rcnn_googlenet", "rcnn_alexnet"]


def _alexnet(backbone_weights, freeze_at: int | None, frozen_if_pretrained: int, **kwargs):
    freeze_at = default_freeze_at(freeze_at, backbone_weights, frozen_if_pretrained)
    return build_backbone("alexnet", weights=backbone_weights, freeze_at=freeze_at, **kwargs)


@register_model("rcnn_alexnet")
def rcnn_alexnet(
    *,
    num_classes: int,
    backbone_weights: str | None = None,
    freeze_at: int | None = None,
    norm: str = "none",
    crop_size: int = 227,
    context_padding: float = 16.0,
    pool_size: int = 6,
    representation_size: int = 4096,
    dropout: float = 0.5,
    box_features: str = "pool5",
    test_batch_size: int = 256,
    min_size: int | None = None,
    max_size: int | None = None,
    **kwargs: Unpack[RCNNRules],
) -> RCNN:
    """R-CNN on AlexNet as in the paper: 227 px warps, 16 px context, pool5 -> fc6 / fc7 (dropout 0.5).

    The whole network is fine-tuned (`freeze_at=0`), as in the paper; the box regressor reads pool5.
    Keywords: `build_rcnn` and `RCNN`; `backbone_weights`, `freeze_at`, `norm`: the backbone's.
    """
    backbone = _alexnet(backbone_weights, freeze_at, 0, out_features=("c5",), norm=norm, padding="torchvision")
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


@register_model("fast_rcnn_alexnet")
def fast_rcnn_alexnet(
    *,
    num_classes: int,
    backbone_weights: str | None = None,
    freeze_at: int | None = None,
    norm: str = "none",
    roi_batch_size_per_image: int = 64,
    pool_type: str = "pool",
    box_resolution: int = 6,
    representation_size: int = 4096,
    dropout: float = 0.5,
    min_size: int | None = 600,
    max_size: int | None = 1000,
    **kwargs: Unpack[FastRCNNRules],
) -> FastRCNN:
    """Fast R-CNN on AlexNet conv5 (stride 16): RoIPool 6x6, fc6 / fc7 4096, dropout 0.5; conv1 frozen if pretrained.

    Keywords: `build_fast_rcnn`; `backbone_weights`, `freeze_at`, `norm`: the backbone's.
    """
    backbone = _alexnet(backbone_weights, freeze_at, 1, out_features=("c4",), norm=norm)
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


@register_model("faster_rcnn_alexnet")
def faster_rcnn_alexnet(
    *,
    num_classes: int,
    backbone_weights: str | None = None,
    freeze_at: int | None = None,
    norm: str = "none",
    anchor_sizes: Sequence[Sequence[float]] = ((128, 256, 512),),
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    roi_batch_size_per_image: int = 512,
    box_resolution: int = 6,
    representation_size: int = 4096,
    dropout: float = 0.5,
    min_size: int | None = 600,
    max_size: int | None = 1000,
    **kwargs: Unpack[TwoStageRules],
) -> TwoStageDetector:
    """Faster R-CNN on AlexNet conv5 (stride 16): one-level RPN, RoIPool 6x6, fc6 / fc7 4096, dropout 0.5.

    Keywords: `build_two_stage`; `backbone_weights`, `freeze_at`, `norm`: the backbone's.
    """
    backbone = _alexnet(backbone_weights, freeze_at, 1, out_features=("c4",), norm=norm)
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


@register_model("faster_rcnn_googlenet")
def faster_rcnn_googlenet(
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES_C3,
    transform_input: bool | None = None,
    **kwargs: Unpack[FPNDetectorKeywords],
) -> TwoStageDetector:
    """Faster R-CNN, GoogLeNet + FPN on c3-c5 (P3-P6), RoIAlign 7x7, fc6 / fc7 1024.

    `transform_input` (default: on when `backbone_weights` are given) rescales the input for
    torchvision's ImageNet weights; `norm` defaults to "frozen_bn" (eps 1e-3) as the other FPN models.
    Keywords: `build_fpn_detector` (backbone) and `build_two_stage` (the rest).
    """
    if transform_input is None:
        transform_input = bool(kwargs.get("backbone_weights"))
    return build_fpn_detector(
        "googlenet",
        num_classes=num_classes,
        anchor_sizes=anchor_sizes,
        in_features=("c3", "c4", "c5"),
        backbone_kwargs={"transform_input": transform_input},
        **kwargs,
    )
