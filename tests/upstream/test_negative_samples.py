"""Images without boxes (negative samples) in training and validation-loss batches.

Mirrors torchvision `test/test_models_detection_negative_samples.py`:
`test_targets_to_anchors`, `test_assign_targets_to_proposals`,
`test_forward_negative_sample_frcnn`, `test_forward_negative_sample_mrcnn`
(detkit's own cases, plus a batch of two negatives and a mixed batch, and Fast R-CNN / R-CNN).
"""

import pytest
import torch

from detkit.matching import AnchorGenerator, Matcher
from detkit.models import build_model
from detkit.structures import PackedTargets, batched_box_iou

SIZE = (96, 128)


def _empty_target(with_masks: bool) -> dict:
    t = {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}
    if with_masks:
        t["masks"] = torch.zeros((0, *SIZE), dtype=torch.uint8)
    return t


def _object_target(with_masks: bool) -> dict:
    t = {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([2])}
    if with_masks:
        m = torch.zeros((1, *SIZE), dtype=torch.uint8)
        m[0, 12:70, 10:60] = 1
        t["masks"] = m
    return t


def _proposals(n):
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(n, 30, 2, generator=g) * 60
    return list(torch.cat([xy, xy + 10 + torch.rand(n, 30, 2, generator=g) * 50], -1))


def test_padded_targets_without_boxes_keep_one_invalid_slot():
    packed = PackedTargets.from_list([_empty_target(False), _empty_target(False)])
    boxes, labels, valid = packed.padded(min_slots=1)
    assert boxes.shape == (2, 1, 4) and labels.shape == (2, 1) and not valid.any()
    assert packed.padded()[0].shape == (2, 0, 4)


def test_targets_to_anchors_all_negative():
    """torchvision: anchors of an image without boxes are all labelled background."""
    anchors = torch.cat(AnchorGenerator(((32,),), (0.5, 1.0, 2.0), (16,))([(5, 6)], device="cpu"))
    packed = PackedTargets.from_list([_empty_target(False)])
    gt, _, valid = packed.padded(min_slots=1)
    matched, labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(batched_box_iou(gt, anchors[None]), valid)
    assert labels.shape == (1, anchors.shape[0]) and (labels == 0).all()
    assert (matched == 0).all()


@pytest.mark.parametrize("name", ["faster_rcnn_tiny", "mask_rcnn_tiny", "fast_rcnn_tiny", "rcnn_tiny"])
@pytest.mark.parametrize("layout", ["one_negative", "two_negatives", "mixed"])
def test_forward_negative_samples(name, layout):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3).train()
    with_masks = name.startswith("mask")
    n = 1 if layout == "one_negative" else 2
    images = [torch.rand(3, *SIZE) for _ in range(n)]
    targets = [_empty_target(with_masks) for _ in range(n)]
    if layout == "mixed":
        targets[1] = _object_target(with_masks)
    extra = {"proposals": _proposals(n)} if getattr(model, "requires_proposals", False) else {}
    losses = model(images, targets, **extra)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    if layout == "mixed":
        return
    # no positives: nothing to regress (and no masks), as in torchvision
    assert losses["loss_box_reg"] == 0
    if "loss_rpn_box" in losses:
        assert losses["loss_rpn_box"] == 0
    if with_masks:
        assert losses["loss_mask"] == 0
    assert losses["loss_classifier"] > 0
    sum(losses.values()).backward()  # a usable graph
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_validation_loss_on_negative_batch_in_eval_mode():
    model = build_model("faster_rcnn_tiny", num_classes=3).eval()
    with torch.no_grad():
        losses = model([torch.rand(3, *SIZE)], [_empty_target(False)])
    assert all(torch.isfinite(v) for v in losses.values())
