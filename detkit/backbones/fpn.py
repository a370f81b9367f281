"""Feature Pyramid Network (Lin et al., 2017) on top of any detkit Backbone.

Shape shorthand: N images; Ci channels of input feature i; D = out_channels.

For each selected backbone feature of stride 2^l, the FPN outputs "pl" (Tensor[N, D, h, w],
same size as the input feature): a 1x1 lateral conv, plus the next coarser level upsampled
(nearest, to the lateral's exact size, so odd sizes work), then a 3x3 output conv.
Extra levels on top of the coarsest one (stride 2^L):

- "maxpool": p(L+1) = max_pool(pL, kernel 1, stride 2)  (Detectron / torchvision Faster R-CNN)
- "p6p7":    p(L+1) = conv3x3/2(pL), p(L+2) = conv3x3/2(relu(p(L+1)))  (RetinaNet style, from P5)
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from detkit.backbones.base import Backbone, FeatureSpec
from detkit.backbones.registry import build_backbone, register_backbone
from detkit.backbones.weights import (
    CONV_PARAMS,
    NORM_PARAMS,
    KeyMap,
    UnexpectedKey,
    load_backbone_weights,
    register_key_map_wrapper,
)
from detkit.layers import ConvNormAct, NormSpec, kaiming_init

EXTRA_BLOCKS = (None, "maxpool", "p6p7")


class FPN(Backbone):
    """FPN wrapping `backbone` (kept as the child module `body`); itself a Backbone.

    Args:
        backbone: the bottom-up network; its `feature_specs()` size the FPN.
        in_features: backbone outputs to use (default all), strides must be powers of 2.
        out_channels: channels D of every pyramid level.
        extra_block: None, "maxpool" or "p6p7" (see the module docstring).
        norm: norm after the lateral and output convs (default none: convs with bias).
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        in_features: Sequence[str] | None = None,
        out_channels: int = 256,
        extra_block: str | None = "maxpool",
        norm: NormSpec = None,
    ):
        super().__init__()
        if extra_block not in EXTRA_BLOCKS:
            raise ValueError(f"extra_block must be one of {EXTRA_BLOCKS}, got {extra_block!r}")
        specs = backbone.feature_specs()
        if in_features is None:
            in_features = tuple(specs)
        unknown = [f for f in in_features if f not in specs]
        if unknown or not in_features:
            raise ValueError(f"FPN in_features {list(in_features)} must be among the backbone outputs {list(specs)}")
        self.in_features = tuple(f for f in specs if f in in_features)  # increasing stride
        levels = []
        for f in self.in_features:
            level = math.log2(specs[f].stride)
            if not level.is_integer():
                raise ValueError(f"FPN needs power-of-2 strides, feature {f!r} has stride {specs[f].stride}")
            levels.append(int(level))
        if len(set(levels)) != len(levels):
            raise ValueError(f"FPN in_features must have distinct strides, got {[specs[f] for f in self.in_features]}")

        self.body = backbone
        self.extra_block = extra_block
        self.torchvision_arch = f"{backbone.torchvision_arch}_fpn" if backbone.torchvision_arch else None
        norm = "none" if norm is None else norm
        self.lateral = nn.ModuleDict()
        self.output = nn.ModuleDict()
        for f in self.in_features:
            self.lateral[f] = ConvNormAct(specs[f].channels, out_channels, 1, norm=norm, act=None)
            self.output[f] = ConvNormAct(out_channels, out_channels, 3, norm=norm, act=None)

        self._specs: OrderedDict[str, FeatureSpec] = OrderedDict(
            (f"p{level}", FeatureSpec(out_channels, 2**level)) for level in levels
        )
        top = levels[-1]
        num_extra = {None: 0, "maxpool": 1, "p6p7": 2}[extra_block]
        for k in range(1, num_extra + 1):
            self._specs[f"p{top + k}"] = FeatureSpec(out_channels, 2 ** (top + k))
        self.extra = nn.ModuleDict()
        if extra_block == "p6p7":
            for k in (1, 2):
                self.extra[f"p{top + k}"] = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        # torchvision's FPN init: kaiming_uniform_(a=1), i.e. gain 1 with fan_in, zero bias
        for module in (self.lateral, self.output, self.extra):
            kaiming_init(module, mode="fan_in", nonlinearity="linear", distribution="uniform")

    def feature_specs(self) -> OrderedDict[str, FeatureSpec]:
        return OrderedDict(self._specs)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        names = list(self._specs)
        inner = self.lateral[self.in_features[-1]](features[self.in_features[-1]])
        results = [self.output[self.in_features[-1]](inner)]
        for f in reversed(self.in_features[:-1]):
            lateral = self.lateral[f](features[f])
            inner = lateral + F.interpolate(inner, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.output[f](inner))
        if self.extra_block == "maxpool":
            results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2))
        elif self.extra_block == "p6p7":
            p6 = self.extra[names[len(self.in_features)]](results[-1])
            results += [p6, self.extra[names[len(self.in_features) + 1]](F.relu(p6))]
        return OrderedDict(zip(names, results))


