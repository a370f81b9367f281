"""Backbone contract: declared feature specs match real outputs; out_features, freeze_at, FPN."""

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.backbones import (
    FPN,
    Backbone,
    FeatureSpec,
    MobileNetV2,
    build_backbone,
    build_fpn_backbone,
    list_backbones,
)

BUILTIN = [
    "mobilenet_v1",
    "mobilenet_v1_fpn",
    "mobilenet_v2",
    "mobilenet_v2_fpn",
    "resnet101",
    "resnet101_fpn",
    "resnet152",
    "resnet152_fpn",
    "resnet18",
    "resnet18_fpn",
    "resnet34",
    "resnet34_fpn",
    "resnet50",
    "resnet50_fpn",
    "simple_convnet",
    "simple_convnet_fpn",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
]


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


# Built and run on the "meta" device: exact output shapes without the compute (their
# building blocks run for real in the smaller variants and in test_weights.py).
HEAVY = {"resnet101", "resnet101_fpn", "resnet152", "resnet152_fpn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"}


def check_outputs_match_specs(backbone: Backbone, h: int, w: int) -> None:
    specs = backbone.feature_specs()
    device = next(backbone.parameters()).device
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, h, w, device=device))
    assert list(out) == list(specs) == list(backbone.out_features)
    strides = [s.stride for s in specs.values()]
    assert strides == sorted(strides) and len(set(strides)) == len(strides)
    for name, spec in specs.items():
        assert isinstance(spec, FeatureSpec)
        assert out[name].shape == (1, spec.channels, math.ceil(h / spec.stride), math.ceil(w / spec.stride)), name


def test_all_builtin_variants_are_listed():
    assert set(BUILTIN) <= set(list_backbones())


@pytest.mark.parametrize("name", list_backbones())
def test_feature_specs_match_outputs(name):
    with torch.device("meta" if name in HEAVY else "cpu"):
        backbone = build_backbone(name).eval()
    check_outputs_match_specs(backbone, 128, 160)


def test_expected_default_specs():
    names = ("resnet50", "resnet18", "vgg16", "mobilenet_v2", "simple_convnet")
    specs = {n: dict(build_backbone(n).feature_specs()) for n in names}
    assert specs["resnet50"] == {"c2": (256, 4), "c3": (512, 8), "c4": (1024, 16), "c5": (2048, 32)}
    assert specs["resnet18"] == {"c2": (64, 4), "c3": (128, 8), "c4": (256, 16), "c5": (512, 32)}
    assert specs["vgg16"] == {"c5": (512, 16)}
    assert specs["mobilenet_v2"] == {"c2": (24, 4), "c3": (32, 8), "c4": (96, 16), "c5": (1280, 32)}
    assert specs["simple_convnet"] == {"c3": (128, 8)}
    vgg_all = build_backbone("vgg16", out_features=("c1", "c2", "c3", "c4", "c5")).feature_specs()
    assert [tuple(s) for s in vgg_all.values()] == [(64, 1), (128, 2), (256, 4), (512, 8), (512, 16)]


def test_simple_convnet_has_seven_convs_and_is_small():
    backbone = build_backbone("simple_convnet")
    convs = [m for m in backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 7
    assert [c.out_channels for c in convs] == [32, 32, 64, 64, 128, 128, 128]
    assert [c.stride[0] for c in convs] == [2, 1, 2, 1, 2, 1, 1]
    check_outputs_match_specs(build_backbone("simple_convnet", out_features=("c2", "c3")), 37, 53)


@pytest.mark.parametrize("width", [0.5, 0.75, 1.4])
def test_mobilenet_v2_width_matches_torchvision_channels(width):
    tv = torchvision.models.mobilenet_v2(width_mult=width).features
    ours = MobileNetV2(width, out_features=("c1", "c2", "c3", "c4", "c5"))
    # torchvision features index of the last layer of each stage
    tv_channels = {
        "c1": tv[1].out_channels,
        "c2": tv[3].out_channels,
        "c3": tv[6].out_channels,
        "c4": tv[13].out_channels,
        "c5": tv[18][0].out_channels,
    }
    assert {k: s.channels for k, s in ours.feature_specs().items()} == tv_channels
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.parameters())


def test_odd_input_sizes():
    for name in ("resnet18", "mobilenet_v2", "simple_convnet_fpn"):
        check_outputs_match_specs(build_backbone(name).eval(), 67, 45)
    # VGG pools with floor: an odd size loses the last row, as in torchvision
    with torch.no_grad():
        out = build_backbone("vgg11", out_features=("c2",))(torch.randn(1, 3, 33, 35))
    assert out["c2"].shape[-2:] == (16, 17)


def test_out_features_selection_is_ordered_by_stride():
    backbone = build_backbone("resnet18", out_features=["c4", "c2"])
    assert backbone.out_features == ("c2", "c4")
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert list(out) == ["c2", "c4"]
    # stages after the last output are not built and not run
    assert backbone.pruned_stages == ("c5",)
    assert not hasattr(backbone, "c5")
    assert all(not n.startswith("c5.") for n, _ in backbone.named_parameters())


@pytest.mark.parametrize("bad", [("c6",), ("stem",), ("c2", "c2"), (), "c2"])
def test_invalid_out_features(bad):
    with pytest.raises((ValueError, TypeError)) as info:
        build_backbone("resnet18", out_features=bad)
    if bad == ("c6",):
        assert "c6" in str(info.value) and "c5" in str(info.value)  # names the bad and available features


