"""VGG-11/13/16/19 (with or without BatchNorm) conv features; no classifier.

VGG stages follow the paper's conv blocks, so their names do NOT follow the ResNet rule
"ck has stride 2^k": block k is [2x2 max pool (k > 1)] + the convs of "convk_x", and its
output is the last ReLU before the next pool:

    c1  conv1_x   stride 1    64 ch
    c2  conv2_x   stride 2   128 ch
    c3  conv3_x   stride 4   256 ch
    c4  conv4_x   stride 8   512 ch   (conv4_3 for VGG-16)
    c5  conv5_x   stride 16  512 ch   (conv5_3: the map R-CNN / Fast R-CNN pool RoIs from)

pool5 is dropped. The default output is ("c5",). Convs are named `conv1`, `conv2`, ...
inside a block, so `c4.conv3` is VGG-16's conv4_3. Every conv keeps its bias, also when a
norm follows (as in torchvision's vgg*_bn), so checkpoints load unchanged.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from detkit.backbones.base import FeatureSpec, StagedBackbone
from detkit.backbones.registry import register_backbone
from detkit.backbones.weights import CONV_PARAMS, NORM_PARAMS, KeyMap, UnexpectedKey, register_key_maps
from detkit.layers import ConvNormAct, NormSpec, init_norms, kaiming_init

#: convs per block (c1..c5) of each depth; every conv is 3x3, widths 64, 128, 256, 512, 512
VGG_CONVS_PER_BLOCK = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}
_WIDTHS = (64, 128, 256, 512, 512)


class VGG(StagedBackbone):
    """VGG conv body.

    Args:
        depth: 11, 13, 16 or 19.
        out_features: outputs among "c1".."c5" (default ("c5",)).
        freeze_at: freeze the first k conv blocks (Fast R-CNN freezes conv1 and conv2: 2).
        norm: "none" (plain VGG) or a norm such as "bn" / "frozen_bn" (VGG-BN).
    """

    def __init__(
        self,
        depth: int = 16,
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormSpec = "none",
    ):
        super().__init__()
        if depth not in VGG_CONVS_PER_BLOCK:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_CONVS_PER_BLOCK)}, got {depth}")
        has_norm = norm not in (None, "none")
        self.torchvision_arch = f"vgg{depth}_bn" if has_norm else f"vgg{depth}"
        in_channels, stride = 3, 1
        for k, (num_convs, width) in enumerate(zip(VGG_CONVS_PER_BLOCK[depth], _WIDTHS), start=1):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            if k > 1:
                layers["pool"] = nn.MaxPool2d(2, stride=2)
                stride *= 2
            for j in range(1, num_convs + 1):
                layers[f"conv{j}"] = ConvNormAct(in_channels, width, 3, norm=norm, bias=True)
                in_channels = width
            self.add_stage(f"c{k}", nn.Sequential(layers), FeatureSpec(width, stride))
        kaiming_init(self, mode="fan_out", nonlinearity="relu")
        init_norms(self)
        self.finalize(out_features, ("c5",), freeze_at)


def _vgg(depth: int, default_norm: str, *, out_features=None, freeze_at: int = 0, norm: NormSpec | None = None) -> VGG:
    return VGG(depth, out_features=out_features, freeze_at=freeze_at, norm=default_norm if norm is None else norm)


@register_backbone("vgg11")
def vgg11(**kwargs) -> VGG:
    """VGG-11 conv features (default norm "none")."""
    return _vgg(11, "none", **kwargs)


@register_backbone("vgg13")
def vgg13(**kwargs) -> VGG:
    """VGG-13 conv features (default norm "none")."""
    return _vgg(13, "none", **kwargs)


@register_backbone("vgg16")
def vgg16(**kwargs) -> VGG:
    """VGG-16 conv features (default norm "none"); c5 = conv5_3, stride 16, 512 channels."""
    return _vgg(16, "none", **kwargs)


@register_backbone("vgg19")
def vgg19(**kwargs) -> VGG:
    """VGG-19 conv features (default norm "none")."""
    return _vgg(19, "none", **kwargs)


@register_backbone("vgg11_bn")
def vgg11_bn(**kwargs) -> VGG:
    """VGG-11 with BatchNorm (default norm "bn")."""
    return _vgg(11, "bn", **kwargs)


@register_backbone("vgg13_bn")
def vgg13_bn(**kwargs) -> VGG:
    """VGG-13 with BatchNorm (default norm "bn")."""
    return _vgg(13, "bn", **kwargs)


@register_backbone("vgg16_bn")
def vgg16_bn(**kwargs) -> VGG:
    """VGG-16 with BatchNorm (default norm "bn")."""
    return _vgg(16, "bn", **kwargs)


@register_backbone("vgg19_bn")
def vgg19_bn(**kwargs) -> VGG:
    """VGG-19 with BatchNorm (default norm "bn")."""
    return _vgg(19, "bn", **kwargs)


# ---------------------------------------------------------------------------------------
# torchvision checkpoints


def torchvision_key_map(depth: int, batch_norm: bool) -> KeyMap:
    """Key map for torchvision vgg{depth}[_bn]: features.{i} -> c{block}.conv{j}.conv / .norm.

    torchvision's `features` is a flat Sequential of conv, [bn,] relu per conv and a max
    pool after each block; the index table below is derived from the same block layout as `VGG`.
    """
    table: dict[int, tuple[str, str]] = {}  # features index -> (detkit path, "conv" | "norm")
    index = 0
    for block, num_convs in enumerate(VGG_CONVS_PER_BLOCK[depth], start=1):
        for j in range(1, num_convs + 1):
            table[index] = (f"c{block}.conv{j}", "conv")
            if batch_norm:
                table[index + 1] = (f"c{block}.conv{j}", "norm")
            index += 3 if batch_norm else 2  # conv, [bn,] relu
        index += 1  # max pool

    def key_map(key: str) -> str | None:
        if key.startswith("classifier."):
            return None
        if m := re.fullmatch(r"features\.(\d+)\.(\w+)", key):
            path, kind = table.get(int(m[1]), (None, None))
            allowed = CONV_PARAMS if kind == "conv" else NORM_PARAMS
            if path is not None and re.fullmatch(allowed, m[2]):
                return f"{path}.{kind}.{m[2]}"
        raise UnexpectedKey(key)

    return key_map


register_key_maps(
    "vgg",
    {f"vgg{d}{bn}": torchvision_key_map(d, bool(bn)) for d in VGG_CONVS_PER_BLOCK for bn in ("", "_bn")},
    dropped=("classifier.*",),
)
