"""The Inception module of GoogLeNet (Szegedy et al., CVPR 2015): four branches side by side.

    branch1  1x1 conv                                   -> ch1x1
    branch2  1x1 reduce -> 3x3 conv                     -> ch3x3
    branch3  1x1 reduce -> "5x5" conv                   -> ch5x5
    branch4  3x3 max pool (stride 1) -> 1x1 projection  -> pool_proj

Outputs are concatenated along channels: ch1x1 + ch3x3 + ch5x5 + pool_proj, same H x W as the
input. The 1x1 reductions keep the 3x3 / 5x5 convs cheap. Every conv is a `ConvNormAct`
(sub-modules `conv` / `norm` / `act`), named as in torchvision's GoogLeNet so that its
checkpoints map one to one.

Note: torchvision's GoogLeNet (and its ImageNet weights) uses a 3x3 kernel in the "5x5"
branch; `large_kernel=3` reproduces it, the paper's 5 is the default here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detkit.layers.conv import ConvNormAct
from detkit.layers.norm import NormSpec


class Inception(nn.Module):
    """Inception v1 module: `Tensor[N, in_channels, H, W]` -> `Tensor[N, out_channels, H, W]`.

    Args:
        in_channels: input channels.
        ch1x1: channels of the 1x1 branch.
        ch3x3red / ch3x3: 1x1 reduction and 3x3 output channels.
        ch5x5red / ch5x5: 1x1 reduction and large-kernel output channels.
        pool_proj: 1x1 projection after the 3x3 max pool.
        large_kernel: kernel of the "5x5" branch (5 as in the paper, 3 as in torchvision).
        norm / act: after every conv (GoogLeNet of torchvision: BatchNorm, eps 1e-3, ReLU).
    """

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        *,
        large_kernel: int = 5,
        norm: NormSpec = "bn",
        act: str | None = "relu",
    ):
        super().__init__()

        def conv(cin: int, cout: int, k: int) -> ConvNormAct:
            return ConvNormAct(cin, cout, k, norm=norm, act=act)

        self.branch1 = conv(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(conv(in_channels, ch3x3red, 1), conv(ch3x3red, ch3x3, 3))
        self.branch3 = nn.Sequential(conv(in_channels, ch5x5red, 1), conv(ch5x5red, ch5x5, large_kernel))
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), conv(in_channels, pool_proj, 1)
        )
        self.in_channels = in_channels
        self.out_channels = ch1x1 + ch3x3 + ch5x5 + pool_proj

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)