def _frozen(module: nn.Module) -> bool:
    return all(not p.requires_grad for p in module.parameters()) and not any(
        isinstance(m, nn.BatchNorm2d) for m in module.modules()
    )


@pytest.mark.parametrize("freeze_at", [0, 2, 5])
def test_freeze_at_resnet(freeze_at):
    backbone = build_backbone("resnet18", freeze_at=freeze_at)  # norm "bn"
    stages = ["stem", "c2", "c3", "c4", "c5"]
    for i, name in enumerate(stages):
        stage = getattr(backbone, name)
        if i < freeze_at:
            assert _frozen(stage), name
            assert any(isinstance(m, FrozenBatchNorm2d) for m in stage.modules())
        else:
            assert all(p.requires_grad for p in stage.parameters()), name
            assert any(isinstance(m, nn.BatchNorm2d) for m in stage.modules())
    # frozen stages keep their statistics in train mode
    backbone.train()
    if freeze_at >= 1:
        before = backbone.stem.norm.running_mean.clone()
        backbone(torch.randn(2, 3, 32, 32))
        assert torch.equal(before, backbone.stem.norm.running_mean)


def test_freeze_at_vgg_and_mobilenet():
    vgg = build_backbone("vgg16_bn", freeze_at=2, out_features=("c3", "c5"))
    assert _frozen(vgg.c1) and _frozen(vgg.c2)
    assert all(p.requires_grad for p in vgg.c3.parameters())
    mnet = build_backbone("mobilenet_v2", freeze_at=1)
    assert _frozen(mnet.c1) and all(p.requires_grad for p in mnet.c2.parameters())
    with pytest.raises(ValueError, match="freeze_at"):
        build_backbone("resnet18", freeze_at=6)
    with pytest.raises(ValueError, match="freeze_at"):
        build_backbone("simple_convnet", freeze_at=-1)


GN8 = ("gn", {"num_groups": 8})


@pytest.mark.parametrize("norm", ["bn", "frozen_bn", "gn", GN8, "none"])
def test_norm_choice(norm):
    backbone = build_backbone("resnet18", norm=norm, out_features=("c3",))
    name = norm[0] if isinstance(norm, tuple) else norm
    expected = {"bn": nn.BatchNorm2d, "frozen_bn": FrozenBatchNorm2d, "gn": nn.GroupNorm, "none": nn.Identity}[name]
    assert isinstance(backbone.stem.norm, expected)
    assert isinstance(backbone.c3[0].conv1.norm, expected)
    if name == "gn":
        assert backbone.c3[0].conv1.norm.num_groups == (8 if isinstance(norm, tuple) else 32)
    check_outputs_match_specs(backbone.eval(), 64, 48)


def test_vgg_default_norm():
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build_backbone("vgg11").modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in build_backbone("vgg11_bn").modules())
    assert build_backbone("vgg11", norm="bn").torchvision_arch == "vgg11_bn"


def test_fpn_extra_blocks_and_in_features():
    body = build_backbone("resnet18")
    fpn = FPN(body, in_features=("c3", "c4", "c5"), out_channels=32, extra_block="p6p7")
    assert {k: tuple(v) for k, v in fpn.feature_specs().items()} == {
        "p3": (32, 8),
        "p4": (32, 16),
        "p5": (32, 32),
        "p6": (32, 64),
        "p7": (32, 128),
    }
    check_outputs_match_specs(fpn.eval(), 97, 131)
    none = FPN(build_backbone("simple_convnet", out_features=("c1", "c2", "c3")), out_channels=16, extra_block=None)
    assert list(none.feature_specs()) == ["p1", "p2", "p3"]
    check_outputs_match_specs(none.eval(), 30, 50)
    with pytest.raises(ValueError, match="c6"):
        FPN(body, in_features=("c6",))
    with pytest.raises(ValueError, match="extra_block"):
        FPN(body, extra_block="conv")


def test_fpn_top_down_uses_nearest_upsampling():
    """With identity-like 1x1 laterals and zero output convs except the centre tap, p4 = c4 + up(c5)."""
    body = build_backbone("simple_convnet", out_features=("c2", "c3"), channels=(8, 8, 8)).eval()
    fpn = FPN(body, out_channels=8, extra_block=None).eval()
    with torch.no_grad():
        for f in ("c2", "c3"):
            fpn.lateral[f].conv.weight.copy_(torch.eye(8).view(8, 8, 1, 1))
            fpn.lateral[f].conv.bias.zero_()
            fpn.output[f].conv.weight.zero_()
            fpn.output[f].conv.weight[:, :, 1, 1] = torch.eye(8)
            fpn.output[f].conv.bias.zero_()
        x = torch.randn(1, 3, 36, 44)
        feats = body(x)
        out = fpn(x)
    up = torch.nn.functional.interpolate(feats["c3"], size=feats["c2"].shape[-2:], mode="nearest")
    torch.testing.assert_close(out["p3"], feats["c3"])
    torch.testing.assert_close(out["p2"], feats["c2"] + up)


def test_build_fpn_backbone_options():
    fpn = build_fpn_backbone("resnet18", out_features=("c4", "c5"), out_channels=64, fpn_norm="gn", freeze_at=2)
    assert list(fpn.feature_specs()) == ["p4", "p5", "p6"]
    assert isinstance(fpn.lateral["c4"].norm, nn.GroupNorm)
    assert _frozen(fpn.body.c2) and all(p.requires_grad for p in fpn.lateral.parameters())
    assert fpn.body.pruned_stages == ()
