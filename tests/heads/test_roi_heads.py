"""RoIHeads: proposal sampling into SampledRoIs, and the mask pasting method, on hand-checked cases."""

import torch

from detkit.heads.roi_heads import SampledRoIs
from detkit.models import build_model
from detkit.structures import PackedTargets


def test_sample_proposals_labels_matches_and_encodes_the_whole_batch():
    heads = build_model("faster_rcnn_tiny", num_classes=3).roi_heads
    targets = PackedTargets(
        boxes=torch.tensor([[10.0, 10.0, 50.0, 50.0], [0.0, 0.0, 20.0, 20.0]]),
        labels=torch.tensor([2, 1]),
        batch_idx=torch.tensor([0, 1]),
        num_images=2,
    )
    proposals = torch.tensor(
        [
            [10.0, 10.0, 50.0, 50.0],  # image 0: the gt box itself
            [100.0, 100.0, 120.0, 120.0],  # image 0: background
            [0.0, 0.0, 20.0, 22.0],  # image 1: IoU 400 / 440 with its gt
            [60.0, 60.0, 80.0, 80.0],  # image 1: background
        ]
    )
    rois = heads.sample_proposals(proposals, torch.tensor([0, 0, 1, 1]), targets)
    assert isinstance(rois, SampledRoIs)
    # few candidates: all sampled, grouped by image, the gt boxes (added as proposals) last
    assert rois.batch_idx.tolist() == [0, 0, 0, 1, 1, 1]
    assert rois.labels.tolist() == [2, 0, 2, 1, 0, 1]
    assert rois.matched_in_image.tolist() == [0, 0, 0, 0, 0, 0]
    assert torch.equal(rois.boxes[[0, 1, 3, 4]], proposals)
    assert torch.equal(rois.matched_boxes[[2, 5]], targets.boxes)
    pos = rois[rois.labels > 0]  # one index for every field
    assert pos.batch_idx.tolist() == [0, 0, 1, 1] and pos.labels.tolist() == [2, 2, 1, 1]
    exact = pos.regression_targets[[0, 1, 3]]
    assert exact.abs().max() == 0  # proposals equal to their gt need no regression
    # (dx, dy, dw, dh) * (10, 10, 5, 5) for [0, 0, 20, 22] -> [0, 0, 20, 20]: dy = -1 / 22, dh = log(20 / 22)
    expected = torch.tensor([0.0, -10.0 / 22, 0.0, 5 * torch.log(torch.tensor(20.0 / 22)).item()])
    torch.testing.assert_close(pos.regression_targets[2], expected)


def test_paste_detection_masks():
    heads = build_model("mask_rcnn_tiny", num_classes=3).roi_heads
    probs = torch.zeros(3, 4, 4)
    probs[:, 1:3, 1:3] = 1.0
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 2.0, 10.0, 10.0], [0.0, 0.0, 4.0, 4.0]])
    batch_idx = torch.tensor([1, 0, 1])
    sizes = torch.tensor([[12, 16], [10, 10]])
    masks = heads.paste_detection_masks(probs, boxes, batch_idx, sizes)
    assert [tuple(m.shape) for m in masks] == [(1, 12, 16), (2, 10, 10)] and masks[0].dtype == torch.uint8
    assert masks[0][0, 6, 6] == 1 and masks[0][0, 0, 0] == 0 and masks[1][0, 4, 4] == 1
    assert heads.has_masks
    assert not hasattr(heads, "paste_masks") and not hasattr(heads, "has_mask")  # the former names
