"""R-CNN: warping geometry, sampling, SVM hard negatives, contract and a one-image overfit."""

import pytest
import torch
from proposal_model_cases import check_predictions, images_targets_proposals, overfit_one_image_and_detect_both

from detkit.models import build_model
from detkit.models.base import validate_proposals
from detkit.models.rcnn import (
    RCNN,
    SampledRegions,
    context_padded_boxes,
    hard_negative_mask,
    warp_regions,
)
from detkit.structures import PackedTargets, box_iou

# rcnn_vgg16 at a CPU-friendly size: 64 px warps, small fc layers
SMALL_VGG = dict(crop_size=64, context_padding=4, representation_size=64, batch_size=8, test_batch_size=8)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("rcnn_tiny", {}),
        ("rcnn_tiny", {"classifier": "svm"}),
        ("rcnn_tiny", {"min_size": 64}),
        ("rcnn_vgg16", SMALL_VGG),
    ],
)
def test_training_step_and_predict(name, overrides):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **overrides)
    assert isinstance(model, RCNN) and model.requires_proposals
    images, targets, proposals = images_targets_proposals()
    model.train()
    losses = model(images, targets, proposals=proposals)
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    assert losses["loss_box_reg"] > 0  # two proposals overlap their objects by IoU >= 0.6
    sum(losses.values()).backward()
    for group in ("backbone", "head", "cls_score", "bbox_pred"):
        grads = [p.grad for p in getattr(model, group).parameters() if p.requires_grad and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient reached {group}"

    model.eval()
    with torch.no_grad():
        val_losses = model(images, targets, proposals=proposals)  # validation loss in eval mode
    assert all(torch.isfinite(v) for v in val_losses.values())
    results = model.predict(images, proposals=proposals)
    check_predictions(results, images, 3)
    assert model(images, proposals=proposals)[0]["boxes"].shape[1] == 4  # forward without targets predicts


def test_predict_with_empty_proposals_and_scores_every_proposal_in_chunks():
    torch.manual_seed(0)
    model = build_model("rcnn_tiny", num_classes=3, score_threshold=-1.0, nms_threshold=1.0, test_batch_size=3).eval()
    images, _, proposals = images_targets_proposals()
    results = model.predict(images, proposals=[proposals[0], torch.zeros((0, 4))])
    # every proposal survives (no threshold, no suppression): 4 proposals x 3 classes, then nothing
    assert results[0]["boxes"].shape == (12, 4) and results[1]["boxes"].shape == (0, 4)


def test_missing_or_malformed_proposals_raise_value_errors():
    model = build_model("rcnn_tiny", num_classes=3)
    images, targets, proposals = images_targets_proposals()
    with pytest.raises(ValueError, match=r"needs region proposals: pass proposals= as one Tensor\[P, 4\]"):
        model(images, targets)
    with pytest.raises(ValueError, match="needs region proposals"):
        model.predict(images)
    with pytest.raises(ValueError, match="2 images but 1 proposal sets"):
        model(images, targets, proposals=proposals[:1])
    with pytest.raises(ValueError, match=r"proposals\[1\] must have shape \[P, 4\]"):
        model(images, targets, proposals=[proposals[0], torch.zeros(4, 5)])
    with pytest.raises(ValueError, match=r"proposals\[0\] must be XYXY"):
        model(images, targets, proposals=[torch.tensor([[30.0, 30.0, 10.0, 50.0]]), proposals[1]])
    with pytest.raises(ValueError, match="non-finite"):
        model.predict(images, proposals=[torch.tensor([[0.0, 0.0, float("nan"), 5.0]]), proposals[1]])
    with pytest.raises(ValueError, match="must be a list"):
        model.predict(images, proposals=torch.zeros(2, 3, 4))


def test_validate_proposals_drops_empty_boxes_and_accepts_arrays():
    out = validate_proposals([[[0, 0, 10, 10], [5, 5, 5, 9]], []], 2)
    assert out[0].tolist() == [[0.0, 0.0, 10.0, 10.0]] and out[0].dtype == torch.float32
    assert out[1].shape == (0, 4)


def test_context_padding_enlarges_the_box_by_s_over_s_minus_2p():
    boxes = torch.tensor([[40.0, 40.0, 136.0, 136.0], [0.0, 10.0, 48.0, 34.0]])
    padded = context_padded_boxes(boxes, 224, 16)
    # factor 224 / 192 = 7 / 6 about the centre: 96 -> 112 and 48 x 24 -> 56 x 28
    assert torch.allclose(padded, torch.tensor([[32.0, 32.0, 144.0, 144.0], [-4.0, 8.0, 52.0, 36.0]]))
    assert torch.equal(context_padded_boxes(boxes, 224, 0), boxes)
    with pytest.raises(ValueError, match="context padding"):
        context_padded_boxes(boxes, 32, 16)


def test_warp_keeps_exactly_p_pixels_of_context_around_the_box():
    # a 96 x 96 white box on black; with p = 16 at S = 224 the box fills the central 192 x 192
    image = torch.zeros(1, 1, 200, 200)
    image[..., 40:136, 40:136] = 1.0
    crop = warp_regions(image, torch.tensor([[40.0, 40.0, 136.0, 136.0]]), torch.tensor([0]), 224, 16)[0, 0]
    assert crop.shape == (224, 224)
    # each crop pixel spans 0.5 source px; the box edge sits at crop coordinate 16 (and 208),
    # so pixels 0-14 sample only context, 15 and 16 straddle the edge, 17-206 only the box
    assert crop[:15].abs().max() == 0 and crop[:, :15].abs().max() == 0
    assert crop[209:].abs().max() == 0 and crop[:, 209:].abs().max() == 0
    assert torch.allclose(crop[17:207, 17:207], torch.ones(190, 190))
    assert torch.allclose(crop[100, 15:17], torch.tensor([0.25, 0.75]))


def test_warp_is_one_batched_call_over_images_and_fills_outside_with_zero():
    images = torch.stack([torch.full((3, 40, 40), 0.2), torch.full((3, 40, 40), 0.8)])
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [10.0, 10.0, 30.0, 30.0], [30.0, 30.0, 80.0, 80.0]])
    crops = warp_regions(images, boxes, torch.tensor([1, 0, 1]), 8)
    assert crops.shape == (3, 3, 8, 8)
    assert torch.allclose(crops[0], torch.full((3, 8, 8), 0.8)) and torch.allclose(crops[1], torch.full((3, 8, 8), 0.2))
    assert crops[2, :, -1, -1].abs().max() == 0  # far outside the image: zeros (the mean after normalisation)


