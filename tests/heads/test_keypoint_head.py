"""Keypoint head: shapes, heatmap targets, loss and decoding against torchvision's definitions."""

import pytest
import torch
from torchvision.models.detection.roi_heads import heatmaps_to_keypoints as tv_heatmaps_to_keypoints
from torchvision.models.detection.roi_heads import keypointrcnn_loss, keypoints_to_heatmap

from detkit.heads import KeypointHead, heatmaps_to_keypoints, keypoint_loss, keypoint_targets


def _rois_and_keypoints(seed=0, r=12, k=5):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(r, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(r, 2, generator=g) * 60], 1)
    # keypoints around the boxes: some outside, some on the far edges, all visibilities
    pts = boxes[:, None, :2] - 10 + torch.rand(r, k, 2, generator=g) * (boxes[:, None, 2:] - boxes[:, None, :2] + 20)
    pts[0, 0] = boxes[0, 2:]  # exactly on the right / bottom edge
    pts[1, 1, 0] = boxes[1, 2]
    vis = torch.randint(0, 3, (r, k, 1), generator=g).float()
    return boxes, torch.cat([pts, vis], -1)


def test_head_maps_14_to_56_one_heatmap_per_keypoint():
    head = KeypointHead(16, 5, conv_dims=(8, 8))
    assert head(torch.rand(3, 16, 14, 14)).shape == (3, 5, 56, 56)
    with pytest.raises(ValueError, match="num_keypoints"):
        KeypointHead(16, 0)


def test_targets_equal_torchvision_keypoints_to_heatmap():
    boxes, kps = _rois_and_keypoints()
    index, valid = keypoint_targets(kps, boxes, 56)
    tv_index, tv_valid = keypoints_to_heatmap(kps, boxes, 56)
    assert torch.equal(valid, tv_valid.bool()) and torch.equal(index, tv_index)
    assert valid.any() and not valid.all()
    # the far-edge keypoint of RoI 0 is in the last cell of both axes
    assert valid[0, 0] == (kps[0, 0, 2] > 0) and (index[0, 0] == 56 * 56 - 1 or not valid[0, 0])


def test_targets_by_hand():
    boxes = torch.tensor([[10.0, 20.0, 38.0, 48.0]])  # 28 x 28: 2 cells per pixel at M = 56
    kps = torch.tensor([[[10.0, 20.0, 2], [24.2, 20.9, 1], [38.0, 48.0, 2], [9.9, 30.0, 2], [20.0, 30.0, 0]]])
    index, valid = keypoint_targets(kps, boxes, 56)
    assert valid.tolist() == [[True, True, True, False, False]]
    assert index.tolist() == [[0, 1 * 56 + 28, 55 * 56 + 55, 0, 0]]


def test_loss_equals_torchvision_keypointrcnn_loss():
    boxes, kps = _rois_and_keypoints(seed=1)
    logits = torch.randn(boxes.shape[0], kps.shape[1], 56, 56, generator=torch.Generator().manual_seed(2))
    index, valid = keypoint_targets(kps, boxes, 56)
    ours = keypoint_loss(logits, index, valid)
    # torchvision: two images, RoIs matched to their own keypoints
    split = 5
    expected = keypointrcnn_loss(
        logits, [boxes[:split], boxes[split:]], [kps[:split], kps[split:]], [torch.arange(split), torch.arange(7)]
    )
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


def test_loss_without_valid_keypoints_is_zero_with_a_gradient():
    logits = torch.randn(2, 3, 56, 56, requires_grad=True)
    loss = keypoint_loss(logits, torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0 and logits.grad is not None


def test_decoding_equals_torchvision_heatmaps_to_keypoints():
    boxes, _ = _rois_and_keypoints(seed=3, r=9)
    boxes[0, 2:] = boxes[0, :2] + 0.4  # a box under one pixel: clamped to 1 px
    maps = torch.randn(9, 5, 56, 56, generator=torch.Generator().manual_seed(4))
    kps, scores = heatmaps_to_keypoints(maps, boxes)
    tv_kps, tv_scores = tv_heatmaps_to_keypoints(maps, boxes)
    assert torch.equal(kps, tv_kps) and torch.equal(scores, tv_scores)
    assert (kps[..., 2] == 1).all()


def test_decoding_by_hand_and_without_detections():
    maps = torch.full((1, 1, 56, 56), -5.0)
    maps[0, 0, 14, 42] = 5.0  # 3/4 across, 1/4 down
    kps, scores = heatmaps_to_keypoints(maps, torch.tensor([[100.0, 200.0, 212.0, 312.0]]))  # 112 x 112 px
    assert abs(kps[0, 0, 0].item() - (100 + 84.5)) <= 1 and abs(kps[0, 0, 1].item() - (200 + 28.5)) <= 1
    # the arg-max lies 1/4 source cell from the peak on both axes: cubic weight ((1.25 t - 2.25) t^2 + 1) at t = 1/4
    w = (1.25 * 0.25 - 2.25) * 0.25**2 + 1
    assert abs(scores[0, 0].item() - (-5 + 10 * w * w)) < 1e-4
    kps, scores = heatmaps_to_keypoints(torch.zeros(0, 4, 56, 56), torch.zeros(0, 4))
    assert kps.shape == (0, 4, 3) and scores.shape == (0, 4)
