"""Detectors take their losses from detkit.losses by name: defaults unchanged, IoU / focal losses by hand."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from proposal_model_cases import images_targets_proposals

from detkit.heads.roi_heads import SampledRoIs
from detkit.models import build_model


def _sampled(heads):
    """A hand-made RoI sample: 3 RoIs (2 positives of classes 1 and 2, 1 background), K = 2."""
    rois = torch.tensor([[10.0, 10.0, 50.0, 60.0], [30.0, 20.0, 90.0, 70.0], [0.0, 0.0, 20.0, 20.0]])
    gt = torch.tensor([[12.0, 8.0, 48.0, 64.0], [28.0, 25.0, 95.0, 66.0], [0.0, 0.0, 1.0, 1.0]])
    return (
        rois,
        gt,
        SampledRoIs(
            boxes=rois,
            batch_idx=torch.zeros(3, dtype=torch.int64),
            labels=torch.tensor([1, 2, 0]),
            regression_targets=heads.box_coder.encode(gt, rois),
            matched_boxes=gt,
            matched_in_image=torch.tensor([0, 1, 2]),
        ),
    )


@pytest.mark.parametrize("box_loss", ["smooth_l1", "l1", "giou", "diou", "ciou"])
def test_roi_head_box_losses_by_hand(box_loss):
    g = torch.Generator().manual_seed(0)
    model = build_model("faster_rcnn_tiny", num_classes=2, box_loss=box_loss)
    heads = model.roi_heads
    rois, gt, sampled = _sampled(heads)
    logits, deltas = torch.randn(3, 3, generator=g), torch.randn(3, 12, generator=g) * 0.1
    losses = heads.box_loss(logits, deltas, sampled)
    torch.testing.assert_close(losses["loss_classifier"], F.cross_entropy(logits, sampled.labels))
    pred = torch.stack([deltas.view(3, 3, 4)[0, 1], deltas.view(3, 3, 4)[1, 2]])  # matched class of each positive
    target = sampled.regression_targets[:2]
    if box_loss == "smooth_l1":  # torchvision's box loss: beta 1/9, summed, / sampled RoIs
        expected = F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="sum") / 3
    elif box_loss == "l1":
        expected = (pred - target).abs().sum() / 3
    else:
        boxes = heads.box_coder.decode(pred, rois[:2])
        reference = {
            "giou": torchvision.ops.generalized_box_iou_loss,
            "diou": torchvision.ops.distance_box_iou_loss,
            "ciou": torchvision.ops.complete_box_iou_loss,
        }[box_loss]
        expected = reference(boxes, gt[:2], reduction="sum") / 3
    torch.testing.assert_close(losses["loss_box_reg"], expected)


def test_focal_classification_and_rpn_losses():
    g = torch.Generator().manual_seed(1)
    model = build_model("faster_rcnn_tiny", num_classes=2, cls_loss="focal", box_loss="giou", rpn_box_loss="l1")
    assert (model.rpn.box_loss_type, model.rpn.cls_loss_type) == ("l1", "focal")
    assert (model.roi_heads.box_loss_type, model.roi_heads.cls_loss_type) == ("giou", "focal")
    _, _, sampled = _sampled(model.roi_heads)
    logits = torch.randn(3, 3, generator=g)
    loss = model.roi_heads.box_loss(logits, torch.zeros(3, 12), sampled)["loss_classifier"]
    p_t = F.softmax(logits, 1)[torch.arange(3), sampled.labels]
    torch.testing.assert_close(loss, ((1 - p_t) ** 2 * -p_t.log()).mean())


@pytest.mark.parametrize("name", ["faster_rcnn_tiny", "fast_rcnn_tiny", "rcnn_tiny"])
def test_training_steps_with_iou_and_focal_losses(name):
    torch.manual_seed(0)
    kwargs = {"box_loss": "ciou"} if name == "rcnn_tiny" else {"box_loss": "giou", "cls_loss": "focal"}
    model = build_model(name, num_classes=2, **kwargs)
    images, targets, proposals = images_targets_proposals()
    extra = {"proposals": proposals} if getattr(model, "requires_proposals", False) else {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = None
    for _ in range(8):
        losses = model(images, targets, **extra)
        assert all(torch.isfinite(v) for v in losses.values()), losses
        total = sum(losses.values())
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    assert total.item() < first


def test_unknown_loss_names_are_clear_errors():
    with pytest.raises(ValueError, match="box_loss.*giou"):
        build_model("faster_rcnn_tiny", num_classes=2, box_loss="iou")
    with pytest.raises(ValueError, match="cls_loss"):
        build_model("faster_rcnn_tiny", num_classes=2, rpn_cls_loss="hinge")
    with pytest.raises(ValueError, match="box_loss"):
        build_model("rcnn_tiny", num_classes=2, box_loss="mse")
