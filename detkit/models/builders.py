"""Builders of a two-stage detector's parts (`build_rpn`, `build_roi_heads`, `build_transform`),
`build_two_stage` on them, the typed keyword sets the registered builders pass on to it
(`TwoStageRules`, `TwoStageKeywords`, `MaskRCNNKeywords`, `KeypointHeadKeywords`, `TwoStageHeadsKeywords`), and
the helpers every builder shares (`default_freeze_at`,
`check_features`). The registered variants are in `detkit.models.zoo` (two-stage),
`detkit.models.rcnn`, `detkit.models.fast_rcnn` and `detkit.models.classic`.

Every keyword is explicit: a builder takes the keywords its signature lists and passes them on by
name. A registered builder lists the keywords that make its variant (backbone, anchors, sizes)
with the variant's values and passes the rest on through `**kwargs: Unpack[...]` of one of the
TypedDicts below, which `detkit.models.registry.model_keywords` reads to list them.

Defaults follow the papers and torchvision's detection references.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence, TypedDict

from detkit.backbones import FeatureSpec
from detkit.heads.box_head import BoxPredictor, TwoFCHead
from detkit.heads.cascade_roi_heads import CASCADE_BBOX_REG_WEIGHTS, CASCADE_STAGE_WEIGHTS, CascadeRoIHeads
from detkit.heads.keypoint_head import KeypointHead
from detkit.heads.mask_head import MaskHead
from detkit.heads.poolers import RoIPooler
from detkit.heads.roi_heads import RoIHeads
from detkit.matching import AnchorGenerator
from detkit.models.registry import register_keywords
from detkit.models.transform import DetectionTransform
from detkit.models.two_stage import TwoStageDetector
from detkit.proposals.rpn import RPN, RPNHead


# --------------------------------------------------------------------------- builder helpers
def default_freeze_at(freeze_at: int | None, backbone_weights, frozen_if_pretrained: int = 2) -> int:
    """`freeze_at` when given; else `frozen_if_pretrained` stages (stem + first stage, as torchvision)
    when fine-tuning `backbone_weights`, and none when training from scratch."""
    if freeze_at is not None:
        return freeze_at
    return frozen_if_pretrained if backbone_weights else 0


def check_features(specs: Mapping[str, FeatureSpec], names: Sequence[str]) -> list[str]:
    """`names` as a list, each checked to be an output of the backbone with `feature_specs()` `specs` (ValueError)."""
    for name in names:
        if name not in specs:
            raise ValueError(f"feature {name!r} is not an output of the backbone; it has {list(specs)}")
    return list(names)


# --------------------------------------------------------------------------- parts
def build_transform(
    *,
    min_size: int | Sequence[int] | None = 800,
    max_size: int | None = 1333,
    size_divisible: int = 32,
    memory_format: str = "auto",
) -> DetectionTransform:
    """The images' resizing (shorter side `min_size`, longer at most `max_size`; None: as given), padding
    and memory format ("auto": channels-last on the CPU; see `DetectionTransform`)."""
    return DetectionTransform(
        min_size=min_size, max_size=max_size, size_divisible=size_divisible, memory_format=memory_format
    )


def build_rpn(
    backbone,
    *,
    rpn_features: Sequence[str] | None = None,
    anchor_sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_threshold: float = 0.7,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    rpn_fg_iou_threshold: float = 0.7,
    rpn_bg_iou_threshold: float = 0.3,
    box_loss: str = "smooth_l1",
    cls_loss: str = "ce",
    rpn_box_loss: str | None = None,
    rpn_cls_loss: str | None = None,
) -> RPN:
    """The RPN on `rpn_features` of `backbone` (default: all its outputs), one anchor-size tuple per level.

    One head is shared across the levels, so they need equal channels. The losses are
    `rpn_box_loss` / `rpn_cls_loss`, by default the RoI heads' `box_loss` / `cls_loss`.
    """
    specs = backbone.feature_specs()
    rpn_features = check_features(specs, rpn_features or list(specs))
    channels = {specs[n].channels for n in rpn_features}
    if len(channels) != 1:
        raise ValueError(f"the RPN head is shared across levels, so {rpn_features} need equal channels, got {channels}")
    if len(anchor_sizes) != len(rpn_features):
        raise ValueError(f"anchor_sizes needs one entry per RPN level ({len(rpn_features)}), got {len(anchor_sizes)}")
    strides = [specs[n].stride for n in rpn_features]
    anchors = AnchorGenerator(anchor_sizes, [aspect_ratios] * len(rpn_features), strides)
    head = RPNHead(channels.pop(), anchors.num_anchors_per_location()[0])
    return RPN(
        head,
        anchors,
        in_features=rpn_features,
        fg_iou_threshold=rpn_fg_iou_threshold,
        bg_iou_threshold=rpn_bg_iou_threshold,
        batch_size_per_image=rpn_batch_size_per_image,
        positive_fraction=rpn_positive_fraction,
        pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        post_nms_top_n_train=rpn_post_nms_top_n_train,
        pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        post_nms_top_n_test=rpn_post_nms_top_n_test,
        nms_threshold=rpn_nms_threshold,
        box_loss=rpn_box_loss or box_loss,
        cls_loss=rpn_cls_loss or cls_loss,
    )


def build_roi_heads(
    backbone,
    *,
    num_classes: int,
    roi_features: Sequence[str] | None = None,
    with_mask: bool = False,
    pool_type: str = "align",
    box_resolution: int = 7,
    mask_resolution: int = 14,
    representation_size: int = 1024,
    dropout: float = 0.0,
    box_loss: str = "smooth_l1",
    cls_loss: str = "ce",
    smooth_l1_beta: float = 1.0 / 9,
    mask_conv_dims: Sequence[int] = (256, 256, 256, 256),
    roi_batch_size_per_image: int = 512,
    roi_positive_fraction: float = 0.25,
    roi_fg_iou_threshold: float = 0.5,
    roi_bg_iou_threshold: float = 0.5,
    roi_matcher: Callable | None = None,
    box_score_threshold: float = 0.05,
    box_nms_threshold: float = 0.5,
    detections_per_image: int = 100,
    mask_threshold: float = 0.5,
    with_keypoints: bool = False,
    num_keypoints: int = 17,
    keypoint_resolution: int = 14,
    keypoint_conv_dims: Sequence[int] = (512,) * 8,
    cascade_iou_thresholds: Sequence[float] = (),
    cascade_stage_weights: Sequence[float] = CASCADE_STAGE_WEIGHTS,
    cascade_bbox_reg_weights: Sequence[Sequence[float]] = CASCADE_BBOX_REG_WEIGHTS,
) -> RoIHeads:
    """RoI heads on `roi_features` of `backbone` (default: all its outputs): pooler, fc6/fc7 box head, predictor,
    with `with_mask` Mask R-CNN's mask pooler and head, and with `with_keypoints` Keypoint R-CNN's keypoint
    pooler (RoIAlign `keypoint_resolution`) and head (`keypoint_conv_dims`, `num_keypoints` heatmaps).

    `dropout`: after fc6 and fc7 (0 as torchvision; the VGG / AlexNet papers: 0.5). `box_loss`
    ("smooth_l1", "l1", "giou", "diou", "ciou") and `cls_loss` ("ce", "focal"): see
    detkit.losses.selection. `roi_matcher` replaces `Matcher(roi_fg_iou_threshold, roi_bg_iou_threshold)`.
    With `cascade_iou_thresholds`, Cascade R-CNN's `CascadeRoIHeads`: one fc6/fc7 head and class-agnostic
    predictor per threshold (the roi_fg/bg thresholds and `roi_matcher` then do not apply).
    """
    specs = backbone.feature_specs()
    roi_features = check_features(specs, roi_features or list(specs))
    roi_strides = [specs[n].stride for n in roi_features]
    roi_channels = specs[roi_features[0]].channels
    box_pooler = RoIPooler(roi_features, roi_strides, output_size=box_resolution, pool_type=pool_type)
    box_head = TwoFCHead(roi_channels, box_resolution, representation_size, dropout=dropout)
    mask_pooler = mask_head = None
    if with_mask:
        mask_pooler = RoIPooler(roi_features, roi_strides, output_size=mask_resolution, pool_type="align")
        mask_head = MaskHead(roi_channels, num_classes, conv_dims=mask_conv_dims)
    keypoint_pooler = keypoint_head = None
    if with_keypoints:
        keypoint_pooler = RoIPooler(roi_features, roi_strides, output_size=keypoint_resolution, pool_type="align")
        keypoint_head = KeypointHead(roi_channels, num_keypoints, conv_dims=keypoint_conv_dims)
    # Cascade R-CNN: a box head and class-agnostic predictor per stage, matching and box coding per stage
    if cascade_iou_thresholds:
        if roi_matcher is not None:
            raise ValueError("roi_matcher does not apply to a cascade: its stages match at cascade_iou_thresholds")
        stages = len(cascade_iou_thresholds)
        more = (
            TwoFCHead(roi_channels, box_resolution, representation_size, dropout=dropout) for _ in range(stages - 1)
        )
        box_head = [box_head, *more]
        predictor = [BoxPredictor(representation_size, num_classes, class_agnostic_box=True) for _ in range(stages)]
        heads_type = CascadeRoIHeads
        matching = dict(
            iou_thresholds=cascade_iou_thresholds,
            stage_weights=cascade_stage_weights,
            bbox_reg_weights=cascade_bbox_reg_weights,
        )
    else:
        predictor = BoxPredictor(representation_size, num_classes)
        heads_type = RoIHeads
        matching = dict(
            fg_iou_threshold=roi_fg_iou_threshold, bg_iou_threshold=roi_bg_iou_threshold, matcher=roi_matcher
        )
    return heads_type(
        box_pooler,
        box_head,
        predictor,
        num_classes=num_classes,
        **matching,
        batch_size_per_image=roi_batch_size_per_image,
        positive_fraction=roi_positive_fraction,
        score_threshold=box_score_threshold,
        nms_threshold=box_nms_threshold,
        detections_per_image=detections_per_image,
        smooth_l1_beta=smooth_l1_beta,
        mask_pooler=mask_pooler,
        mask_head=mask_head,
        mask_threshold=mask_threshold,
        keypoint_pooler=keypoint_pooler,
        keypoint_head=keypoint_head,
        box_loss=box_loss,
        cls_loss=cls_loss,
    )


# --------------------------------------------------------------------------- the two-stage detector
class TwoStageRules(TypedDict, total=False):
    """The keywords of `build_two_stage` that every registered two-stage variant leaves at their defaults:
    matching, sampling shares, losses, post-processing and padding (the papers' and torchvision's rules).
    Types and defaults: `build_two_stage`."""

    aspect_ratios: Sequence[float]
    rpn_nms_threshold: float
    rpn_positive_fraction: float
    rpn_fg_iou_threshold: float
    rpn_bg_iou_threshold: float
    rpn_box_loss: str | None
    rpn_cls_loss: str | None
    box_loss: str
    cls_loss: str
    smooth_l1_beta: float
    roi_positive_fraction: float
    roi_fg_iou_threshold: float
    roi_bg_iou_threshold: float
    roi_matcher: Callable | None
    box_score_threshold: float
    box_nms_threshold: float
    detections_per_image: int
    size_divisible: int
    memory_format: str


class TwoStageKeywords(TwoStageRules, total=False):
    """`TwoStageRules` and the sizes a variant may set: proposal and sample counts, box head, image size.
    Everything of `build_two_stage` but the structure (anchors, feature levels, mask head) and the mask
    head's keywords (`MaskHeadKeywords`)."""

    rpn_pre_nms_top_n_train: int
    rpn_post_nms_top_n_train: int
    rpn_pre_nms_top_n_test: int
    rpn_post_nms_top_n_test: int
    rpn_batch_size_per_image: int
    roi_batch_size_per_image: int
    pool_type: str
    box_resolution: int
    representation_size: int
    dropout: float
    min_size: int | Sequence[int] | None
    max_size: int | None


