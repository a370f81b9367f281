"""AlexNet (Krizhevsky et al., 2012) conv features, in torchvision's single-tower layout; no classifier.

Stages follow the "ck has stride 2^k" rule of ResNet:

    c2  conv1 11x11/4, 64 ch                         stride 4    64 ch
    c3  pool1 3x3/2 + conv2 5x5, 192 ch              stride 8   192 ch
    c4  pool2 3x3/2 + conv3 384, conv4 256, conv5    stride 16  256 ch   (conv5; default output)
    c5  pool5 3x3/2                                  stride 32  256 ch

ReLU after every conv; overlapping 3x3 / stride 2 max pooling. The local response
normalisation of the paper is left out, as in torchvision (`norm` adds e.g. BatchNorm).
Dropout sits in the fully connected layers, i.e. in the detector heads (fc6 / fc7).

`padding`: "same" (default) pads conv1 by 5 and the pools by 1, so an output of stride s is
ceil(H / s) and its cells centre on multiples of s, as the backbone contract and anchors
expect; "torchvision" pads conv1 by 2 and the pools by 0, reproducing `torchvision.models.alexnet().features`
exactly (pool5 of a 224 / 227 input is 6 x 6, the R-CNN paper's pool5). Both load the same
checkpoints (`alexnet-*.pth`: features.* -> c2.conv1.conv, c3.conv2.conv, c4.conv3-5.conv).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from detkit.backbones.base import FeatureSpec, StagedBackbone
from detkit.backbones.registry import register_backbone
from detkit.backbones.weights import CONV_PARAMS, UnexpectedKey, register_key_maps
from detkit.layers import ConvNormAct, MaxPool2d, NormSpec, init_norms, kaiming_init

PADDINGS = ("same", "torchvision")
#: (name, in, out, kernel) of the five convs
ALEXNET_CONVS = (
    ("conv1", 3, 64, 11),
    ("conv2", 64, 192, 5),
    ("conv3", 192, 384, 3),
    ("conv4", 384, 256, 3),
    ("conv5", 256, 256, 3),
)


class AlexNet(StagedBackbone):
    """AlexNet conv body (see the module docstring).

    Args:
        out_features: outputs among "c2".."c5" (default ("c4",) = conv5, stride 16).
        freeze_at: freeze the first k stages (c2 = conv1 is the first).
        norm: "none" (default, as torchvision) or a norm after every conv (biases are kept).
        padding: "same" or "torchvision".
    """

    torchvision_arch = "alexnet"

    def __init__(
        self,
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormSpec = "none",
        padding: str = "same",
    ):
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.padding = padding
        same = padding == "same"

        def conv(i: int) -> ConvNormAct:
            _, cin, cout, k = ALEXNET_CONVS[i]
            pad = (k - 1) // 2 if same or k != 11 else 2
            return ConvNormAct(cin, cout, k, stride=4 if k == 11 else 1, padding=pad, norm=norm, bias=True)

        def pool() -> nn.MaxPool2d:  # detkit's subclass: faster on CPU for padding 1
            return MaxPool2d(3, stride=2, padding=1 if same else 0)

        self.add_stage("c2", nn.Sequential(OrderedDict(conv1=conv(0))), FeatureSpec(64, 4))
        self.add_stage("c3", nn.Sequential(OrderedDict(pool1=pool(), conv2=conv(1))), FeatureSpec(192, 8))
        self.add_stage(
            "c4",
            nn.Sequential(OrderedDict(pool2=pool(), conv3=conv(2), conv4=conv(3), conv5=conv(4))),
            FeatureSpec(256, 16),
        )
        self.add_stage("c5", nn.Sequential(OrderedDict(pool5=pool())), FeatureSpec(256, 32))
        kaiming_init(self, mode="fan_out", nonlinearity="relu")
        init_norms(self)
        self.finalize(out_features, ("c4",), freeze_at)


@register_backbone("alexnet")
def alexnet(*, norm: NormSpec | None = None, **kwargs) -> AlexNet:
    """AlexNet conv features (default norm "none", padding "same"); c4 = conv5, stride 16, 256 channels."""
    return AlexNet(norm="none" if norm is None else norm, **kwargs)


# ---------------------------------------------------------------------------------------
# torchvision checkpoints


def torchvision_key_map(key: str) -> str | None:
    """torchvision AlexNet key -> detkit key: features.{0,3,6,8,10} -> c2.conv1, c3.conv2, c4.conv3-conv5."""
    if key.startswith("classifier."):
        return None
    stages = ("c2", "c3", "c4", "c4", "c4")
    table = {index: f"{stage}.{conv[0]}" for index, stage, conv in zip((0, 3, 6, 8, 10), stages, ALEXNET_CONVS)}
    if (m := re.fullmatch(rf"features\.(\d+)\.{CONV_PARAMS}", key)) and int(m[1]) in table:
        return f"{table[int(m[1])]}.conv.{m[2]}"
    raise UnexpectedKey(key)


register_key_maps("alexnet", {"alexnet": torchvision_key_map}, dropped=("classifier.*",))
