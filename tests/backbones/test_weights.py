"""Loading torchvision / detkit checkpoints: equivalence with torchvision, strict key checks, safety."""

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

from detkit.backbones import (
    DROPPED_KEYS,
    build_backbone,
    build_fpn_backbone,
    convert_torchvision_state_dict,
    load_backbone_weights,
    read_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so that a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) * 0.2 - 0.1)
                m.num_batches_tracked.fill_(7)
    return model.eval()


def assert_features_close(ours: dict, ref: dict) -> None:
    assert list(ours) == list(ref)
    for name, r in ref.items():
        assert ours[name].shape == r.shape, name
        assert r.abs().max() > 1e-3, f"{name}: reference features vanish, the test would be meaningless"
        diff = (ours[name] - r).abs().max().item()
        assert diff < 1e-4 * max(1.0, r.abs().max().item()), f"{name}: max abs diff {diff}"


def resnet_stages(tv: nn.Module, x: torch.Tensor) -> dict:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = {}
    for i in range(1, 5):
        x = getattr(tv, f"layer{i}")(x)
        out[f"c{i + 1}"] = x
    return out


def sequential_taps(features: nn.Sequential, x: torch.Tensor, taps: dict) -> dict:
    """Outputs of `features[i]` for i in taps (index -> feature name)."""
    out = {}
    for i, layer in enumerate(features):
        x = layer(x)
        if i in taps:
            out[taps[i]] = x
    return out


def torchvision_vgg(make) -> nn.Module:
    """A torchvision VGG whose 120M-parameter classifier is shrunk (same key names) so that
    building and saving it is fast; built on "meta", then materialised and initialised."""
    with torch.device("meta"):
        tv = make()
    tv.classifier = nn.Sequential(
        nn.Linear(4, 4), nn.ReLU(), nn.Dropout(), nn.Linear(4, 4), nn.ReLU(), nn.Dropout(), nn.Linear(4, 2)
    )
    tv = tv.to_empty(device="cpu")
    with torch.no_grad():
        for m in tv.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.uniform_(m.bias, -0.1, 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
    return tv


def vgg_taps(tv_features: nn.Sequential) -> dict:
    """features index of the last ReLU of each conv block (before its max pool) -> c1..c5."""
    pools = [i for i, m in enumerate(tv_features) if isinstance(m, nn.MaxPool2d)]
    return {p - 1: f"c{k}" for k, p in enumerate(pools, start=1)}


CASES = {
    "resnet50": (lambda: torchvision.models.resnet50(), resnet_stages, ("c2", "c3", "c4", "c5")),
    "vgg16": (
        lambda: torchvision_vgg(torchvision.models.vgg16),
        lambda tv, x: sequential_taps(tv.features, x, vgg_taps(tv.features)),
        ("c1", "c2", "c3", "c4", "c5"),
    ),
    "vgg11_bn": (
        lambda: torchvision_vgg(torchvision.models.vgg11_bn),
        lambda tv, x: sequential_taps(tv.features, x, vgg_taps(tv.features)),
        ("c1", "c2", "c3", "c4", "c5"),
    ),
    "mobilenet_v2": (
        lambda: torchvision.models.mobilenet_v2(),
        lambda tv, x: sequential_taps(tv.features, x, {1: "c1", 3: "c2", 6: "c3", 13: "c4", 18: "c5"}),
        ("c1", "c2", "c3", "c4", "c5"),
    ),
}


@pytest.fixture(scope="module")
def torchvision_checkpoints(tmp_path_factory):
    """name -> (eval-mode torchvision model, path of its saved state dict)."""
    root = tmp_path_factory.mktemp("tv")
    torch.manual_seed(0)
    out = {}
    for name, (make, _, _) in CASES.items():
        tv = randomize_norms(make())
        path = root / f"{name}-random.pth"
        torch.save(tv.state_dict(), path)
        out[name] = (tv, path)
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_torchvision_checkpoint_gives_identical_features(name, torchvision_checkpoints):
    tv, path = torchvision_checkpoints[name]
    _, taps, out_features = CASES[name]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = taps(tv, x)
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in tv.modules())
    # "bn" with freeze_at=2 mixes BatchNorm2d and FrozenBatchNorm2d (no num_batches_tracked)
    settings = [("bn", 2), ("frozen_bn", 0)] if has_bn else [("none", 2)]
    for norm, freeze_at in settings:
        ours = build_backbone(name, weights=path, norm=norm, freeze_at=freeze_at, out_features=out_features).eval()
        with torch.no_grad():
            assert_features_close(ours(x), ref)


def test_pruned_stages_skip_their_checkpoint_keys(torchvision_checkpoints):
    tv, path = torchvision_checkpoints["mobilenet_v2"]
    x = torch.randn(1, 3, 64, 64)
    ours = build_backbone("mobilenet_v2", weights=path, out_features=("c2",), norm="frozen_bn").eval()
    assert ours.pruned_stages == ("c3", "c4", "c5")
    with torch.no_grad():
        assert_features_close(ours(x), {"c2": tv.features[:4](x)})


