"""Keypoint R-CNN: torchvision's keypointrcnn_resnet50_fpn checkpoints load and give its detections and
keypoints; keypoints flow through targets, resizing and predictions; bad keypoint input is refused.

The parity runs a randomly initialised torchvision model (seeded; no download), saved and loaded into
detkit with torchvision's arithmetic (`configure_kernels(fold_bn=False, cpu_kernels=False)`), as
tests/models/test_torchvision_compat.py does for Faster / Mask R-CNN. The keypoint head costs
~7 GFLOP per detection, so few detections are kept.
"""

import pytest
import torch
from torchvision.models.detection import keypointrcnn_resnet50_fpn

from detkit.layers import convert_frozen_batchnorm
from detkit.models import build_model, configure_kernels
from detkit.structures import Detections, PackedTargets

# measured: every difference 0.0 at both sizes (the same ops in the same order); the bounds leave room
# for float-rounding differences elsewhere moving a heatmap's arg-max by one cell
BOX_ATOL, SCORE_ATOL, KEYPOINT_ATOL, KEYPOINT_SCORE_ATOL = 1e-2, 1e-4, 1e-2, 1e-3

CASES = {
    "224x291": ((200, 260), 224, 300, 5),
    "800x1216": ((800, 1216), 800, 1333, 10),
}


@pytest.fixture(scope="module")
def torchvision_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    tv = keypointrcnn_resnet50_fpn(weights=None, weights_backbone=None)  # 2 classes, 17 keypoints
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.8, 1.2)
            m.weight.data.uniform_(0.8, 1.2)
    tv.roi_heads.box_predictor.cls_score.bias.data[1] = 4.0  # persons survive the 0.05 score threshold
    tv = convert_frozen_batchnorm(tv).eval()
    path = tmp_path_factory.mktemp("tv_kp") / "keypointrcnn.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def max_differences(tv, path, case):
    """Max |difference| of boxes, scores, keypoints (x, y) and keypoint scores, detections paired by box."""
    size, min_size, max_size, detections = CASES[case]
    image = torch.rand(3, *size, generator=torch.Generator().manual_seed(1))
    tv.transform.min_size, tv.transform.max_size = (min_size,), max_size
    tv.roi_heads.detections_per_img = detections
    with torch.no_grad():
        expected = tv([image])[0]
    dk = build_model(
        "keypoint_rcnn_r50_fpn",
        num_classes=1,
        weights=str(path),
        min_size=min_size,
        max_size=max_size,
        detections_per_image=detections,
    )
    got = configure_kernels(dk, fold_bn=False, cpu_kernels=False).predict([image])[0]
    assert expected["boxes"].shape[0] == detections, "the test needs detections to compare"
    assert got["boxes"].shape == expected["boxes"].shape and got["keypoints"].shape == (detections, 17, 3)
    match = torch.cdist(expected["boxes"], got["boxes"], p=1).argmin(1)
    assert match.unique().numel() == detections
    assert torch.equal(got["labels"][match], expected["labels"])
    assert (got["keypoints"][..., 2] == 1).all()
    return {
        "boxes": (got["boxes"][match] - expected["boxes"]).abs().max().item(),
        "scores": (got["scores"][match] - expected["scores"]).abs().max().item(),
        "keypoints": (got["keypoints"][match] - expected["keypoints"]).abs().max().item(),
        "keypoints_scores": (got["keypoints_scores"][match] - expected["keypoints_scores"]).abs().max().item(),
    }


def assert_close_to_torchvision(diff):
    assert diff["boxes"] <= BOX_ATOL and diff["scores"] <= SCORE_ATOL, diff
    assert diff["keypoints"] <= KEYPOINT_ATOL and diff["keypoints_scores"] <= KEYPOINT_SCORE_ATOL, diff


def test_same_detections_and_keypoints_as_torchvision_small(torchvision_checkpoint):
    assert_close_to_torchvision(max_differences(*torchvision_checkpoint, "224x291"))


@pytest.mark.slow
def test_same_detections_and_keypoints_as_torchvision_800x1216(torchvision_checkpoint):
    assert_close_to_torchvision(max_differences(*torchvision_checkpoint, "800x1216"))


def test_torchvision_keypoint_keys_map_onto_detkit(torchvision_checkpoint):
    tv, path = torchvision_checkpoint
    dk = build_model("keypoint_rcnn_r50_fpn", num_classes=1, weights=str(path))
    assert torch.equal(dk.roi_heads.keypoint_head.convs[7].conv.weight, tv.roi_heads.keypoint_head[14].weight)
    assert torch.equal(dk.roi_heads.keypoint_head.deconv.bias, tv.roi_heads.keypoint_predictor.kps_score_lowres.bias)
    assert dk.has_keypoints and dk.num_keypoints == 17
    assert not build_model("mask_rcnn_tiny", num_classes=2).has_keypoints


def _scene():
    image = torch.rand(3, 100, 160, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[10.0, 12.0, 50.0, 60.0], [70.0, 40.0, 150.0, 95.0]])
    keypoints = torch.tensor(
        [
            [[30.0, 12.0, 2], [50.0, 36.0, 2], [30.0, 60.0, 1], [0.0, 0.0, 0]],
            [[110.0, 40.0, 2], [150.0, 70.0, 2], [110.0, 95.0, 2], [70.0, 70.0, 2]],
        ]
    )
    return image, {"boxes": boxes, "labels": torch.tensor([1, 2]), "keypoints": keypoints}


