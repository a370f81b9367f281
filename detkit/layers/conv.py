"""Convolution building blocks: conv-norm-act, depthwise-separable, transposed, 1x1.

Every block keeps "same"-style padding by default: for odd kernels and stride s the output
size is ceil(H / s), following floor((H + 2p - d(k-1) - 1) / s + 1) with p = d(k-1)/2.
"""

from __future__ import annotations

from torch import Tensor, nn

from detkit.layers.fold import conv_norm_folded
from detkit.layers.norm import NormSpec, build_activation, build_norm


def same_padding(kernel_size: int, dilation: int = 1) -> int:
    """Padding that keeps the spatial size at stride 1 for an odd effective kernel."""
    effective = dilation * (kernel_size - 1) + 1
    if effective % 2 == 0:
        raise ValueError(f"'same' padding needs an odd effective kernel, got k={kernel_size}, d={dilation}")
    return (effective - 1) // 2


def conv_output_size(size: int, kernel_size: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Output length of a convolution: floor((H + 2p - d(k-1) - 1) / s + 1)."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never going below 90%.

    The rule of the MobileNet papers / reference code, so scaled widths match their checkpoints.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormAct(nn.Sequential):
    """Conv2d -> norm -> activation, with "same" padding unless `padding` is given.

    The conv has a bias only when no norm follows it (a norm's shift makes it redundant),
    unless `bias` is set explicitly. Sub-modules are named `conv`, `norm`, `act`; modules
    added after them (e.g. a ResNet stem's `pool`) run last, in order.

    With `fold_bn` (the default; read at each call), a fixed norm (frozen, or BatchNorm in eval
    mode) runs folded into the conv when no gradient is needed for their parameters: one
    convolution instead of three passes, same state dict, equal up to float rounding (see
    `detkit.layers.fold`). `fold_bn=False` keeps conv and norm as two ops.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        bias: bool | None = None,
        norm: NormSpec = "bn",
        act: str | None = "relu",
        fold_bn: bool = True,
    ):
        if padding is None:
            padding = same_padding(kernel_size, dilation)
        has_norm = norm not in (None, "none")
        if bias is None:
            bias = not has_norm
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
        self.norm = build_norm(norm, out_channels)
        self.act = build_activation(act)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.fold_bn = fold_bn

    def forward(self, x: Tensor) -> Tensor:
        out = conv_norm_folded(self.conv, self.norm, x) if self.fold_bn else None
        if out is None:
            out = self.norm(self.conv(x))
        for name, module in self._modules.items():
            if name not in ("conv", "norm"):
                out = module(out)
        return out


def conv1x1(in_channels: int, out_channels: int, *, stride: int = 1, bias: bool = True) -> nn.Conv2d:
    """Plain 1x1 projection (lateral connections, channel changes, prediction layers)."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias)


class SeparableConv(nn.Sequential):
    """Depthwise k x k conv (groups=in_channels) then pointwise 1x1, each with norm and act.

    Weights without bias: in*k*k + in*out (e.g. 3x3, 16 -> 32: 16*9 + 16*32 = 656).
    `pointwise_act` is separate because MobileNetV2's projection is linear.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        norm: NormSpec = "bn",
        act: str | None = "relu",
        pointwise_act: str | None = "same",
    ):
        super().__init__()
        self.depthwise = ConvNormAct(
            in_channels,
            in_channels,
            kernel_size,
            stride=stride,
            dilation=dilation,
            groups=in_channels,
            norm=norm,
            act=act,
        )
        self.pointwise = ConvNormAct(
            in_channels,
            out_channels,
            1,
            norm=norm,
            act=act if pointwise_act == "same" else pointwise_act,
        )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride


class UpsampleConvTranspose(nn.Sequential):
    """Transposed conv that multiplies spatial size by `scale` exactly (kernel = stride = scale), then act.

    Output size: (H - 1) * s - 2p + d(k-1) + output_padding + 1 = H * s for k = s, p = 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        scale: int = 2,
        norm: NormSpec = "none",
        act: str | None = "relu",
    ):
        super().__init__()
        has_norm = norm not in (None, "none")
        self.deconv = nn.ConvTranspose2d(in_channels, out_channels, scale, stride=scale, bias=not has_norm)
        self.norm = build_norm(norm, out_channels)
        self.act = build_activation(act)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """Interleave channels across groups (after a grouped conv, as in ShuffleNet)."""
    n, c, h, w = x.shape
    if c % groups:
        raise ValueError(f"channels ({c}) must be divisible by groups ({groups})")
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)
