import math

import pytest
import torch
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.layers import (
    ConvNormAct,
    SeparableConv,
    UpsampleConvTranspose,
    build_activation,
    build_norm,
    channel_shuffle,
    conv1x1,
    conv_output_size,
    freeze_module,
    kaiming_init,
    make_divisible,
    normal_init,
    prior_probability_bias,
    same_padding,
    xavier_init,
)


def formula(h, k, s, p, d):
    return math.floor((h + 2 * p - d * (k - 1) - 1) / s + 1)


@pytest.mark.parametrize(
    "k,s,d,g", [(1, 1, 1, 1), (3, 1, 1, 1), (3, 2, 1, 1), (5, 2, 1, 4), (3, 1, 2, 1), (3, 2, 3, 2), (7, 2, 1, 1)]
)
@pytest.mark.parametrize("h", [15, 16, 33])
def test_conv_norm_act_output_size_matches_formula(k, s, d, g, h):
    block = ConvNormAct(8, 16, k, stride=s, dilation=d, groups=g)
    out = block(torch.randn(2, 8, h, h + 3))
    p = d * (k - 1) // 2
    assert block.conv.padding == (p, p)
    assert out.shape == (2, 16, formula(h, k, s, p, d), formula(h + 3, k, s, p, d))
    assert conv_output_size(h, k, s, p, d) == formula(h, k, s, p, d)
    if s == 1:  # "same" padding keeps the size
        assert out.shape[-2:] == (h, h + 3)


def test_same_padding_rejects_even_kernel():
    with pytest.raises(ValueError, match="odd"):
        same_padding(4)


def test_conv_bias_only_without_norm():
    assert ConvNormAct(4, 4, norm="bn").conv.bias is None
    assert ConvNormAct(4, 4, norm="none").conv.bias is not None
    assert ConvNormAct(4, 4, norm="bn", bias=True).conv.bias is not None


def test_grouped_conv_parameter_count():
    block = ConvNormAct(16, 32, 3, groups=4, norm="none", bias=False)
    assert block.conv.weight.numel() == 32 * (16 // 4) * 9


def test_separable_conv_parameter_count_and_shape():
    block = SeparableConv(16, 32, 3, stride=2)
    conv_weights = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Conv2d))
    assert conv_weights == 16 * 9 + 16 * 32
    assert all(m.bias is None for m in block.modules() if isinstance(m, nn.Conv2d))
    assert block(torch.randn(1, 16, 17, 17)).shape == (1, 32, 9, 9)
    assert isinstance(SeparableConv(4, 8, pointwise_act=None).pointwise.act, nn.Identity)


def test_transposed_conv_doubles_size():
    block = UpsampleConvTranspose(8, 4, scale=2)
    assert block(torch.randn(1, 8, 7, 5)).shape == (1, 4, 14, 10)


def test_conv1x1():
    assert conv1x1(8, 3)(torch.randn(1, 8, 5, 5)).shape == (1, 3, 5, 5)


def test_norm_factory():
    assert isinstance(build_norm("bn", 8), nn.BatchNorm2d)
    assert isinstance(build_norm("frozen_bn", 8), FrozenBatchNorm2d)
    gn = build_norm(("gn", {"num_groups": 4}), 8)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 4
    assert build_norm(("gn", {"num_groups": 32}), 24).num_groups == 24  # largest divisor <= 32
    assert isinstance(build_norm("none", 8), nn.Identity)
    assert isinstance(build_norm(lambda c: nn.InstanceNorm2d(c), 8), nn.InstanceNorm2d)
    with pytest.raises(ValueError, match="unknown norm 'batch'"):
        build_norm("batch", 8)


def test_activation_factory():
    assert isinstance(build_activation("silu"), nn.SiLU)
    assert isinstance(build_activation(None), nn.Identity)
    with pytest.raises(ValueError, match="unknown activation"):
        build_activation("swishy")


def test_freeze_module_converts_bn_and_stops_grads():
    block = ConvNormAct(4, 4)
    block.norm.running_mean.fill_(0.5)
    frozen = freeze_module(block)
    assert isinstance(frozen.norm, FrozenBatchNorm2d)
    assert torch.allclose(frozen.norm.running_mean, torch.full((4,), 0.5))
    assert not any(p.requires_grad for p in frozen.parameters())
    frozen.train()
    x = torch.randn(2, 4, 5, 5)
    assert torch.allclose(frozen(x), frozen(x))


def test_channel_shuffle():
    x = torch.arange(6.0).view(1, 6, 1, 1)
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def _big_conv(cin=256, cout=256, k=3):
    return nn.Sequential(nn.Conv2d(cin, cout, k), nn.Linear(512, 1024))


def test_xavier_std():
    torch.manual_seed(0)
    model = xavier_init(_big_conv(), distribution="normal", bias=0.1)
    conv, fc = model
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9 + 256 * 9)), rel=0.03)
    assert fc.weight.std().item() == pytest.approx(math.sqrt(2 / (512 + 1024)), rel=0.03)
    assert torch.all(conv.bias == 0.1)
    xavier_init(model, distribution="uniform")  # U(-a, a) has std a / sqrt(3), a = sqrt(6 / (in + out))
    assert fc.weight.std().item() == pytest.approx(math.sqrt(6 / 1536) / math.sqrt(3), rel=0.03)
    assert fc.weight.abs().max().item() <= math.sqrt(6 / 1536) + 1e-6


def test_kaiming_std():
    torch.manual_seed(0)
    conv = kaiming_init(_big_conv(), mode="fan_out")[0]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.03)
    conv = kaiming_init(_big_conv(64, 256), mode="fan_in")[0]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (64 * 9)), rel=0.03)
    assert torch.all(conv.bias == 0)


def test_normal_std_and_prior_bias():
    torch.manual_seed(0)
    fc = normal_init(nn.Linear(1024, 1024), std=0.01)
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert torch.sigmoid(torch.tensor(prior_probability_bias(0.01))).item() == pytest.approx(0.01)
    with pytest.raises(ValueError):
        kaiming_init(fc, distribution="cauchy")


def test_make_divisible():
    assert make_divisible(32 * 0.35) == 16  # 11.2 -> 8 would lose > 10%, so 16
    assert make_divisible(24 * 0.5) == 16
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(3) == 8
    assert make_divisible(100, 16, min_value=64) == 96


def test_make_divisible_matches_torchvision():
    from torchvision.models._utils import _make_divisible

    for value in [3, 11.2, 12, 16.8, 24 * 0.75, 33, 96 * 1.3, 1280 * 1.4, 4.0, 7.9]:
        for divisor in (4, 8, 16):
            assert make_divisible(value, divisor) == _make_divisible(value, divisor), (value, divisor)
