"""LeNet-5, AlexNet, GoogLeNet and the Inception module: shapes, options, torchvision weights."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.backbones import build_backbone, convert_torchvision_state_dict
from detkit.layers import Inception

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def _close(ours: dict, ref: dict) -> None:
    assert list(ours) == list(ref)
    for name, r in ref.items():
        assert ours[name].shape == r.shape, name
        scale = r.abs().max().item()
        assert scale > 1e-3, f"{name}: reference vanishes"
        assert (ours[name] - r).abs().max().item() < 1e-4 * max(1.0, scale), name


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and biases, so that a wrong key mapping shows."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
            elif isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model.eval()


def test_inception_module_branches_and_channels():
    block = Inception(32, 8, 4, 16, 2, 4, 6, norm="none").eval()
    assert block.out_channels == 8 + 16 + 4 + 6
    assert block.branch3[1].conv.kernel_size == (5, 5)
    x = torch.randn(2, 32, 9, 11)
    with torch.no_grad():
        y = block(x)
        assert y.shape == (2, 34, 9, 11)
        # the first 8 channels are the 1x1 branch alone, the last 6 the pool branch
        torch.testing.assert_close(y[:, :8], block.branch1(x))
        torch.testing.assert_close(y[:, -6:], block.branch4(x))
    assert Inception(8, 1, 1, 1, 1, 1, 1, large_kernel=3).branch3[1].conv.kernel_size == (3, 3)


def test_alexnet_matches_torchvision_features(tmp_path):
    torch.manual_seed(0)
    with torch.device("meta"):
        tv = torchvision.models.alexnet()
    tv.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(4, 4), nn.ReLU(), nn.Dropout(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)
    )  # same keys, small: fast to build and save
    tv = tv.to_empty(device="cpu")
    for m in tv.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    tv = _randomise(tv)
    path = tmp_path / "alexnet-random.pth"
    torch.save(tv.state_dict(), path)
    x = torch.randn(2, 3, 227, 227)
    taps = {1: "c2", 4: "c3", 11: "c4", 12: "c5"}  # last ReLU of conv1 / conv2 / conv5, pool5
    ref, h = {}, x
    with torch.no_grad():
        for i, layer in enumerate(tv.features):
            h = layer(h)
            if i in taps:
                ref[taps[i]] = h
        assert torch.equal(ref["c5"], tv.features(x)) and ref["c5"].shape[-2:] == (6, 6)  # pool5 as in R-CNN
        ours = build_backbone(
            "alexnet", weights=path, padding="torchvision", freeze_at=2, out_features=("c2", "c3", "c4", "c5")
        ).eval()
        _close(ours(x), ref)
        # "same" padding loads the same weights; the maps then follow ceil(H / stride)
        same = build_backbone("alexnet", weights=path, out_features=("c2", "c5")).eval()
        out = same(x)
    assert out["c2"].shape[-2:] == (57, 57) and out["c5"].shape[-2:] == (8, 8)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in tv.features.parameters())


@pytest.mark.parametrize("transform_input", [False, True])
def test_googlenet_matches_torchvision_inception_outputs(tmp_path, transform_input):
    torch.manual_seed(0)
    tv = _randomise(torchvision.models.GoogLeNet(aux_logits=True, transform_input=transform_input, init_weights=True))
    path = tmp_path / "googlenet-random.pth"
    torch.save(tv.state_dict(), path)  # with aux1 / aux2 / fc: dropped on purpose
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        h = tv._transform_input(x)
        ref = {"c1": tv.conv1(h)}
        ref["c2"] = tv.conv3(tv.conv2(tv.maxpool1(ref["c1"])))
        ref["c3"] = tv.inception3b(tv.inception3a(tv.maxpool2(ref["c2"])))
        h = tv.maxpool3(ref["c3"])
        for name in ("a", "b", "c", "d", "e"):
            h = getattr(tv, f"inception4{name}")(h)
        ref["c4"] = h
        ref["c5"] = tv.inception5b(tv.inception5a(tv.maxpool4(h)))
        for norm, freeze_at in (("bn", 2), ("frozen_bn", 0)):
            ours = build_backbone(
                "googlenet",
                weights=path,
                norm=norm,
                freeze_at=freeze_at,
                transform_input=transform_input,
                out_features=tuple(ref),
            ).eval()
            _close(ours(x), ref)
        # googlenet_fpn loads the classification checkpoint into its body
        fpn = build_backbone("googlenet_fpn", weights=path, transform_input=transform_input, out_channels=32).eval()
        _close(fpn.body(x), {k: ref[k] for k in ("c3", "c4", "c5")})


def test_googlenet_unknown_key_and_dropped_heads():
    sd = {"conv1.conv.weight": torch.zeros(1), "aux1.fc1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}
    assert set(convert_torchvision_state_dict("googlenet", sd)) == {"c1.conv1.conv.weight"}
    with pytest.raises(ValueError, match="inception6a"):
        convert_torchvision_state_dict("googlenet", {"inception6a.branch1.conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="features.1.weight"):
        convert_torchvision_state_dict("alexnet", {"features.1.weight": torch.zeros(1)})


def test_classic_specs_freeze_and_norms():
    specs = {
        n: {k: tuple(v) for k, v in build_backbone(n).feature_specs().items()}
        for n in ("lenet5", "alexnet", "googlenet")
    }
    assert specs["lenet5"] == {"c3": (120, 4)}
    assert specs["alexnet"] == {"c4": (256, 16)}
    assert specs["googlenet"] == {"c3": (480, 8), "c4": (832, 16), "c5": (1024, 32)}
    lenet = build_backbone("lenet5", out_features=("c1", "c2", "c3"))
    assert isinstance(lenet.c1.conv1.act, nn.Tanh) and isinstance(lenet.c1.pool1, nn.AvgPool2d)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in lenet.modules())
    with torch.no_grad():  # tiny inputs: a 32 x 32 digit and a 64 px image
        assert lenet(torch.randn(1, 3, 32, 32))["c3"].shape == (1, 120, 8, 8)
        assert lenet(torch.randn(1, 3, 64, 64))["c2"].shape == (1, 16, 16, 16)
    relu = build_backbone("lenet5", act="relu", pool="max", norm="bn")
    assert isinstance(relu.c2.pool2, nn.MaxPool2d) and isinstance(relu.c2.conv2.norm, nn.BatchNorm2d)
    alex = build_backbone("alexnet", norm="bn", freeze_at=2)
    assert all(not p.requires_grad for p in alex.c3.parameters())
    assert isinstance(alex.c3.conv2.norm, FrozenBatchNorm2d) and isinstance(alex.c4.conv5.norm, nn.BatchNorm2d)
    assert alex.c4.conv5.conv.bias is not None  # biases kept: torchvision checkpoints load with any norm
    goog = build_backbone("googlenet", norm="gn", freeze_at=1)
    assert isinstance(goog.c3.inception3a.branch1.norm, nn.GroupNorm)
    assert all(not p.requires_grad for p in goog.c1.parameters())
    assert all(p.requires_grad for p in goog.c2.parameters())
    assert build_backbone("googlenet", norm="frozen_bn").c1.conv1.norm.eps == 1e-3
    with pytest.raises(ValueError, match="padding"):
        build_backbone("alexnet", padding="valid")
    with pytest.raises(ValueError, match="pool"):
        build_backbone("lenet5", pool="lp")