def test_targets_keypoints_scale_with_the_boxes():
    image, target = _scene()
    model = build_model("keypoint_rcnn_tiny", num_classes=2)  # 100 x 160 -> 128 x 204 (floor of 204.8)
    _, packed = model.prepare([image], [target])
    scale = torch.tensor([204 / 160, 128 / 100])
    torch.testing.assert_close(packed.keypoints[..., :2], target["keypoints"][..., :2] * scale)
    assert torch.equal(packed.keypoints[..., 2], target["keypoints"][..., 2])
    assert torch.equal(packed[torch.tensor([1])].keypoints, packed.keypoints[1:])


def test_detections_keypoints_resize_to_original_pixels():
    dets = Detections(
        boxes=torch.tensor([[10.0, 10.0, 20.0, 20.0]]),
        scores=torch.tensor([0.9]),
        labels=torch.tensor([1]),
        batch_idx=torch.tensor([0]),
        num_images=1,
        keypoints=torch.tensor([[[12.0, 16.0, 1.0]]]),
        keypoints_scores=torch.tensor([[3.0]]),
    )
    out = dets.resize(torch.tensor([[100, 200]]), torch.tensor([[50, 400]])).split()[0]
    assert out["keypoints"].tolist() == [[[24.0, 8.0, 1.0]]] and out["keypoints_scores"].tolist() == [[3.0]]
    assert out["boxes"].tolist() == [[20.0, 5.0, 40.0, 10.0]]


def test_training_step_and_predictions_of_the_tiny_model():
    torch.manual_seed(0)
    image, target = _scene()
    model = build_model("keypoint_rcnn_tiny", num_classes=2)
    losses = model([image], [target])
    assert "loss_keypoint" in losses and torch.isfinite(losses["loss_keypoint"])
    sum(losses.values()).backward()
    assert model.roi_heads.keypoint_head.deconv.weight.grad.abs().sum() > 0
    out = model.predict([image, torch.rand(3, 64, 80)])
    for det, (h, w) in zip(out, [(100, 160), (64, 80)]):
        d = det["boxes"].shape[0]
        assert det["keypoints"].shape == (d, 4, 3) and det["keypoints_scores"].shape == (d, 4)
        inside = (det["keypoints"][..., 0] <= w + 1) & (det["keypoints"][..., 1] <= h + 1)
        assert inside.all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("keypoints"), "needs targets\\[i\\]\\['keypoints'\\]"),
        (lambda t: t.update(keypoints=t["keypoints"][:, :3]), "have 3 keypoints per object but the model predicts 4"),
        (lambda t: t.update(keypoints=t["keypoints"][:1]), "targets\\[0\\]\\['keypoints'\\] must be a Tensor\\[2, "),
        (lambda t: t["keypoints"].__setitem__((0, 0, 2), 3.0), "v in 0, 1, 2"),
    ],
)
def test_bad_keypoints_are_refused(change, message):
    image, target = _scene()
    change(target)
    model = build_model("keypoint_rcnn_tiny", num_classes=2)
    with pytest.raises(ValueError, match=message):
        model([image], [target])


def test_keypoints_given_for_some_images_only():
    image, target = _scene()
    other = {k: v for k, v in target.items() if k != "keypoints"}
    with pytest.raises(ValueError, match="targets\\[1\\]\\['keypoints'\\] must be given for all images or for none"):
        PackedTargets.from_list([target, other])


@pytest.mark.slow  # ~50 s of CPU
def test_keypoint_rcnn_tiny_overfits_one_image():
    """Two rectangles with their 4 edge midpoints (top, right, bottom, left) as keypoints: after training on
    the one image, the confident detections' keypoints lie within a few pixels of the truth."""
    torch.manual_seed(0)
    image = torch.full((3, 128, 128), 0.2)
    boxes = torch.tensor([[10.0, 12.0, 50.0, 60.0], [70.0, 64.0, 118.0, 110.0]])
    for (x1, y1, x2, y2), c in zip(boxes.int().tolist(), [(0.9, 0.1, 0.1), (0.1, 0.8, 0.2)]):
        image[:, y1:y2, x1:x2] = torch.tensor(c)[:, None, None]
    x1, y1, x2, y2 = boxes.unbind(1)
    cx, cy, two = (x1 + x2) / 2, (y1 + y2) / 2, torch.full_like(x1, 2.0)
    keypoints = torch.stack(
        [torch.stack(p, -1) for p in ((cx, y1, two), (x2, cy, two), (cx, y2, two), (x1, cy, two))], 1
    )  # [2, 4, 3]
    target = {"boxes": boxes, "labels": torch.tensor([1, 2]), "keypoints": keypoints}
    model = build_model("keypoint_rcnn_tiny", num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(150):
        losses = model([image], [target])
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    result = model.predict([image])[0]
    for k in range(2):
        hits = (result["labels"] == k + 1) & (result["scores"] > 0.5)
        assert hits.any(), f"object {k} not detected: {result['scores']}"
        best = torch.nonzero(hits)[0, 0]
        error = (result["keypoints"][best, :, :2] - keypoints[k, :, :2]).norm(dim=-1)
        assert error.max() < 4.0, (k, error, {n: v.item() for n, v in losses.items()})
