"""Fast R-CNN: builders, background band, contract with given proposals and a one-image overfit."""

import pytest
import torch
from proposal_model_cases import check_predictions, images_targets_proposals, overfit_one_image_and_detect_both
from torchvision.ops import box_iou

from detkit.models import build_model
from detkit.models.fast_rcnn import BackgroundBandMatcher, FastRCNN
from detkit.structures import PackedTargets

CASES = [
    ("fast_rcnn_tiny", {}),
    ("fast_rcnn_r18", dict(norm="bn", min_size=96, max_size=128, representation_size=64)),
    ("fast_rcnn_vgg16", dict(min_size=96, max_size=128, representation_size=64)),
]


@pytest.mark.parametrize("name,overrides", CASES)
def test_training_step_and_predict(name, overrides):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **overrides)
    assert isinstance(model, FastRCNN) and model.rpn is None and model.requires_proposals
    images, targets, proposals = images_targets_proposals()
    model.train()
    losses = model(images, targets, proposals=proposals)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    for group in ("backbone", "roi_heads"):
        grads = [p.grad for p in getattr(model, group).parameters() if p.requires_grad and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient reached {group}"
    model.eval()
    check_predictions(model.predict(images, proposals=proposals), images, 3)


def test_paper_settings_of_the_builders():
    vgg = build_model("fast_rcnn_vgg16", num_classes=20)
    heads = vgg.roi_heads
    assert heads.box_pooler.pool_type == "pool" and heads.box_pooler.output_size == 7
    assert heads.box_pooler.strides == [16] and vgg.backbone.feature_specs()["c5"].channels == 512
    assert heads.box_head.fc6.in_features == 512 * 7 * 7 and heads.box_head.out_channels == 4096
    assert isinstance(heads.box_head.dropout, torch.nn.Dropout)
    assert heads.box_predictor.bbox_pred.out_features == 21 * 4  # class-specific
    assert heads.sampler.batch_size_per_image == 64 and heads.sampler.positive_fraction == 0.25
    assert isinstance(heads.matcher, BackgroundBandMatcher) and heads.matcher.bg_iou_low == 0.1
    assert heads.smooth_l1_beta == 1.0 and heads.nms_threshold == 0.3
    assert vgg.transform.min_size == 600 and vgg.transform.max_size == 1000
    r18 = build_model("fast_rcnn_r18", num_classes=3)
    assert r18.roi_heads.box_pooler.strides == [16] and r18.roi_heads.box_head.fc6.in_features == 256 * 49
    tiny = build_model("fast_rcnn_tiny", num_classes=3)
    assert tiny.roi_heads.box_pooler.strides == [8] and tiny.transform.min_size is None


def test_background_band_ignores_easy_negatives():
    matcher = BackgroundBandMatcher(0.5, 0.5, 0.1)
    # image 0: one gt, IoUs 0.05 (too easy: ignored), 0.2 (background), 0.6 (positive); image 1: no gt
    iou = torch.tensor([[[0.05, 0.2, 0.6]], [[0.0, 0.0, 0.0]]])
    gt_valid = torch.tensor([[True], [False]])
    _, labels = matcher(iou, gt_valid)
    assert labels.tolist() == [[-1, 0, 1], [0, 0, 0]]
    _, labels = BackgroundBandMatcher(0.5, 0.5, 0.0)(iou, gt_valid)
    assert labels.tolist() == [[0, 0, 1], [0, 0, 0]]
    with pytest.raises(ValueError, match="bg_iou_low"):
        BackgroundBandMatcher(0.5, 0.5, 0.6)


def test_sampled_background_lies_in_the_band():
    model = build_model("fast_rcnn_tiny", num_classes=2)
    gt = torch.tensor([[20.0, 20.0, 60.0, 60.0]])
    targets = PackedTargets(boxes=gt, labels=torch.tensor([1]), batch_idx=torch.tensor([0]), num_images=1)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 90
    proposals = torch.cat([xy, xy + 5 + torch.rand(200, 2, generator=g) * 40], 1)
    iou = box_iou(proposals, gt)[:, 0]
    assert (iou < 0.1).sum() > 50 and ((iou >= 0.1) & (iou < 0.5)).sum() > 10  # both kinds are on offer
    s = model.roi_heads.sample_proposals(proposals, torch.zeros(200, dtype=torch.int64), targets)
    sampled_iou = box_iou(s.boxes, gt)[:, 0]
    background = s.labels == 0
    assert background.any() and (sampled_iou[background] >= 0.1).all() and (sampled_iou[background] < 0.5).all()


def test_missing_or_malformed_proposals_raise_value_errors():
    model = build_model("fast_rcnn_tiny", num_classes=3)
    images, targets, proposals = images_targets_proposals()
    with pytest.raises(ValueError, match=r"FastRCNN needs region proposals: pass proposals= as one Tensor\[P, 4\]"):
        model(images, targets)
    with pytest.raises(ValueError, match="needs region proposals"):
        model.eval().predict(images)
    with pytest.raises(ValueError, match="2 images but 3 proposal sets"):
        model.predict(images, proposals=proposals + proposals[:1])
    with pytest.raises(ValueError, match=r"proposals\[0\] must have shape \[P, 4\]"):
        model.predict(images, proposals=[torch.zeros(5, 4, 1), proposals[1]])
    with pytest.raises(ValueError, match=r"proposals\[1\] must be XYXY"):
        model.predict(images, proposals=[proposals[0], torch.tensor([[10.0, 10.0, 5.0, 20.0]])])


def test_overfit_one_image():
    overfit_one_image_and_detect_both("fast_rcnn_tiny", steps=60)