class MaskHeadKeywords(TypedDict, total=False):
    """The keywords of `build_two_stage` only a Mask R-CNN uses: its mask head's."""

    mask_resolution: int
    mask_conv_dims: Sequence[int]
    mask_threshold: float


class MaskRCNNKeywords(TwoStageKeywords, MaskHeadKeywords, total=False):
    """`TwoStageKeywords` and `MaskHeadKeywords`: what a Mask R-CNN variant passes on to `build_two_stage`."""


class KeypointHeadKeywords(TypedDict, total=False):
    """The keywords of `build_two_stage` only a Keypoint R-CNN uses: its keypoint head's."""

    num_keypoints: int
    keypoint_resolution: int
    keypoint_conv_dims: Sequence[int]


class TwoStageHeadsKeywords(MaskRCNNKeywords, KeypointHeadKeywords, total=False):
    """Every keyword of `build_two_stage` but the structure: what a builder of several variants passes on."""


class CascadeKeywords(TypedDict, total=False):
    """The keywords of `build_two_stage` a Cascade R-CNN variant passes on besides `cascade_iou_thresholds`
    (the one that makes the cascade)."""

    cascade_stage_weights: Sequence[float]
    cascade_bbox_reg_weights: Sequence[Sequence[float]]


class CascadeRCNNKeywords(TwoStageKeywords, CascadeKeywords, total=False):
    """`TwoStageKeywords` and `CascadeKeywords`."""


