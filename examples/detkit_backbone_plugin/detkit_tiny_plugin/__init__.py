"""A tiny example backbone registered with detkit through the "detkit.backbones" entry point."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from detkit.backbones import FeatureSpec, StagedBackbone
from detkit.layers import ConvNormAct, NormSpec


class TinyNet(StagedBackbone):
    """Two stride-2 3x3 convs per stage: c1 (stride 2), c2 (stride 4), c3 (stride 8), `width` channels each."""

    def __init__(
        self,
        width: int = 16,
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormSpec = "gn",
    ):
        super().__init__()
        in_channels = 3
        for i in (1, 2, 3):
            self.add_stage(
                f"c{i}",
                nn.Sequential(ConvNormAct(in_channels, width, 3, stride=2, norm=norm)),
                FeatureSpec(width, 2**i),
            )
            in_channels = width
        self.finalize(out_features, ("c2", "c3"), freeze_at)


def build_tiny_net(
    *, out_features: Sequence[str] | None = None, freeze_at: int = 0, norm: NormSpec | None = None, width: int = 16
) -> TinyNet:
    """Entry-point builder: the signature detkit's `build_backbone` calls."""
    return TinyNet(width, out_features=out_features, freeze_at=freeze_at, norm="gn" if norm is None else norm)
