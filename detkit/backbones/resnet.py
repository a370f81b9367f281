"""ResNet-18/34/50/101/152 backbones (torchvision "v1.5": the stride sits on the 3x3 conv).

Stages and outputs for an H x W input:

    stem  7x7/2 conv + 3x3/2 max pool   stride 4   64 ch   (not an output)
    c2    torchvision layer1            stride 4   64 (basic) / 256 (bottleneck) ch
    c3    torchvision layer2            stride 8   128 / 512
    c4    torchvision layer3            stride 16  256 / 1024
    c5    torchvision layer4            stride 32  512 / 2048

Module names mirror torchvision's closely (see `torchvision_key_map` for the mapping):
a block's convs are `conv1`, `conv2`, (`conv3`) ConvNormAct modules with sub-modules
`conv` / `norm`, and the projection shortcut is `downsample`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import Tensor, nn

from detkit.backbones.base import FeatureSpec, StagedBackbone
from detkit.backbones.registry import register_backbone
from detkit.backbones.weights import NORM_PARAMS, UnexpectedKey, register_key_maps
from detkit.layers import ConvNormAct, MaxPool2d, NormSpec, init_norms, kaiming_init


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, *, stride: int = 1, norm: NormSpec = "bn"):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = ConvNormAct(in_channels, planes, 3, stride=stride, norm=norm, bias=False)
        self.conv2 = ConvNormAct(planes, out_channels, 3, norm=norm, act=None, bias=False)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv2(self.conv1(x))
        out += identity
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand (x4), plus shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, *, stride: int = 1, norm: NormSpec = "bn"):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = ConvNormAct(in_channels, planes, 1, norm=norm, bias=False)
        self.conv2 = ConvNormAct(planes, planes, 3, stride=stride, norm=norm, bias=False)
        self.conv3 = ConvNormAct(planes, out_channels, 1, norm=norm, act=None, bias=False)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.conv3(self.conv2(self.conv1(x)))
        out += identity
        return self.relu(out)


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: NormSpec) -> ConvNormAct | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return ConvNormAct(in_channels, out_channels, 1, stride=stride, norm=norm, act=None, bias=False)


_BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


class ResNet(StagedBackbone):
    """ResNet feature extractor (no avgpool / fc).

    Args:
        block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50 and deeper).
        layers: number of blocks in c2..c5.
        out_features: outputs among "c2".."c5" (default all four).
        freeze_at: 0 = train all; 1 = freeze stem; 2 = stem + c2 (Detectron default); ... 5 = all.
        norm: norm of every conv ("bn", "frozen_bn", "gn", ...).
        zero_init_residual: zero the last norm's weight in each block (blocks start as identity).
        arch: torchvision architecture name for weight loading (set by the builders).
    """

    def __init__(
        self,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormSpec = "bn",
        zero_init_residual: bool = False,
        arch: str | None = None,
    ):
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 block counts (c2..c5), got {layers}")
        block_cls = _BLOCKS[block]
        self.torchvision_arch = arch

        # conv / norm / act / pool: torchvision's conv1, bn1, relu, maxpool
        stem = ConvNormAct(3, 64, 7, stride=2, norm=norm, bias=False)
        stem.add_module("pool", MaxPool2d(3, stride=2, padding=1))  # nn.MaxPool2d, faster for CPU inference
        self.add_stage("stem", stem, FeatureSpec(64, 4), is_feature=False)

        in_channels, stride = 64, 4
        for i, (planes, num_blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            first_stride = 1 if i == 0 else 2
            stride *= first_stride
            blocks = []
            for b in range(num_blocks):
                blocks.append(block_cls(in_channels, planes, stride=first_stride if b == 0 else 1, norm=norm))
                in_channels = planes * block_cls.expansion
            self.add_stage(f"c{i + 2}", nn.Sequential(*blocks), FeatureSpec(in_channels, stride))

        kaiming_init(self, mode="fan_out", nonlinearity="relu")
        init_norms(self)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last = m.conv2 if isinstance(m, BasicBlock) else m.conv3
                    if getattr(last.norm, "weight", None) is not None:
                        nn.init.zeros_(last.norm.weight)
        self.finalize(out_features, ("c2", "c3", "c4", "c5"), freeze_at)


def _resnet(depth: int, *, out_features=None, freeze_at: int = 0, norm: NormSpec | None = None, **kwargs) -> ResNet:
    block, layers = _DEPTHS[depth]
    return ResNet(
        block,
        layers,
        out_features=out_features,
        freeze_at=freeze_at,
        norm="bn" if norm is None else norm,
        arch=f"resnet{depth}",
        **kwargs,
    )


@register_backbone("resnet18")
def resnet18(**kwargs) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); c2..c5 have 64/128/256/512 channels."""
    return _resnet(18, **kwargs)


@register_backbone("resnet34")
def resnet34(**kwargs) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3); c2..c5 have 64/128/256/512 channels."""
    return _resnet(34, **kwargs)


@register_backbone("resnet50")
def resnet50(**kwargs) -> ResNet:
    """ResNet-50: bottlenecks (3, 4, 6, 3); c2..c5 have 256/512/1024/2048 channels."""
    return _resnet(50, **kwargs)


@register_backbone("resnet101")
def resnet101(**kwargs) -> ResNet:
    """ResNet-101: bottlenecks (3, 4, 23, 3)."""
    return _resnet(101, **kwargs)


@register_backbone("resnet152")
def resnet152(**kwargs) -> ResNet:
    """ResNet-152: bottlenecks (3, 8, 36, 3)."""
    return _resnet(152, **kwargs)


# ---------------------------------------------------------------------------------------
# torchvision checkpoints

#: torchvision keys the key map drops: the classifier
TORCHVISION_DROPPED_KEYS = ("fc.weight", "fc.bias")


def torchvision_key_map(key: str) -> str | None:
    """torchvision ResNet key -> detkit ResNet key (None for the dropped fc layer).

    conv1 / bn1 -> stem.conv / stem.norm; layer{i}.{b}.conv{k} / bn{k} ->
    c{i+1}.{b}.conv{k}.conv / .norm; layer{i}.{b}.downsample.0 / .1 -> ...downsample.conv / .norm.
    """
    if key in TORCHVISION_DROPPED_KEYS:
        return None
    if key == "conv1.weight":
        return "stem.conv.weight"
    if m := re.fullmatch(rf"bn1\.{NORM_PARAMS}", key):
        return f"stem.norm.{m[1]}"
    if m := re.fullmatch(r"layer([1-4])\.(\d+)\.conv([1-3])\.weight", key):
        return f"c{int(m[1]) + 1}.{m[2]}.conv{m[3]}.conv.weight"
    if m := re.fullmatch(rf"layer([1-4])\.(\d+)\.bn([1-3])\.{NORM_PARAMS}", key):
        return f"c{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm.{m[4]}"
    if m := re.fullmatch(r"layer([1-4])\.(\d+)\.downsample\.0\.weight", key):
        return f"c{int(m[1]) + 1}.{m[2]}.downsample.conv.weight"
    if m := re.fullmatch(rf"layer([1-4])\.(\d+)\.downsample\.1\.{NORM_PARAMS}", key):
        return f"c{int(m[1]) + 1}.{m[2]}.downsample.norm.{m[3]}"
    raise UnexpectedKey(key)


register_key_maps("resnet", {f"resnet{d}": torchvision_key_map for d in _DEPTHS}, dropped=TORCHVISION_DROPPED_KEYS)
