"""Depthwise-separable backbones: MobileNetV1 and MobileNetV2.

Layers are grouped into stages by output stride (c1 = stride 2 ... c5 = stride 32); the
default outputs are c2..c5. Channel counts scale with `width_mult` and are rounded to a
multiple of 8 (`make_divisible`), as in the papers' reference code and torchvision, so
torchvision's MobileNetV2 checkpoints load for any width.

MobileNetV2 (torchvision `features[i]` -> detkit stage, width 1.0):

    c1  features[0:2]    stem 3x3/2 conv (32) + inverted residual (16)   stride 2    16 ch
    c2  features[2:4]    inverted residuals (24)                           stride 4    24 ch
    c3  features[4:7]    inverted residuals (32)                           stride 8    32 ch
    c4  features[7:14]   inverted residuals (64, 96)                       stride 16   96 ch
    c5  features[14:19]  inverted residuals (160, 320) + 1x1 conv (1280)   stride 32 1280 ch
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor, nn

from detkit.backbones.base import FeatureSpec, StagedBackbone
from detkit.backbones.registry import register_backbone
from detkit.backbones.weights import CONV_PARAMS, NORM_PARAMS, UnexpectedKey, register_key_maps
from detkit.layers import ConvNormAct, NormSpec, SeparableConv, init_norms, kaiming_init, make_divisible

# (expand ratio t, channels c, repeats n, first stride s) of MobileNetV2 (paper, Table 2)
MOBILENET_V2_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t = 1) -> 3x3 depthwise -> linear 1x1 project, residual when shapes match."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, expand_ratio: int, norm: NormSpec = "bn"):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.expand = (
            ConvNormAct(in_channels, hidden, 1, norm=norm, act="relu6", bias=False) if expand_ratio != 1 else None
        )
        self.depthwise = ConvNormAct(
            hidden, hidden, 3, stride=stride, groups=hidden, norm=norm, act="relu6", bias=False
        )
        self.project = ConvNormAct(hidden, out_channels, 1, norm=norm, act=None, bias=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        return x + y if self.use_residual else y


class LayerSlot(NamedTuple):
    """Where torchvision's `features[index]` lives in detkit: `getattr(model, stage)[position]`."""

    index: int
    stage: str
    position: int
    kind: str  # "conv" (ConvNormAct) or "block" (InvertedResidual); `expand` tells if it has a 1x1 expansion
    expand: bool


def mobilenet_v2_layout() -> list[LayerSlot]:
    """Stage placement of each torchvision MobileNetV2 `features[i]` (the same for every width)."""
    kinds = [("conv", False, 2)]  # stem: (kind, expand, stride)
    for t, _, n, s in MOBILENET_V2_SETTINGS:
        kinds += [("block", t != 1, s if r == 0 else 1) for r in range(n)]
    kinds.append(("conv", False, 1))  # final 1x1 conv
    slots, stride, positions = [], 1, {}
    for index, (kind, expand, s) in enumerate(kinds):
        stride *= s
        stage = f"c{int(math.log2(stride))}"
        positions[stage] = positions.get(stage, -1) + 1
        slots.append(LayerSlot(index, stage, positions[stage], kind, expand))
    return slots


class MobileNetV2(StagedBackbone):
    """MobileNetV2 features (no classifier); see the module docstring for the stages.

    Args:
        width_mult: channel multiplier (0.35 ... 1.4); the last conv keeps >= 1280 channels.
        out_features: outputs among "c1".."c5" (default c2..c5).
        freeze_at: freeze the first k stages (1 = c1, which holds the stem).
        norm: norm of every conv (default "bn"); activations are ReLU6.
    """

    torchvision_arch = "mobilenet_v2"

    def __init__(
        self,
        width_mult: float = 1.0,
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormSpec = "bn",
    ):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = width_mult
        in_channels = make_divisible(32 * width_mult)
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvNormAct(3, in_channels, 3, stride=2, norm=norm, act="relu6", bias=False)]
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            out_channels = make_divisible(c * width_mult)
            for r in range(n):
                layers.append(
                    InvertedResidual(in_channels, out_channels, stride=s if r == 0 else 1, expand_ratio=t, norm=norm)
                )
                in_channels = out_channels
        layers.append(ConvNormAct(in_channels, last_channels, 1, norm=norm, act="relu6", bias=False))

        stages: dict[str, list[nn.Module]] = {}
        for slot in mobilenet_v2_layout():
            stages.setdefault(slot.stage, []).append(layers[slot.index])
        for name, modules in stages.items():
            last = modules[-1]
            channels = last.out_channels if isinstance(last, ConvNormAct) else last.project.out_channels
            self.add_stage(name, nn.Sequential(*modules), FeatureSpec(channels, 2 ** int(name[1:])))
        kaiming_init(self, mode="fan_out", nonlinearity="relu")
        init_norms(self)
        self.finalize(out_features, ("c2", "c3", "c4", "c5"), freeze_at)


