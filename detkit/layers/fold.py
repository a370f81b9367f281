"""A convolution followed by a fixed batch norm, run as one convolution.

A frozen batch norm (torchvision's `FrozenBatchNorm2d`, detkit's `LeanFrozenBatchNorm2d`) or a
`BatchNorm2d` in eval mode is an affine map per channel, `y = x * s + t` with
`s = weight / sqrt(running_var + eps)` and `t = bias - running_mean * s`. After a convolution it
folds into the convolution's weights: `conv(x, W * s, b * s + t)`. That removes two passes over
the feature map per layer (53 layers in a ResNet-50: ~10% of a CPU predict at 800 x 1216, and
9 of the ~20 ops each layer dispatches, i.e. 9 kernel launches on a GPU).

The module's parameters and state dict do not change: the folded weight and bias are computed
on first use and cached per convolution, checked against the identity, storage and version
counter of every source tensor, so loading a state dict, an optimiser step or `.to()` makes the
next call fold again. The cache holds one extra copy of the folded convolutions' weights (~94 MB for a
ResNet-50 in float32) and is dropped with the module.

Folding is used only where it gives the same function:
- no gradient is needed for the convolution's or the norm's parameters (inference, or frozen
  stages during training; a trainable layer keeps the two ops and its exact gradients);
- eager mode (tracing, ONNX export, TorchScript and `torch.compile` see the two plain ops).

The layer that folds (`ConvNormAct`) has the option `fold_bn` (default True; False keeps the
two ops); `detkit.models.configure_kernels` sets it across a model.

The results equal the unfolded layers up to float rounding: the products `W * s` are rounded
once instead of the convolution's output being scaled. Through a ResNet-50-FPN detector with
random weights detection scores move by ~1e-4, the same as converting the model to channels-last
memory format moves torchvision's own scores.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from detkit.utils.eager import eager_mode

__all__ = ["conv_norm_folded", "folded_conv_parameters"]

# conv -> (what the fold was made from, folded weight, folded bias); weak on the conv: dropped with it
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _norm_statistics(norm: nn.Module) -> tuple[Tensor | None, Tensor | None, Tensor, Tensor, float] | None:
    """(weight, bias, running_mean, running_var, eps) of a norm that is a fixed affine map, else None."""
    if isinstance(norm, FrozenBatchNorm2d):
        return norm.weight, norm.bias, norm.running_mean, norm.running_var, float(norm.eps)
    if (
        type(norm) is nn.BatchNorm2d
        and not norm.training
        and norm.track_running_stats
        and norm.running_mean is not None
        and norm.running_var is not None
    ):
        return norm.weight, norm.bias, norm.running_mean, norm.running_var, float(norm.eps)
    return None


def folded_conv_parameters(conv: nn.Conv2d, norm: nn.Module) -> tuple[Tensor, Tensor] | None:
    """The weight and bias of one convolution equal to `norm(conv(x))`, or None when `norm` is not a
    fixed affine map (a training-mode BatchNorm, GroupNorm, ...). Computed in float32 at least,
    returned in the convolution weight's dtype, without gradients."""
    stats = _norm_statistics(norm)
    if stats is None:
        return None
    norm_weight, norm_bias, mean, var, eps = stats
    with torch.no_grad():
        dtype = torch.promote_types(conv.weight.dtype, torch.float32)
        scale = (var.to(dtype) + eps).rsqrt()
        if norm_weight is not None:
            scale = scale * norm_weight.to(dtype)
        shift = -mean.to(dtype) * scale
        if norm_bias is not None:
            shift = shift + norm_bias.to(dtype)
        if conv.bias is not None:
            shift = shift + conv.bias.to(dtype) * scale
        weight = conv.weight.to(dtype) * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
        return weight.to(conv.weight.dtype), shift.to(conv.weight.dtype)


def _sources(conv: nn.Conv2d, norm: nn.Module) -> list[Tensor]:
    names = ("weight", "bias", "running_mean", "running_var")
    tensors = [conv.weight, conv.bias] + [getattr(norm, name, None) for name in names]
    return [t for t in tensors if t is not None]


def _source_state(sources: list[Tensor], norm: nn.Module) -> tuple:
    """What the folded parameters were computed from: each source tensor (weakly: a replaced
    tensor counts as changed), its storage and its version counter (in-place writes), and eps."""
    return float(norm.eps), tuple((weakref.ref(t), t.data_ptr(), t._version) for t in sources)


def _still_valid(state: tuple, sources: list[Tensor], norm: nn.Module) -> bool:
    eps, entries = state
    return (
        eps == float(norm.eps)
        and len(entries) == len(sources)
        and all(
            ref() is t and ptr == t.data_ptr() and version == t._version
            for (ref, ptr, version), t in zip(entries, sources)
        )
    )


def conv_norm_folded(conv: nn.Module, norm: nn.Module, x: Tensor) -> Tensor | None:
    """`norm(conv(x))` computed as one convolution with cached folded parameters, or None when
    folding does not apply here (see the module docstring); the caller then runs the two ops."""
    if (
        type(conv) is not nn.Conv2d
        or conv.padding_mode != "zeros"
        or not eager_mode()
        or _norm_statistics(norm) is None
    ):
        return None
    sources = _sources(conv, norm)
    if torch.is_grad_enabled() and any(t.requires_grad for t in sources):  # a gradient for the parameters
        return None
    cached = _CACHE.get(conv)
    if cached is None or not _still_valid(cached[0], sources, norm):
        try:
            state = _source_state(sources, norm)
        except RuntimeError:  # inference tensors have no version counter: nothing to cache against
            return None
        with torch.inference_mode(False):  # normal tensors, usable outside inference mode too
            folded = folded_conv_parameters(conv, norm)
        if folded is None:
            return None
        cached = (state, *folded)
        _CACHE[conv] = cached
    _, weight, bias = cached
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
