"""Differential tests against torchvision: mask pasting, RPN proposal filtering and
detection post-processing on the same inputs."""

import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.models.detection.rpn import AnchorGenerator as TVAnchors
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.models.detection.rpn import RPNHead as TVRPNHead

from detkit.heads import paste_masks
from detkit.heads.postprocess import select_detections
from detkit.matching import AnchorGenerator, BoxCoder
from detkit.proposals.rpn import RPN, RPNHead

H, W = 60, 80
EDGE_BOXES = torch.tensor(
    [
        [-10.0, -5.0, 30.0, 25.0],  # partly outside, top left
        [60.0, 40.0, 95.0, 70.0],  # partly outside, bottom right
        [0.0, 0.0, 80.0, 60.0],  # the whole image, on its edges
        [79.0, 59.0, 80.0, 60.0],  # 1 px in the corner
        [10.2, 10.4, 10.9, 10.8],  # under 1 px
        [20.0, 30.0, 20.3, 45.0],  # under 1 px wide, tall
        [5.5, 7.25, 44.75, 33.5],  # fractional
    ]
)
OUTSIDE = torch.tensor([[-30.0, -30.0, -5.0, -2.0], [90.0, 10.0, 120.0, 30.0]])  # torchvision raises on these


@pytest.mark.parametrize("resolution", [28, 14])
def test_paste_masks_equals_torchvision(resolution):
    g = torch.Generator().manual_seed(resolution)
    probs = torch.rand(EDGE_BOXES.shape[0], resolution, resolution, generator=g)
    ref = paste_masks_in_image(probs[:, None], EDGE_BOXES, (H, W), padding=1)[:, 0]
    out = paste_masks(probs, EDGE_BOXES, (H, W), threshold=None)
    assert out.shape == ref.shape == (EDGE_BOXES.shape[0], H, W)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    binary = paste_masks(probs, EDGE_BOXES, (H, W))
    near = (ref - 0.5).abs() < 1e-5  # float ties at the threshold may go either way
    assert torch.equal(binary.bool()[~near], (ref >= 0.5)[~near])
    assert not paste_masks(probs[:2], OUTSIDE, (H, W), threshold=None).any()  # boxes wholly outside: empty


def _rpn_pair(pre_nms, post_nms, nms, min_size, score):
    sizes, ratios = ((32,), (64,), (128,)), (0.5, 1.0, 2.0)
    dk = RPN(
        RPNHead(8, 3),
        AnchorGenerator(sizes, [ratios] * 3, (8, 16, 32)),
        in_features=["a", "b", "c"],
        pre_nms_top_n_test=pre_nms,
        post_nms_top_n_test=post_nms,
        nms_threshold=nms,
        min_box_size=min_size,
        score_threshold=score,
    ).eval()
    tv = RegionProposalNetwork(
        TVAnchors(sizes, (ratios,) * 3), TVRPNHead(8, 3), 0.7, 0.3, 256, 0.5,
        dict(training=pre_nms, testing=pre_nms), dict(training=post_nms, testing=post_nms), nms,
        score_thresh=score,
    ).eval()  # fmt: skip
    tv.min_size = min_size
    return dk, tv


@pytest.mark.parametrize("pre_nms,post_nms,nms,score", [(2000, 1000, 0.7, 0.0), (1500, 300, 0.5, 0.3)])
def test_rpn_filter_proposals_equals_torchvision(pre_nms, post_nms, nms, score):
    # two images of different sizes in a padded 256 x 384 batch; > 1000 boxes per image so
    # torchvision runs its exact per-level NMS
    g = torch.Generator().manual_seed(pre_nms)
    dk, tv = _rpn_pair(pre_nms, post_nms, nms, 1e-3, score)
    grids = [(32, 48), (16, 24), (8, 12)]
    anchors = torch.cat(dk.anchor_generator(grids, device="cpu", image_size=(256, 384)))
    n = 2
    logits = torch.randn(n, anchors.shape[0], generator=g) * 3
    deltas = torch.randn(n, anchors.shape[0], 4, generator=g) * 0.3
    proposals = BoxCoder().decode(deltas, anchors.expand(n, -1, -1))
    counts = [h * w * 3 for h, w in grids]
    sizes = torch.tensor([[256, 384], [200, 300]])
    boxes, batch_idx = dk.filter_proposals(proposals, logits, counts, sizes)
    tv_boxes, tv_scores = tv.filter_proposals(proposals, logits.reshape(-1, 1), sizes.tolist(), counts)
    for i in range(n):
        ours = boxes[batch_idx == i]
        assert ours.shape == tv_boxes[i].shape, (ours.shape, tv_boxes[i].shape)
        torch.testing.assert_close(ours, tv_boxes[i], rtol=0, atol=1e-4)  # same order: by score


def test_detection_postprocess_equals_torchvision():
    g = torch.Generator().manual_seed(7)
    num_classes, r = 6, 400  # K + 1 = 7 with background
    xy = torch.rand(r, 2, generator=g) * torch.tensor([300.0, 200.0])
    proposals = torch.cat([xy, xy + 8 + torch.rand(r, 2, generator=g) * 120], 1)
    proposals[:5] = torch.tensor([[-20.0, -10.0, 50.0, 40.0]])  # duplicates partly outside
    logits = torch.randn(r, num_classes + 1, generator=g) * 2
    box_regression = torch.randn(r, (num_classes + 1) * 4, generator=g) * 0.5
    image_sizes = [(240, 360), (220, 320)]
    split = [250, 150]
    tv = TVRoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100)
    tv_boxes, tv_scores, tv_labels = tv.postprocess_detections(
        logits, box_regression, list(proposals.split(split)), image_sizes
    )
    batch_idx = torch.repeat_interleave(torch.arange(2), torch.tensor(split))
    scores = torch.softmax(logits, -1)[:, 1:]
    boxes = BoxCoder((10.0, 10.0, 5.0, 5.0)).decode(box_regression, proposals)[:, 1:]
    dets = select_detections(
        boxes,
        scores,
        batch_idx,
        torch.tensor(image_sizes),
        score_threshold=0.05,
        min_box_size=1e-2,
        nms_threshold=0.5,
        detections_per_image=100,
    )
    for i, out in enumerate(dets.split()):
        assert out["boxes"].shape == tv_boxes[i].shape
        # same detections; equal scores may be listed in either order
        key = lambda b, s, lab: sorted(zip(s.tolist(), lab.tolist(), b.round(decimals=3).tolist()))  # noqa: E731
        ours, theirs = key(out["boxes"], out["scores"], out["labels"]), key(tv_boxes[i], tv_scores[i], tv_labels[i])
        for (s1, l1, b1), (s2, l2, b2) in zip(ours, theirs):
            assert l1 == l2 and abs(s1 - s2) < 1e-6 and max(abs(a - b) for a, b in zip(b1, b2)) < 2e-3
