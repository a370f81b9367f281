"""Calling-convention edges of the detectors.

Mirrors torchvision `test/test_models.py::test_detection_model_validation` (training mode
without targets raises; malformed inputs are refused with a clear message), plus detkit's
own rules: `predict` never changes the model, float images far outside 0..1 are refused.
"""

import pytest
import torch

from detkit.models import build_model


def _bn_model():
    torch.manual_seed(0)
    return build_model("faster_rcnn_tiny", num_classes=3, norm="bn")  # real BatchNorm with running stats


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_predict_in_training_mode_changes_nothing():
    model = _bn_model()
    images = [torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(1))]
    model.eval()
    expected = model.predict(images)
    model.train()
    model.backbone.eval()  # a mixed-mode model: each submodule's mode must come back
    before = _state(model)
    modes = {name: m.training for name, m in model.named_modules()}
    got = model.predict(images)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "predict updated BatchNorm statistics"
    assert {name: m.training for name, m in model.named_modules()} == modes
    for e, g in zip(expected, got):
        assert torch.equal(e["boxes"], g["boxes"]) and torch.equal(e["scores"], g["scores"])


@pytest.mark.parametrize("name", ["faster_rcnn_tiny", "fast_rcnn_tiny", "rcnn_tiny"])
def test_training_mode_without_targets_raises(name):
    model = build_model(name, num_classes=3).train()
    images = [torch.rand(3, 64, 64)]
    needs = getattr(model, "requires_proposals", False)
    extra = {"proposals": [torch.tensor([[4.0, 4.0, 40.0, 40.0]])]} if needs else {}
    with pytest.raises(ValueError, match="training mode and got no targets"):
        model(images, **extra)
    model.eval()
    out = model(images, **extra)  # eval mode: detections, as torchvision
    assert isinstance(out, list) and set(out[0]) >= {"boxes", "scores", "labels"}


@pytest.mark.parametrize("scale,shift", [(255.0, 0.0), (1.0, -3.0)])
def test_images_far_outside_0_1_are_refused(scale, shift):
    model = build_model("faster_rcnn_tiny", num_classes=3).eval()
    image = torch.rand(3, 64, 64) * scale + shift
    with pytest.raises(ValueError, match=r"images\[1\] has values in .*0\.\.1 \(divide 0\.\.255 images by 255\)"):
        model.predict([torch.rand(3, 64, 64), image])


def test_images_slightly_outside_0_1_are_accepted():
    model = build_model("faster_rcnn_tiny", num_classes=3).eval()
    image = (torch.rand(3, 64, 64) * 1.2 - 0.1).clamp(-0.1, 1.1)  # e.g. after colour augmentation
    assert len(model.predict([image])) == 1