# MobileNetV1 (paper, Table 1): (pointwise output channels, depthwise stride) per separable block
MOBILENET_V1_SETTINGS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


class MobileNetV1(StagedBackbone):
    """MobileNetV1: 3x3/2 conv then 13 depthwise-separable blocks (ReLU, norm after every conv).

    Stages: c1 (stride 2, 64 ch), c2 (4, 128), c3 (8, 256), c4 (16, 512), c5 (32, 1024),
    channels times `width_mult` rounded to a multiple of 8. No torchvision checkpoint
    exists for it; load detkit checkpoints only.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormSpec = "bn",
    ):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        self.width_mult = width_mult
        in_channels = make_divisible(32 * width_mult)
        stages: dict[str, list[nn.Module]] = {"c1": [ConvNormAct(3, in_channels, 3, stride=2, norm=norm)]}
        stride = 2
        for channels, s in MOBILENET_V1_SETTINGS:
            out_channels = make_divisible(channels * width_mult)
            stride *= s
            block = SeparableConv(in_channels, out_channels, 3, stride=s, norm=norm, act="relu")
            stages.setdefault(f"c{int(math.log2(stride))}", []).append(block)
            in_channels = out_channels
        for name, modules in stages.items():
            self.add_stage(name, nn.Sequential(*modules), FeatureSpec(modules[-1].out_channels, 2 ** int(name[1:])))
        kaiming_init(self, mode="fan_out", nonlinearity="relu")
        init_norms(self)
        self.finalize(out_features, ("c2", "c3", "c4", "c5"), freeze_at)


@register_backbone("mobilenet_v2")
def mobilenet_v2(*, width_mult: float = 1.0, norm: NormSpec | None = None, **kwargs) -> MobileNetV2:
    """MobileNetV2 (default norm "bn"); c2..c5 have 24/32/96/1280 channels at width 1.0."""
    return MobileNetV2(width_mult, norm="bn" if norm is None else norm, **kwargs)


@register_backbone("mobilenet_v1")
def mobilenet_v1(*, width_mult: float = 1.0, norm: NormSpec | None = None, **kwargs) -> MobileNetV1:
    """MobileNetV1 (default norm "bn"); c2..c5 have 128/256/512/1024 channels at width 1.0."""
    return MobileNetV1(width_mult, norm="bn" if norm is None else norm, **kwargs)


# ---------------------------------------------------------------------------------------
# torchvision checkpoints

_V2_LAYOUT = tuple(mobilenet_v2_layout())  # the same for every width


def torchvision_key_map(key: str) -> str | None:
    """torchvision MobileNetV2 key -> detkit key, placing features[i] by `mobilenet_v2_layout()`.

    Stem / final conv: features.{i}.0 / .1 -> {stage}.{pos}.conv / .norm. Inverted residual
    features.{i}.conv.{j}: [expand (j=0)], depthwise, project conv, project norm.
    """
    if key.startswith("classifier."):
        return None
    m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
    if m is None or int(m[1]) >= len(_V2_LAYOUT):
        raise UnexpectedKey(key)
    slot, rest = _V2_LAYOUT[int(m[1])], m[2]
    base = f"{slot.stage}.{slot.position}"
    if slot.kind == "conv":
        if r := re.fullmatch(rf"0\.{CONV_PARAMS}", rest):
            return f"{base}.conv.{r[1]}"
        if r := re.fullmatch(rf"1\.{NORM_PARAMS}", rest):
            return f"{base}.norm.{r[1]}"
        raise UnexpectedKey(key)
    parts = (["expand"] if slot.expand else []) + ["depthwise", "project.conv", "project.norm"]
    if (r := re.fullmatch(r"conv\.(\d+)\.(.+)", rest)) and int(r[1]) < len(parts):
        part, param = parts[int(r[1])], r[2]
        if part in ("expand", "depthwise"):
            if p := re.fullmatch(rf"0\.{CONV_PARAMS}", param):
                return f"{base}.{part}.conv.{p[1]}"
            if p := re.fullmatch(rf"1\.{NORM_PARAMS}", param):
                return f"{base}.{part}.norm.{p[1]}"
        elif re.fullmatch(CONV_PARAMS if part == "project.conv" else NORM_PARAMS, param):
            return f"{base}.{part}.{param}"
    raise UnexpectedKey(key)


register_key_maps("mobilenet_v2", {"mobilenet_v2": torchvision_key_map}, dropped=("classifier.*",))
