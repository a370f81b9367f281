"""A small from-scratch backbone for CPU experiments (the synthetic shapes detector).

Seven 3x3 ConvNormAct layers, the first of each stage with stride 2:

    c1  32 s2, 32     stride 2   32 ch
    c2  64 s2, 64     stride 4   64 ch
    c3  128 s2, 128, 128   stride 8   128 ch   (default output)
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from detkit.backbones.base import FeatureSpec, StagedBackbone
from detkit.backbones.registry import register_backbone
from detkit.layers import ConvNormAct, NormSpec, init_norms, kaiming_init

_CONVS_PER_STAGE = (2, 2, 3)


class SimpleConvNet(StagedBackbone):
    """Three stages of 3x3 convs (2, 2, 3 layers) with widths `channels`, strides 2/4/8.

    Args:
        channels: widths of c1, c2, c3.
        out_features: outputs among "c1", "c2", "c3" (default ("c3",)).
        freeze_at: freeze the first k stages.
        norm: norm after every conv (default "bn").
    """

    def __init__(
        self,
        channels: Sequence[int] = (32, 64, 128),
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormSpec = "bn",
    ):
        super().__init__()
        if len(channels) != len(_CONVS_PER_STAGE):
            raise ValueError(f"channels must give {len(_CONVS_PER_STAGE)} widths, got {channels}")
        in_channels = 3
        for i, (width, num_convs) in enumerate(zip(channels, _CONVS_PER_STAGE), start=1):
            layers = []
            for j in range(num_convs):
                layers.append(ConvNormAct(in_channels, width, 3, stride=2 if j == 0 else 1, norm=norm))
                in_channels = width
            self.add_stage(f"c{i}", nn.Sequential(*layers), FeatureSpec(width, 2**i))
        kaiming_init(self, mode="fan_out", nonlinearity="relu")
        init_norms(self)
        self.finalize(out_features, ("c3",), freeze_at)


@register_backbone("simple_convnet")
def simple_convnet(*, norm: NormSpec | None = None, **kwargs) -> SimpleConvNet:
    """SimpleConvNet with norm "bn" by default; output ("c3",) = stride 8, 128 channels."""
    return SimpleConvNet(norm="bn" if norm is None else norm, **kwargs)
