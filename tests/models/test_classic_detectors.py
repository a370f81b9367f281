"""Detectors on the classic networks: paper settings, dropout, one-scene overfits, LeNet-5 on 64 px shapes."""

import numpy as np
import pytest
import torch
from proposal_model_cases import jittered_and_random_proposals, scene
from torch import nn

from detkit.backbones import build_backbone
from detkit.data.shapes import ShapesConfig, render_shapes_image
from detkit.models import build_model
from detkit.models.builders import build_two_stage
from detkit.structures import box_iou


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_paper_settings_and_dropout():
    with torch.device("meta"):  # full-size fc6 / fc7: shapes only
        models = {
            n: build_model(n, num_classes=20)
            for n in (
                "rcnn_alexnet",
                "fast_rcnn_alexnet",
                "faster_rcnn_alexnet",
                "faster_rcnn_vgg16",
                "faster_rcnn_googlenet",
                "faster_rcnn_r50_fpn",
            )
        }
    rcnn = models["rcnn_alexnet"]
    assert (rcnn.crop_size, rcnn.context_padding, rcnn.box_features) == (227, 16.0, "pool5")
    assert rcnn.bbox_pred.in_features == 256 * 6 * 6 and rcnn.cls_score.in_features == 4096
    assert rcnn.head.fcs.dropout.p == 0.5
    for name in ("fast_rcnn_alexnet", "faster_rcnn_alexnet", "faster_rcnn_vgg16"):
        head = models[name].roi_heads.box_head
        assert head.dropout.p == 0.5 and head.fc7.out_features == 4096, name
    assert models["faster_rcnn_alexnet"].roi_heads.box_head.fc6.in_features == 256 * 6 * 6  # RoIPool 6x6 of conv5
    for name in ("faster_rcnn_googlenet", "faster_rcnn_r50_fpn"):  # torchvision-style heads: no dropout
        assert isinstance(models[name].roi_heads.box_head.dropout, nn.Identity), name
    assert list(models["faster_rcnn_googlenet"].backbone.feature_specs()) == ["p3", "p4", "p5", "p6"]
    # pool5 of a 227 x 227 warp is 6 x 6, as in the paper
    with torch.no_grad():
        pool5 = build_backbone("alexnet", padding="torchvision", out_features=("c5",))(torch.zeros(1, 3, 227, 227))
    assert pool5["c5"].shape == (1, 256, 6, 6)
    with pytest.raises(ValueError, match="box_features"):
        build_model("rcnn_alexnet", num_classes=2, box_features="conv5", representation_size=8)


def test_dropout_is_active_in_training_only():
    model = build_model("fast_rcnn_alexnet", num_classes=2, representation_size=64, dropout=0.5)
    head = model.roi_heads.box_head
    x = torch.rand(4, 256, 6, 6)
    head.train()
    assert not torch.equal(head(x), head(x))  # a new mask per call
    head.eval()
    assert torch.equal(head(x), head(x))


def test_googlenet_detector_rescales_input_with_imagenet_weights(tmp_path):
    path = tmp_path / "googlenet.pth"
    torch.save(build_backbone("googlenet").state_dict(), path)
    pretrained = build_model("faster_rcnn_googlenet", num_classes=2, backbone_weights=str(path))
    assert hasattr(pretrained.backbone.body.c1, "transform")
    assert all(not p.requires_grad for p in pretrained.backbone.body.c2.parameters())  # conv1-conv3 frozen
    scratch = build_model("faster_rcnn_googlenet", num_classes=2, norm="bn")
    assert not hasattr(scratch.backbone.body.c1, "transform")


