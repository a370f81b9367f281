"""LeNet-5 (LeCun et al., 1998) as a backbone for tiny inputs (digits, 64 px shapes).

    c1  C1: 5x5 conv, 6 ch, act + S2: 2x2 average pool     stride 2    6 ch
    c2  C3: 5x5 conv, 16 ch, act + S4: 2x2 average pool    stride 4   16 ch
    c3  C5: 5x5 conv, 120 ch, act                           stride 4  120 ch   (default output)

As in the paper: tanh activations, average-pooling subsampling, no normalisation; `act`,
`pool` ("avg" | "max") and `norm` change that. Convs keep "same" padding (the paper pads
28 x 28 digits to 32 x 32 instead), so any input size works and outputs are ceil(H / stride).
The paper's C5 is a 5x5 conv that meets a 5x5 map (a fully connected layer in effect);
here it stays a convolution so that larger inputs give a feature map.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from detkit.backbones.base import FeatureSpec, StagedBackbone
from detkit.backbones.registry import register_backbone
from detkit.layers import ConvNormAct, NormSpec, init_norms, kaiming_init, xavier_init

_POOLS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


class LeNet5(StagedBackbone):
    """LeNet-5 conv body: C1-S2, C3-S4, C5 (see the module docstring).

    Args:
        channels: widths of C1, C3, C5 (6, 16, 120 in the paper).
        out_features: outputs among "c1", "c2", "c3" (default ("c3",)).
        freeze_at: freeze the first k stages.
        norm: norm after every conv (default "none", as the paper).
        act: activation (default "tanh", as the paper; "relu" trains faster).
        pool: subsampling, "avg" (paper) or "max".
    """

    def __init__(
        self,
        channels: Sequence[int] = (6, 16, 120),
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        norm: NormSpec = "none",
        act: str = "tanh",
        pool: str = "avg",
    ):
        super().__init__()
        if len(channels) != 3:
            raise ValueError(f"channels must give 3 widths (C1, C3, C5), got {channels}")
        if pool not in _POOLS:
            raise ValueError(f"pool must be one of {sorted(_POOLS)}, got {pool!r}")
        in_channels, stride = 3, 1
        for k, width in enumerate(channels, start=1):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            layers[f"conv{k}"] = ConvNormAct(in_channels, width, 5, norm=norm, act=act)
            if k < 3:
                layers[f"pool{k}"] = _POOLS[pool](2, stride=2, ceil_mode=True)
                stride *= 2
            self.add_stage(f"c{k}", nn.Sequential(layers), FeatureSpec(width, stride))
            in_channels = width
        if act == "relu":
            kaiming_init(self, mode="fan_out", nonlinearity="relu")
        else:  # Glorot's init was derived for tanh / sigmoid nets
            xavier_init(self)
        init_norms(self)
        self.finalize(out_features, ("c3",), freeze_at)


@register_backbone("lenet5")
def lenet5(*, norm: NormSpec | None = None, **kwargs) -> LeNet5:
    """LeNet-5 (tanh, average pooling, no norm by default); output ("c3",): stride 4, 120 channels."""
    return LeNet5(norm="none" if norm is None else norm, **kwargs)