def test_torchvision_resnet_fpn_equivalence(tmp_path):
    torch.manual_seed(0)
    tv = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=3)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, torchvision.ops.misc.FrozenBatchNorm2d):
                m.running_var.uniform_(0.75, 1.25)
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.1, 0.1)
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1)
    tv.eval()
    path = tmp_path / "fpn.pth"
    torch.save(tv.state_dict(), path)
    ours = build_fpn_backbone("resnet18", weights=path, norm="frozen_bn", freeze_at=2).eval()
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        ref = tv(x)
        assert_features_close(ours(x), dict(zip(["p2", "p3", "p4", "p5", "p6"], ref.values())))
    # the same conversion, reusable for the backbone part of a detection checkpoint
    detection = {f"backbone.{k}": v for k, v in tv.state_dict().items()} | {"rpn.head.conv.0.0.weight": torch.zeros(1)}
    converted = convert_torchvision_state_dict("resnet18_fpn", detection, src_prefix="backbone.", dst_prefix="model.")
    assert set(converted) == {f"model.{k}" for k in ours.state_dict()}


def test_fpn_loads_classification_checkpoint_into_body(torchvision_checkpoints):
    tv, path = torchvision_checkpoints["mobilenet_v2"]
    fpn = build_backbone("mobilenet_v2_fpn", weights=path, out_channels=32).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = CASES["mobilenet_v2"][1](tv, x)
        assert_features_close(fpn.body(x), {k: ref[k] for k in ("c2", "c3", "c4", "c5")})


def test_detkit_checkpoint_round_trip(tmp_path):
    src = randomize_norms(build_backbone("mobilenet_v2_fpn", width_mult=0.5, out_channels=32))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = src(x)
    torch.save(src.state_dict(), tmp_path / "plain.pth")
    torch.save({"state_dict": src.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")
    torch.save({f"model.backbone.{k}": v for k, v in src.state_dict().items()}, tmp_path / "prefixed.pth")
    for file in ("plain.pth", "wrapped.pth"):
        dst = build_backbone("mobilenet_v2_fpn", width_mult=0.5, out_channels=32, weights=tmp_path / file).eval()
        with torch.no_grad():
            assert_features_close(dst(x), ref)
    dst = build_backbone("mobilenet_v2_fpn", width_mult=0.5, out_channels=32)
    load_backbone_weights(dst, tmp_path / "prefixed.pth", prefix="model.backbone.")
    with torch.no_grad():
        assert_features_close(dst.eval()(x), ref)
    # a checkpoint of the body alone goes into the body of an FPN
    body = build_backbone("mobilenet_v2", width_mult=0.5, weights=src.body.state_dict()).eval()
    fpn = build_backbone("mobilenet_v2_fpn", width_mult=0.5, out_channels=32, weights=src.body.state_dict()).eval()
    with torch.no_grad():
        assert_features_close(fpn.body(x), src.body(x))
        assert_features_close(body(x), src.body(x))


def test_missing_key_is_named(tmp_path, torchvision_checkpoints):
    _, path = torchvision_checkpoints["resnet50"]
    sd = torch.load(path, weights_only=True)
    del sd["layer3.2.bn2.running_var"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"missing.*c4\.2\.conv2\.norm\.running_var") as info:
        build_backbone("resnet50", weights=tmp_path / "missing.pth")
    assert "missing.pth" in str(info.value)


def test_unexpected_key_is_named(tmp_path, torchvision_checkpoints):
    _, path = torchvision_checkpoints["mobilenet_v2"]
    sd = torch.load(path, weights_only=True)
    sd["features.3.conv.9.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"unexpected.*features\.3\.conv\.9\.weight") as info:
        build_backbone("mobilenet_v2", weights=tmp_path / "extra.pth")
    assert "extra.pth" in str(info.value)
    # detkit-format checkpoints are checked too
    own = build_backbone("simple_convnet").state_dict()
    own["c2.0.conv.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"unexpected.*c2\.0\.conv\.extra"):
        build_backbone("simple_convnet", weights=own)


def test_shape_mismatch_and_wrong_architecture_are_refused(torchvision_checkpoints):
    _, path = torchvision_checkpoints["resnet50"]
    with pytest.raises(ValueError, match="shape mismatch|missing|unexpected"):
        build_backbone("resnet18", weights=path)
    with pytest.raises(ValueError, match="unexpected.*layer1"):
        build_backbone("vgg16", weights=path)
    with pytest.raises(ValueError, match="torchvision architecture"):
        build_backbone("simple_convnet", weights=path)


def test_dropped_keys_are_explicit():
    assert DROPPED_KEYS["resnet"] == ("fc.weight", "fc.bias")
    sd = {"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1), "fc.bias": torch.zeros(1)}
    sd["bn1.num_batches_tracked"] = torch.tensor(1)
    assert set(convert_torchvision_state_dict("resnet50", sd)) == {"stem.conv.weight", "stem.norm.num_batches_tracked"}
    with pytest.raises(ValueError, match="no torchvision key map"):
        convert_torchvision_state_dict("resnet9", sd)


class Payload:
    """Not a tensor: weights_only unpickling must reject it."""

    def __init__(self):
        self.note = "arbitrary python object"


def test_unsafe_pickle_is_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, path)
    with pytest.raises(ValueError, match="weights_only") as info:
        build_backbone("resnet18", weights=path)
    assert "unsafe" in str(info.value) and "unsafe.pth" in str(info.value)
    with pytest.raises(ValueError, match="weights_only"):
        read_checkpoint(path)


def test_non_tensor_entries_are_refused(tmp_path):
    torch.save({"stem.conv.weight": torch.zeros(1), "note": "hello"}, tmp_path / "mixed.pth")
    with pytest.raises(ValueError, match="note"):
        read_checkpoint(tmp_path / "mixed.pth")