class CascadeMaskRCNNKeywords(MaskRCNNKeywords, CascadeKeywords, total=False):
    """`MaskRCNNKeywords` and `CascadeKeywords`."""


def build_two_stage(
    backbone,
    *,
    num_classes: int,
    anchor_sizes: Sequence[Sequence[float]],
    rpn_features: Sequence[str] | None = None,
    roi_features: Sequence[str] | None = None,
    with_mask: bool = False,
    # sizes
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_batch_size_per_image: int = 256,
    roi_batch_size_per_image: int = 512,
    pool_type: str = "align",
    box_resolution: int = 7,
    representation_size: int = 1024,
    dropout: float = 0.0,
    mask_resolution: int = 14,
    mask_conv_dims: Sequence[int] = (256, 256, 256, 256),
    min_size: int | Sequence[int] | None = 800,
    max_size: int | None = 1333,
    # rules
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_nms_threshold: float = 0.7,
    rpn_positive_fraction: float = 0.5,
    rpn_fg_iou_threshold: float = 0.7,
    rpn_bg_iou_threshold: float = 0.3,
    rpn_box_loss: str | None = None,
    rpn_cls_loss: str | None = None,
    box_loss: str = "smooth_l1",
    cls_loss: str = "ce",
    smooth_l1_beta: float = 1.0 / 9,
    roi_positive_fraction: float = 0.25,
    roi_fg_iou_threshold: float = 0.5,
    roi_bg_iou_threshold: float = 0.5,
    roi_matcher: Callable | None = None,
    box_score_threshold: float = 0.05,
    box_nms_threshold: float = 0.5,
    detections_per_image: int = 100,
    mask_threshold: float = 0.5,
    size_divisible: int = 32,
    memory_format: str = "auto",
    # keypoint head
    with_keypoints: bool = False,
    num_keypoints: int = 17,
    keypoint_resolution: int = 14,
    keypoint_conv_dims: Sequence[int] = (512,) * 8,
    # cascade
    cascade_iou_thresholds: Sequence[float] = (),
    cascade_stage_weights: Sequence[float] = CASCADE_STAGE_WEIGHTS,
    cascade_bbox_reg_weights: Sequence[Sequence[float]] = CASCADE_BBOX_REG_WEIGHTS,
) -> TwoStageDetector:
    """Faster R-CNN (Mask R-CNN with `with_mask=True`, Keypoint R-CNN with `with_keypoints=True`) around
    `backbone`: `build_rpn`, `build_roi_heads` and `build_transform`, each given its keywords by name, sized
    from the backbone's feature specs.

    The one place the two-stage keywords are documented:
    - RPN on `rpn_features` (default: every backbone output), one `anchor_sizes` tuple per level and
      `aspect_ratios`; `rpn_pre/post_nms_top_n_train/test` proposals per image before / after NMS at
      `rpn_nms_threshold`; `rpn_batch_size_per_image` anchors sampled with at most
      `rpn_positive_fraction` positives (IoU >= `rpn_fg_iou_threshold`; background < `rpn_bg_iou_threshold`).
    - RoI heads on `roi_features` (default: every backbone output): `pool_type` ("align" / "pool") at
      `box_resolution`, fc6 / fc7 of `representation_size` with `dropout` after each;
      `roi_batch_size_per_image` RoIs sampled with at most `roi_positive_fraction` positives (IoU >=
      `roi_fg_iou_threshold`, background < `roi_bg_iou_threshold`; `roi_matcher` replaces that Matcher).
    - Losses: `box_loss` ("smooth_l1" with `smooth_l1_beta`, "l1", "giou", "diou", "ciou") and `cls_loss`
      ("ce", "focal") of the RoI heads and, unless `rpn_box_loss` / `rpn_cls_loss` are set, of the RPN.
    - Detections: score >= `box_score_threshold`, per-class NMS at `box_nms_threshold`, top
      `detections_per_image`; masks (`with_mask`) of a `mask_conv_dims` head on `mask_resolution` RoIAlign,
      binarised at `mask_threshold`; keypoints (`with_keypoints`): `num_keypoints` heatmaps of 4x
      `keypoint_resolution` (RoIAlign) from a head of `keypoint_conv_dims` 3x3 convs (the Mask R-CNN paper's
      section 5: 8 x 512, 14 -> 56).
    - Cascade R-CNN (`cascade_iou_thresholds`, e.g. (0.5, 0.6, 0.7); empty: one box stage): one box head
      and class-agnostic predictor per stage, stage t matched at `cascade_iou_thresholds[t]` on the previous
      stage's refined boxes, its targets encoded with `cascade_bbox_reg_weights[t]`, its losses weighted by
      `cascade_stage_weights[t]` (`CascadeRoIHeads`).
    - Images: shorter side `min_size` (a list: multi-scale training), longer at most `max_size` (None: as
      given), padded to a multiple of `size_divisible`, laid out as `memory_format` (see `DetectionTransform`).
    """
    rpn = build_rpn(
        backbone,
        rpn_features=rpn_features,
        anchor_sizes=anchor_sizes,
        aspect_ratios=aspect_ratios,
        rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
        rpn_nms_threshold=rpn_nms_threshold,
        rpn_batch_size_per_image=rpn_batch_size_per_image,
        rpn_positive_fraction=rpn_positive_fraction,
        rpn_fg_iou_threshold=rpn_fg_iou_threshold,
        rpn_bg_iou_threshold=rpn_bg_iou_threshold,
        box_loss=box_loss,
        cls_loss=cls_loss,
        rpn_box_loss=rpn_box_loss,
        rpn_cls_loss=rpn_cls_loss,
    )
    roi_heads = build_roi_heads(
        backbone,
        num_classes=num_classes,
        roi_features=roi_features,
        with_mask=with_mask,
        pool_type=pool_type,
        box_resolution=box_resolution,
        mask_resolution=mask_resolution,
        representation_size=representation_size,
        dropout=dropout,
        box_loss=box_loss,
        cls_loss=cls_loss,
        smooth_l1_beta=smooth_l1_beta,
        mask_conv_dims=mask_conv_dims,
        roi_batch_size_per_image=roi_batch_size_per_image,
        roi_positive_fraction=roi_positive_fraction,
        roi_fg_iou_threshold=roi_fg_iou_threshold,
        roi_bg_iou_threshold=roi_bg_iou_threshold,
        roi_matcher=roi_matcher,
        box_score_threshold=box_score_threshold,
        box_nms_threshold=box_nms_threshold,
        detections_per_image=detections_per_image,
        mask_threshold=mask_threshold,
        with_keypoints=with_keypoints,
        num_keypoints=num_keypoints,
        keypoint_resolution=keypoint_resolution,
        keypoint_conv_dims=keypoint_conv_dims,
        cascade_iou_thresholds=cascade_iou_thresholds,
        cascade_stage_weights=cascade_stage_weights,
        cascade_bbox_reg_weights=cascade_bbox_reg_weights,
    )
    transform = build_transform(
        min_size=min_size, max_size=max_size, size_divisible=size_divisible, memory_format=memory_format
    )
    return TwoStageDetector(backbone, roi_heads, rpn=rpn, transform=transform, num_classes=num_classes)


register_keywords(TwoStageRules, build_two_stage)
register_keywords(TwoStageKeywords, build_two_stage)
register_keywords(MaskRCNNKeywords, build_two_stage)
register_keywords(TwoStageHeadsKeywords, build_two_stage)
register_keywords(CascadeRCNNKeywords, build_two_stage)
register_keywords(CascadeMaskRCNNKeywords, build_two_stage)
