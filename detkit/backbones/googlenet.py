"""GoogLeNet / Inception v1 (Szegedy et al., CVPR 2015) conv features, in torchvision's layout.

    c1  conv1 7x7/2, 64 ch                                    stride 2     64 ch
    c2  pool1 3x3/2 + conv2 1x1, 64 + conv3 3x3, 192          stride 4    192 ch
    c3  pool2 3x3/2 + inception3a, 3b                         stride 8    480 ch
    c4  pool3 3x3/2 + inception4a-4e                          stride 16   832 ch
    c5  pool4 2x2/2 + inception5a, 5b                         stride 32  1024 ch

The default outputs are the inception-block outputs c3, c4, c5. The classifier (global
average pooling instead of large fully connected layers, dropout, fc) and the two auxiliary
classifiers are left out. Pools use ceil mode, as torchvision's, so an output of stride s is
ceil(H / s) for inputs divisible by 32 (odd sizes can come out one cell smaller).

Weights: torchvision's `googlenet-*.pth` maps key for key (conv1 -> c1.conv1, conv2 / conv3 ->
c2.*, inception3a -> c3.inception3a, ..., `bn` -> `norm`); its "5x5" branches are 3x3 convs,
hence `large_kernel=3` by default. Those ImageNet weights expect inputs scaled to [-1, 1]:
`transform_input=True` maps detkit's ImageNet-normalised input there (torchvision's builder
does the same when it loads the weights).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from detkit.backbones.base import FeatureSpec, StagedBackbone
from detkit.backbones.registry import register_backbone
from detkit.backbones.weights import CONV_PARAMS, NORM_PARAMS, UnexpectedKey, register_key_maps
from detkit.layers import ConvNormAct, Inception, NormSpec, init_norms

#: inception blocks per stage: name -> (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj)
GOOGLENET_BLOCKS = {
    "c3": {"inception3a": (64, 96, 128, 16, 32, 32), "inception3b": (128, 128, 192, 32, 96, 64)},
    "c4": {
        "inception4a": (192, 96, 208, 16, 48, 64),
        "inception4b": (160, 112, 224, 24, 64, 64),
        "inception4c": (128, 128, 256, 24, 64, 64),
        "inception4d": (112, 144, 288, 32, 64, 64),
        "inception4e": (256, 160, 320, 32, 128, 128),
    },
    "c5": {"inception5a": (256, 160, 320, 32, 128, 128), "inception5b": (384, 192, 384, 48, 128, 128)},
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class InputTransform(nn.Module):
    """ImageNet-normalised input -> (pixel - 0.5) / 0.5, the input of torchvision's GoogLeNet weights."""

    def __init__(self):
        super().__init__()
        std, mean = torch.tensor(_IMAGENET_STD), torch.tensor(_IMAGENET_MEAN)
        self.register_buffer("scale", (std / 0.5).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - 0.5) / 0.5).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.dtype) + self.shift.to(x.dtype)


class GoogLeNet(StagedBackbone):
    """GoogLeNet conv body (see the module docstring).

    Args:
        out_features: outputs among "c1".."c5" (default ("c3", "c4", "c5")).
        freeze_at: freeze the first k stages (c1 = conv1 is the first).
        norm: norm after every conv (default BatchNorm with eps 1e-3, as torchvision).
        large_kernel: kernel of the inception "5x5" branch (3: torchvision's weights; 5: the paper).
        transform_input: rescale the input for torchvision's ImageNet weights (see above).
    """

    torchvision_arch = "googlenet"

    def __init__(
        self,
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormSpec = ("bn", {"eps": 1e-3}),
        large_kernel: int = 3,
        transform_input: bool = False,
    ):
        super().__init__()
        stem: OrderedDict[str, nn.Module] = OrderedDict()
        if transform_input:
            stem["transform"] = InputTransform()
        stem["conv1"] = ConvNormAct(3, 64, 7, stride=2, norm=norm)
        self.add_stage("c1", nn.Sequential(stem), FeatureSpec(64, 2))
        c2 = OrderedDict(
            pool1=nn.MaxPool2d(3, stride=2, ceil_mode=True),
            conv2=ConvNormAct(64, 64, 1, norm=norm),
            conv3=ConvNormAct(64, 192, 3, norm=norm),
        )
        self.add_stage("c2", nn.Sequential(c2), FeatureSpec(192, 4))
        in_channels, stride = 192, 4
        for k, (stage, blocks) in enumerate(GOOGLENET_BLOCKS.items(), start=2):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            layers[f"pool{k}"] = nn.MaxPool2d(2 if stage == "c5" else 3, stride=2, ceil_mode=True)
            for name, widths in blocks.items():
                layers[name] = Inception(in_channels, *widths, large_kernel=large_kernel, norm=norm)
                in_channels = layers[name].out_channels
            stride *= 2
            self.add_stage(stage, nn.Sequential(layers), FeatureSpec(in_channels, stride))
        # torchvision's init: truncated normal, std 0.01, for every conv
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.01, a=-2, b=2)
        init_norms(self)
        self.finalize(out_features, ("c3", "c4", "c5"), freeze_at)


@register_backbone("googlenet")
def googlenet(*, norm: NormSpec | None = None, **kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1): c3 / c4 / c5 = 480 / 832 / 1024 channels at strides 8 / 16 / 32.

    `norm` "bn" / "frozen_bn" keep torchvision's eps 1e-3 (default "bn").
    """
    if norm is None or norm in ("bn", "frozen_bn"):
        norm = (norm or "bn", {"eps": 1e-3})
    return GoogLeNet(norm=norm, **kwargs)


# ---------------------------------------------------------------------------------------
# torchvision checkpoints


def torchvision_key_map(key: str) -> str | None:
    """torchvision GoogLeNet key -> detkit key: conv1 -> c1.conv1, conv2 / conv3 -> c2.*,
    inception{3,4,5}x -> c{3,4,5}.inception{..}; `.bn.` -> `.norm.`; aux1 / aux2 / fc dropped."""
    if key.startswith(("aux1.", "aux2.", "fc.")):
        return None
    if m := re.fullmatch(rf"conv([1-3])\.(?:conv\.{CONV_PARAMS}|bn\.{NORM_PARAMS})", key):
        stage = "c1" if m[1] == "1" else "c2"
        return f"{stage}.conv{m[1]}." + (f"conv.{m[2]}" if m[2] else f"norm.{m[3]}")
    branch = r"(branch1|branch[23]\.[01]|branch4\.1)"
    if m := re.fullmatch(rf"inception([3-5][a-e])\.{branch}\.(?:conv\.{CONV_PARAMS}|bn\.{NORM_PARAMS})", key):
        stage = f"c{m[1][0]}"
        if f"inception{m[1]}" in GOOGLENET_BLOCKS[stage]:
            return f"{stage}.inception{m[1]}.{m[2]}." + (f"conv.{m[3]}" if m[3] else f"norm.{m[4]}")
    raise UnexpectedKey(key)


register_key_maps("googlenet", {"googlenet": torchvision_key_map}, dropped=("aux1.*", "aux2.*", "fc.*"))
