"""Normalisation and activation factories.

`norm` arguments across detkit accept a name ("bn", "gn", "frozen_bn", "none"), a
``(name, kwargs)`` tuple such as ``("gn", {"num_groups": 16})``, or a callable
``channels -> nn.Module``.
"""

from __future__ import annotations

from typing import Callable, Union

from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

NormSpec = Union[str, tuple, Callable[[int], nn.Module], None]
"""What a `norm` argument accepts: a name ("bn", "gn", "frozen_bn", "none"), a `(name, kwargs)` tuple,
a callable `channels -> nn.Module`, or None (no norm)."""

_NORM_NAMES = ("bn", "gn", "frozen_bn", "none")
_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "gelu": lambda: nn.GELU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "sigmoid": lambda: nn.Sigmoid(),
    "tanh": lambda: nn.Tanh(),
    "none": lambda: nn.Identity(),
}


class LeanFrozenBatchNorm2d(FrozenBatchNorm2d):
    """torchvision's FrozenBatchNorm2d (same buffers, state dict and results, bit for bit) with
    a forward of 9 dispatched ops instead of 11: each is a kernel launch on a GPU, and a
    ResNet-50 has 53 of these layers. Inputs `Tensor[N, C, H, W]`."""

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(-1, 1, 1) + shift.view(-1, 1, 1)


def build_norm(norm: NormSpec, channels: int) -> nn.Module:
    """Return a 2-D normalisation layer for `channels` channels (Identity for "none")."""
    if norm is None:
        return nn.Identity()
    if callable(norm) and not isinstance(norm, str):
        return norm(channels)
    kwargs = {}
    if isinstance(norm, tuple):
        norm, kwargs = norm[0], dict(norm[1])  # copy: the spec is reused for every layer
    if norm == "bn":
        return nn.BatchNorm2d(channels, **kwargs)
    if norm == "frozen_bn":
        return LeanFrozenBatchNorm2d(channels, **kwargs)
    if norm == "gn":
        num_groups = kwargs.pop("num_groups", 32)
        num_groups = _largest_divisor_at_most(channels, num_groups)
        return nn.GroupNorm(num_groups, channels, **kwargs)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; expected one of {_NORM_NAMES} or a callable")


def _largest_divisor_at_most(channels: int, groups: int) -> int:
    """GroupNorm needs groups | channels: use the largest divisor of channels <= groups."""
    groups = max(1, min(groups, channels))
    while channels % groups:
        groups -= 1
    return groups


def build_activation(act: str | Callable[[], nn.Module] | None) -> nn.Module:
    """Return an activation module by name ("relu", "silu", ...), a factory's output or Identity."""
    if act is None:
        return nn.Identity()
    if callable(act) and not isinstance(act, str):
        return act()
    try:
        return _ACTIVATIONS[act]()
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; expected one of {sorted(_ACTIVATIONS)}") from None


def is_norm(module: nn.Module) -> bool:
    """True for every normalisation layer detkit builds (used for weight decay and freezing)."""
    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, FrozenBatchNorm2d))


def freeze_module(module: nn.Module) -> nn.Module:
    """Stop gradients for `module` and keep its BatchNorms in eval mode with fixed statistics.

    BatchNorm layers are replaced by FrozenBatchNorm2d so that a later `.train()` call
    cannot update their running statistics.
    """
    for p in module.parameters():
        p.requires_grad_(False)
    return convert_frozen_batchnorm(module)


def convert_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Recursively replace BatchNorm2d with FrozenBatchNorm2d, copying statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        if module.track_running_stats:
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        new_child = convert_frozen_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