# small variants: 128 px images, 256-d fc layers; each must memorise one scene
OVERFIT = {
    "rcnn_alexnet": (60, dict(crop_size=64, context_padding=4.0, representation_size=256, batch_size=32, dropout=0.0)),
    "fast_rcnn_alexnet": (50, dict(min_size=128, max_size=128, representation_size=256, norm="bn")),
    "faster_rcnn_alexnet": (  # 50 steps memorised the scene or not with the float rounding of the layout
        80,
        dict(
            min_size=128,
            max_size=128,
            representation_size=256,
            norm="bn",
            anchor_sizes=((32, 64, 128),),
            rpn_batch_size_per_image=64,
            roi_batch_size_per_image=64,
        ),
    ),
    "faster_rcnn_googlenet": (
        50,
        dict(
            min_size=128,
            max_size=128,
            representation_size=256,
            norm="bn",
            fpn_channels=64,
            rpn_batch_size_per_image=64,
            roi_batch_size_per_image=64,
        ),
    ),
}


def _train(model, images, targets, extra, steps, lr=1e-3):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    first = None
    for _ in range(steps):
        losses = model(images, targets, **extra)
        total = sum(losses.values())
        assert all(torch.isfinite(v) for v in losses.values()), losses
        first = total.item() if first is None else first
        opt.zero_grad()
        total.backward()
        opt.step()
    return first, total.item()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OVERFIT))
def test_overfit_one_scene(name):
    torch.manual_seed(0)
    steps, overrides = OVERFIT[name]
    image, target = scene()
    model = build_model(name, num_classes=2, **overrides)
    extra = {}
    if getattr(model, "requires_proposals", False):
        extra = {"proposals": [jittered_and_random_proposals(target["boxes"], torch.Generator().manual_seed(0))]}
    first, last = _train(model, [image], [target], extra, steps)
    assert last < 0.35 * first, (first, last)
    model.eval()
    result = model.predict([image], **extra)[0]
    top = result["scores"] > 0.5
    iou = box_iou(result["boxes"][top], target["boxes"])
    for k in range(2):
        hits = (iou[:, k] > 0.5) & (result["labels"][top] == target["labels"][k])
        assert hits.any(), f"{name}: object {k} not detected: {result}"


def _shapes_64(num_images: int):
    """Shapes images at 64 px (3 classes), as detector inputs and targets."""
    cfg = ShapesConfig(image_size=64, max_objects=2, min_size=12, max_size=32)
    images, targets = [], []
    for seed in range(num_images):
        image, objects = render_shapes_image(np.random.default_rng(seed), cfg)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        targets.append(
            {
                "boxes": torch.tensor([o["box"] for o in objects], dtype=torch.float32),
                "labels": torch.tensor([o["label"] + 1 for o in objects]),
            }
        )
    return images, targets


def test_lenet5_detector_on_64px_shapes():
    torch.manual_seed(0)
    backbone = build_backbone("lenet5", act="relu", pool="max", norm="bn")  # c3: stride 4, 120 channels
    model = build_two_stage(
        backbone,
        num_classes=3,
        anchor_sizes=((8, 16, 32),),
        representation_size=128,
        min_size=None,
        max_size=None,
        size_divisible=4,
        rpn_batch_size_per_image=64,
        roi_batch_size_per_image=32,
        rpn_pre_nms_top_n_train=300,
        rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=50,
    )
    images, targets = _shapes_64(4)
    with torch.no_grad():
        assert model.backbone(torch.zeros(1, 3, 64, 64))["c3"].shape == (1, 120, 16, 16)
    first, last = _train(model, images, targets, {}, steps=60, lr=2e-3)
    assert last < 0.35 * first, (first, last)
    model.eval()
    results = model.predict(images)
    assert len(results) == 4
    for res in results:
        assert res["boxes"].shape[1] == 4 and (res["boxes"] <= 64).all() and (res["boxes"] >= 0).all()
    # the training scenes' objects are found (IoU > 0.5 with a correct label), at most one missed
    found = total = 0
    for res, tgt in zip(results, targets):
        keep = res["scores"] > 0.3
        iou = box_iou(res["boxes"][keep], tgt["boxes"])
        for k in range(len(tgt["labels"])):
            total += 1
            found += bool(((iou[:, k] > 0.5) & (res["labels"][keep] == tgt["labels"][k])).any()) if iou.numel() else 0
    assert found >= total - 1, (found, total)