def build_fpn_backbone(
    name: str,
    *,
    weights: str | PathLike | Mapping[str, Any] | None = None,
    out_features: Sequence[str] | None = None,
    freeze_at: int = 0,
    norm: NormSpec = None,
    out_channels: int = 256,
    extra_block: str | None = "maxpool",
    fpn_norm: NormSpec = None,
    **kwargs: Any,
) -> FPN:
    """Build backbone `name` (see `build_backbone`) and put an FPN on top.

    `out_features` selects the backbone features fed to the FPN (default: the backbone's
    default outputs); `norm` / `freeze_at` / `kwargs` go to the backbone, `fpn_norm` to the
    FPN convs. `weights` may be a torchvision classification checkpoint (loaded into the
    body), a torchvision `BackboneWithFPN` state dict ("body.*", "fpn.*" keys) or a
    detkit checkpoint of the whole FPN backbone.
    """
    body = build_backbone(name, out_features=out_features, freeze_at=freeze_at, norm=norm, **kwargs)
    fpn = FPN(body, out_channels=out_channels, extra_block=extra_block, norm=fpn_norm)
    if weights is not None:
        load_backbone_weights(fpn, weights)
    return fpn


def _fpn_variant(name: str, default_in_features: Sequence[str] | None = None):
    def builder(*, out_features: Sequence[str] | None = None, **kwargs: Any) -> FPN:
        return build_fpn_backbone(name, out_features=out_features or default_in_features, **kwargs)

    builder.__name__ = builder.__qualname__ = f"{name}_fpn"
    builder.__doc__ = f"{name} with an FPN (`out_features` = backbone features fed to it); see `build_fpn_backbone`."
    return builder


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "mobilenet_v1", "mobilenet_v2"):
    register_backbone(f"{_name}_fpn")(_fpn_variant(_name))
register_backbone("simple_convnet_fpn")(_fpn_variant("simple_convnet", ("c2", "c3")))
# GoogLeNet: its three inception-block outputs (c3-c5, strides 8-32). No FPN for AlexNet (one map
# per stride, conv5 and its pool5 carry the same features) nor LeNet-5 (c2 and c3 share stride 4).
register_backbone("googlenet_fpn")(_fpn_variant("googlenet"))


def torchvision_key_map(body_map: KeyMap, in_features: tuple[str, ...] | None = None) -> KeyMap:
    """Key map for torchvision's BackboneWithFPN: body.* via `body_map`, fpn.* -> lateral / output / extra.

    fpn.inner_blocks.{i} -> lateral.{in_features[i]}, fpn.layer_blocks.{i} -> output.{in_features[i]}
    (with or without torchvision >= 0.13's ".0." conv / ".1." norm level), and
    fpn.extra_blocks.p6 / p7 (RetinaNet) -> extra.p6 / p7. `in_features` defaults to c2..c5.
    """
    in_features = tuple(in_features or ("c2", "c3", "c4", "c5"))

    def key_map(key: str) -> str | None:
        if key.startswith("body."):
            mapped = body_map(key[len("body.") :])
            return None if mapped is None else f"body.{mapped}"
        m = re.fullmatch(r"fpn\.(inner|layer)_blocks\.(\d+)\.(?:([01])\.)?(\w+)", key)
        if m and int(m[2]) < len(in_features):
            module = "lateral" if m[1] == "inner" else "output"
            sub, params = ("norm", NORM_PARAMS) if m[3] == "1" else ("conv", CONV_PARAMS)
            if re.fullmatch(params, m[4]):
                return f"{module}.{in_features[int(m[2])]}.{sub}.{m[4]}"
        if m := re.fullmatch(rf"fpn\.extra_blocks\.(p6|p7)\.{CONV_PARAMS}", key):
            return f"extra.{m[1]}.{m[2]}"
        raise UnexpectedKey(key)

    return key_map


register_key_map_wrapper("_fpn", torchvision_key_map)
