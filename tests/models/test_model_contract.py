"""Contract tests over every registered detector: a CPU training step and predict."""

import pytest
import torch

from detkit.models import Detector, build_model, list_models

SMALL = dict(min_size=128, max_size=160)


def _images_and_targets(with_masks: bool, size=(128, 160)):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=g) for _ in range(2)]
    boxes = torch.tensor([[10.0, 20.0, 70.0, 90.0], [60.0, 30.0, 140.0, 120.0]])
    targets = [
        {"boxes": boxes, "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)},  # no objects
    ]
    if with_masks:
        masks = torch.zeros((2, *size), dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        targets[0]["masks"] = masks
        targets[1]["masks"] = torch.zeros((0, *size), dtype=torch.uint8)
    return images, targets


def _with_keypoints(targets, num_keypoints: int):
    """`targets` with `num_keypoints` keypoints per box spread over the box (every third not labelled)."""
    for t in targets:
        boxes, k = t["boxes"], num_keypoints
        frac = torch.linspace(0.1, 0.9, k)
        xy = boxes[:, None, :2] + (boxes[:, None, 2:] - boxes[:, None, :2]) * torch.stack([frac, frac.flip(0)], -1)
        v = torch.tensor([0.0 if i % 3 == 2 else 2.0 for i in range(k)]).expand(boxes.shape[0], k)
        t["keypoints"] = torch.cat([xy, v[..., None]], -1)
    return targets


def _proposals(images):
    """Selective-search-like proposals for the models that need them: jittered gt + random boxes."""
    g = torch.Generator().manual_seed(1)
    out = []
    for img in images:
        h, w = img.shape[1:]
        xy = torch.rand(40, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = (torch.rand(40, 2, generator=g) * 0.4 + 0.1) * torch.tensor([w, h])
        boxes = torch.cat([xy, xy + wh], 1)
        boxes[:2] = torch.tensor([[12.0, 18.0, 72.0, 88.0], [58.0, 33.0, 138.0, 118.0]])  # near the gt
        out.append(boxes)
    return out


def _overrides(name):
    if name.endswith("_tiny"):
        return {}
    if name.startswith("keypoint_rcnn_"):  # 8 x 512 convs per RoI take ~7 GFLOP each
        return dict(SMALL, norm="bn", keypoint_conv_dims=(64, 64))
    if name.startswith("rcnn_"):  # 224 px warps of 128 regions through VGG-16 take minutes on a CPU
        return {"crop_size": 64, "context_padding": 4.0, "batch_size": 16, "representation_size": 256}
    if "alexnet" in name:  # fc6 / fc7 of 4096 take long to initialise
        return dict(SMALL, norm="bn", representation_size=256)
    return dict(SMALL, norm="bn") if "vgg" not in name else dict(SMALL, representation_size=256)


@pytest.mark.parametrize("name", list_models())
def test_training_step_and_predict(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, **_overrides(name))
    # every model declares what it is: masks (Mask R-CNN), external proposals (R-CNN, Fast R-CNN)
    assert isinstance(model, Detector)
    assert model.has_masks == name.startswith(("mask_rcnn_", "cascade_mask_rcnn_"))
    assert model.requires_proposals == name.startswith(("rcnn_", "fast_rcnn_"))
    with_masks = model.has_masks
    images, targets = _images_and_targets(with_masks)
    assert model.has_keypoints == name.startswith("keypoint_rcnn_") and (model.num_keypoints > 0) == model.has_keypoints
    if model.has_keypoints:
        targets = _with_keypoints(targets, model.num_keypoints)
    extra = {"proposals": _proposals(images)} if model.requires_proposals else {}
    if model.requires_proposals:
        with pytest.raises(ValueError, match="needs region proposals"):
            model.predict(images)
    model.train()
    losses = model(images, targets, **extra)
    if not extra:  # RPN-based models
        box = {"loss_classifier", "loss_box_reg"}
        if name.startswith("cascade_"):  # one pair per stage
            box = {f"{loss}_stage{t}" for loss in box for t in (1, 2, 3)}
        expected = {"loss_rpn_objectness", "loss_rpn_box"} | box
        expected |= {"loss_keypoint"} if model.has_keypoints else set()
        assert set(losses) == expected | ({"loss_mask"} if with_masks else set())
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    groups = {
        name: m
        for name, m in model.named_children()
        if isinstance(m, torch.nn.Module) and any(True for _ in m.parameters())
    }
    for group, module in groups.items():
        grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient reached {group}"

    model.eval()
    results = model.predict(images, **extra)
    assert len(results) == 2
    for img, res in zip(images, results):
        d = res["boxes"].shape[0]
        assert res["boxes"].shape == (d, 4) and res["scores"].shape == (d,) and res["labels"].dtype == torch.int64
        if d:
            assert res["labels"].min() >= 1 and res["labels"].max() <= 3
            assert (res["boxes"][:, 2:] >= res["boxes"][:, :2]).all()
            assert_inside_image(res["boxes"], img.shape[1:])
        assert ("masks" in res) == with_masks
        if with_masks:
            assert res["masks"].shape == (d, *img.shape[1:]) and res["masks"].dtype == torch.uint8
        assert ("keypoints" in res) == model.has_keypoints
        if model.has_keypoints:
            assert res["keypoints"].shape == (d, model.num_keypoints, 3)
            assert res["keypoints_scores"].shape == (d, model.num_keypoints)


def test_validation_loss_in_eval_mode():
    model = build_model("faster_rcnn_tiny", num_classes=3).eval()
    images, targets = _images_and_targets(False)
    with torch.no_grad():
        losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_inputs_get_clear_errors():
    model = build_model("faster_rcnn_tiny", num_classes=3)
    images, targets = _images_and_targets(False)
    with pytest.raises(ValueError, match="empty"):
        model.predict([])
    with pytest.raises(ValueError, match=r"images\[0\] must have shape \[3, H, W\]"):
        model.predict([torch.rand(1, 64, 64)])
    with pytest.raises(ValueError, match="float"):
        model.predict([torch.zeros(3, 64, 64, dtype=torch.uint8)])
    with pytest.raises(ValueError, match="labels must be in 1..3"):
        model(images, [{"boxes": targets[0]["boxes"], "labels": torch.tensor([0, 4])}, targets[1]])
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\]"):
        model(images, [{"boxes": torch.zeros(2, 5), "labels": torch.tensor([1, 2])}, targets[1]])
    with pytest.raises(ValueError, match="one target dict per image"):
        model(images, targets[:1])
    with pytest.raises(ValueError, match="unknown model"):
        build_model("faster_rcnn_r999", num_classes=3)


def assert_inside_image(boxes, size):
    """Boxes inside the original image up to float rounding.

    Detections are clipped in the resized image and then scaled by original / resized size
    in float32 (as torchvision does): a box on the resized border lands on the original
    border only up to rounding (e.g. 96 * (150 / 96) need not be exactly 150), so an exact
    `<= w` can fail by an ulp.
    """
    h, w = size
    tol = 1e-5 * max(h, w)
    if boxes.numel():
        assert boxes.min() >= 0
        assert boxes[:, 2].max() <= w + tol and boxes[:, 3].max() <= h + tol


def test_different_image_sizes_map_back_to_original_pixels():
    model = build_model("faster_rcnn_tiny", num_classes=3, min_size=96, max_size=200).eval()
    model.roi_heads.score_threshold = 0.0  # untrained: keep every detection, so the check is never empty
    images = [torch.rand(3, 100, 150), torch.rand(3, 80, 60)]
    results = model.predict(images)
    assert all(len(res["boxes"]) for res in results)
    for img, res in zip(images, results):
        assert_inside_image(res["boxes"], img.shape[1:])