def test_hard_negative_mask_keeps_the_top_scoring_negatives_of_each_class():
    scores = torch.tensor([[0.9, -0.5], [0.1, 0.7], [2.0, 0.3], [-1.0, 0.6], [0.5, 0.8]])
    negatives = torch.tensor([[True, True], [True, True], [False, True], [True, True], [True, False]])
    mask = hard_negative_mask(scores, negatives, 2)
    # class 0 negatives: rows 0 (0.9), 1 (0.1), 3 (-1.0), 4 (0.5) -> rows 0, 4 (row 2 scores 2.0 but is no negative)
    # class 1 negatives: rows 0 (-0.5), 1 (0.7), 2 (0.3), 3 (0.6) -> rows 1, 3 (row 4 is no negative)
    expected = torch.tensor([[True, False], [False, True], [False, False], [False, True], [True, False]])
    assert torch.equal(mask, expected)
    assert torch.equal(hard_negative_mask(scores, negatives, 10), negatives)
    assert not hard_negative_mask(scores, negatives, 0).any()


def test_svm_loss_counts_positives_and_only_the_hard_negatives():
    model = build_model("rcnn_tiny", num_classes=2, classifier="svm", svm_hard_negatives=1)
    scores = torch.tensor([[0.5, -2.0], [0.8, 0.9], [-0.4, 0.2], [0.3, -0.7]])
    r = scores.shape[0]
    sampled = SampledRegions(
        boxes=torch.zeros(r, 4),
        batch_idx=torch.zeros(r, dtype=torch.int64),
        labels=torch.tensor([1, 0, 0, 2]),
        class_iou=torch.tensor([[1.0, 0.0], [0.1, 0.2], [0.0, 0.35], [0.0, 0.7]]),
        svm_positive=torch.tensor([True, False, False, False]),  # row 3 overlaps class 2 but is no gt
        matched_gt=torch.zeros(r, dtype=torch.int64),
        reg_mask=torch.zeros(r, dtype=torch.bool),
        reg_labels=torch.tensor([1, 0, 0, 2]),
        reg_targets=torch.zeros(r, 4),
    )
    # positives: (row 0, class 1): hinge 1 - 0.5 = 0.5
    # class-1 negatives (IoU < 0.3): rows 1 (0.8), 2 (-0.4), 3 (0.3) -> hardest row 1: 1 + 0.8 = 1.8
    # class-2 negatives: rows 0 (-2.0), 1 (0.9); rows 2, 3 overlap class 2 by >= 0.3 -> row 1: 1 + 0.9 = 1.9
    loss = model.classifier_loss(scores, sampled)
    assert torch.isclose(loss, torch.tensor((0.5 + 1.8 + 1.9) / 4))


