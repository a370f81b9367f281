"""The kernel options (`fold_bn`, `cpu_kernels`) are build_model / DetectionModule arguments, set on every
module that has them, and recorded in checkpoints (no environment variable changes arithmetic)."""

import pytest
import torch

from detkit.engine.module import DetectionModule
from detkit.io import build_model_from_checkpoint, checkpoint_info
from detkit.models import build_model


def _options(model) -> set[tuple[str, str, bool]]:
    found = set()
    for module in model.modules():
        for option in ("fold_bn", "cpu_kernels"):
            if hasattr(module, option):
                found.add((type(module).__name__, option, getattr(module, option)))
    return found


@pytest.mark.parametrize("name", ["faster_rcnn_tiny", "rcnn_tiny", "fast_rcnn_r18"])
def test_build_model_sets_the_options_on_every_module(name):
    kwargs = {"min_size": 64, "max_size": 96} if name == "fast_rcnn_r18" else {}
    default = _options(build_model(name, num_classes=2, **kwargs))
    assert default and all(value is True for *_, value in default)
    plain = _options(build_model(name, num_classes=2, fold_bn=False, cpu_kernels=False, **kwargs))
    assert {(kind, option) for kind, option, _ in plain} == {(kind, option) for kind, option, _ in default}
    assert all(value is False for *_, value in plain)


def test_rcnn_crop_warp_equals_torchvision_roi_align():
    torch.manual_seed(0)
    model = build_model("rcnn_tiny", num_classes=2).eval()
    image = [torch.rand(3, 90, 120)]
    proposals = [torch.tensor([[5.0, 6.0, 60.0, 70.0], [30.0, 10.0, 110.0, 85.0], [0.0, 0.0, 119.0, 89.0]])]
    with torch.no_grad():
        fast = model.predict(image, proposals=proposals)
        model.cpu_kernels = False  # torchvision's RoIAlign for the warp: the same forward, bit for bit
        plain = model.predict(image, proposals=proposals)
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(fast[0][key], plain[0][key]), key


def test_checkpoint_records_the_options(tmp_path):
    module = DetectionModule(num_classes=2, fold_bn=False, cpu_kernels=False)
    assert (module.hparams.fold_bn, module.hparams.cpu_kernels) == (False, False)
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint_info(checkpoint).model_kwargs == {"fold_bn": False, "cpu_kernels": False}
    torch.save(checkpoint, tmp_path / "plain.ckpt")
    model, _ = build_model_from_checkpoint(tmp_path / "plain.ckpt")
    assert all(value is False for *_, value in _options(model))
