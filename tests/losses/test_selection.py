"""Losses chosen by name (what the heads call): equal to the torch / torchvision references."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from detkit.losses import (
    BOX_LOSSES,
    box_regression_loss,
    classification_loss,
    objectness_loss,
    softmax_focal_loss,
    uses_decoded_boxes,
)


def _boxes(g, n=6):
    xy = torch.rand(n, 2, generator=g) * 50
    return torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 40], 1)


def test_box_losses_match_references():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    expected = F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum")
    torch.testing.assert_close(box_regression_loss("smooth_l1", pred, target, beta=1 / 9), expected)
    torch.testing.assert_close(box_regression_loss("l1", pred, target), (pred - target).abs().sum())
    a, b = _boxes(g), _boxes(g)
    refs = {
        "giou": torchvision.ops.generalized_box_iou_loss,
        "diou": torchvision.ops.distance_box_iou_loss,
        "ciou": torchvision.ops.complete_box_iou_loss,
    }
    for name, ref in refs.items():
        assert uses_decoded_boxes(name)
        torch.testing.assert_close(box_regression_loss(name, a, b), ref(a, b, reduction="sum"))
        assert box_regression_loss(name, a, a).item() == pytest.approx(0.0, abs=1e-5)  # identical boxes
    assert not uses_decoded_boxes("smooth_l1") and set(BOX_LOSSES) == {"smooth_l1", "l1", "giou", "diou", "ciou"}
    with pytest.raises(ValueError, match="box loss"):
        box_regression_loss("iou", a, b)


def test_softmax_focal_loss_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p(class 1) = 0.75
    target = torch.tensor([1])
    assert softmax_focal_loss(logits, target).item() == pytest.approx(0.25**2 * -math.log(0.75))
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(8, 4, generator=g), torch.randint(0, 4, (8,), generator=g)
    torch.testing.assert_close(softmax_focal_loss(logits, target, gamma=0.0), F.cross_entropy(logits, target))
    torch.testing.assert_close(classification_loss("ce", logits, target), F.cross_entropy(logits, target))
    assert classification_loss("focal", logits, target) < F.cross_entropy(logits, target)  # easy examples weigh less
    with pytest.raises(ValueError, match="classification loss"):
        classification_loss("hinge", logits, target)


def test_objectness_losses_match_references():
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(10, generator=g), (torch.rand(10, generator=g) > 0.5).float()
    torch.testing.assert_close(
        objectness_loss("ce", logits, target), F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
    )
    torch.testing.assert_close(
        objectness_loss("focal", logits, target),
        torchvision.ops.sigmoid_focal_loss(logits, target, alpha=-1, reduction="sum"),
    )