def test_sampling_labels_quota_regression_and_svm_positives():
    model = build_model("rcnn_tiny", num_classes=2, batch_size=6, positive_fraction=0.5)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 40.0, 40.0]])
    targets = PackedTargets(boxes=gt, labels=torch.tensor([1, 2]), batch_idx=torch.tensor([0, 1]), num_images=2)
    proposals = torch.tensor(
        [
            [0.0, 0.0, 10.0, 9.0],  # image 0: IoU 0.9 with class 1
            [0.0, 0.0, 10.0, 5.5],  # IoU 0.55: positive, no regression target
            [50.0, 50.0, 60.0, 60.0],  # background
            [30.0, 0.0, 40.0, 8.0],  # background
            [20.0, 20.0, 40.0, 36.0],  # image 1: IoU 0.8 with class 2
            [0.0, 0.0, 5.0, 5.0],  # background
            [60.0, 60.0, 70.0, 70.0],  # background
        ]
    )
    batch_idx = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    # candidates add the 2 gt boxes: 5 positives, 4 negatives; 6 sampled, at most 3 positive
    torch.manual_seed(0)
    s = model.sample_regions(proposals, batch_idx, targets)
    assert isinstance(s, SampledRegions)
    assert s.boxes.shape[0] == 6 and int((s.labels > 0).sum()) == 3  # 3 of 5 positives, 3 negatives
    for box, label, img, reg, pos in zip(s.boxes, s.labels, s.batch_idx, s.reg_mask, s.svm_positive):
        iou = box_iou(box[None], gt[img][None]).item()
        assert int(label) == (int(img) + 1 if iou >= 0.5 else 0)
        assert bool(reg) == (iou >= 0.6 - 1e-6)
        assert bool(pos) == bool(any(torch.equal(box, g) for g in gt))
    # regression targets encode the matched gt
    idx = torch.nonzero(s.reg_mask).squeeze(1)
    decoded = model.box_coder.decode(s.reg_targets[idx], s.boxes[idx])
    assert torch.allclose(decoded, gt[s.batch_idx[idx]], atol=1e-4)
    assert torch.equal(s.reg_targets[~s.reg_mask], torch.zeros(6 - idx.numel(), 4))
    # field-wise indexing keeps the rows together
    first = s[idx[:1]]
    assert torch.equal(first.boxes, s.boxes[idx[:1]]) and torch.equal(first.matched_gt, s.matched_gt[idx[:1]])


@pytest.mark.slow  # > 6 s: `make test-all`
def test_overfit_one_image():
    overfit_one_image_and_detect_both("rcnn_tiny", steps=40)
