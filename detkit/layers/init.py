"""Weight initialisation helpers, applied by module type.

Each `init_*` function initialises the weights of every Conv / ConvTranspose / Linear
module inside `module` (biases to `bias`) and leaves norm layers at weight 1 / bias 0.
"""

from __future__ import annotations

import math

from torch import nn

_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


def _weighted_modules(module: nn.Module, types=_WEIGHTED):
    return [m for m in module.modules() if isinstance(m, types)]


def _init_bias(m: nn.Module, bias: float) -> None:
    if getattr(m, "bias", None) is not None:
        nn.init.constant_(m.bias, bias)


def xavier_init(module: nn.Module, *, distribution: str = "uniform", gain: float = 1.0, bias: float = 0.0) -> nn.Module:
    """Glorot init: std = gain * sqrt(2 / (fan_in + fan_out)); "uniform" or "normal"."""
    fn = {"uniform": nn.init.xavier_uniform_, "normal": nn.init.xavier_normal_}.get(distribution)
    if fn is None:
        raise ValueError(f"distribution must be 'uniform' or 'normal', got {distribution!r}")
    for m in _weighted_modules(module):
        fn(m.weight, gain=gain)
        _init_bias(m, bias)
    return module


def kaiming_init(
    module: nn.Module,
    *,
    mode: str = "fan_out",
    nonlinearity: str = "relu",
    distribution: str = "normal",
    bias: float = 0.0,
) -> nn.Module:
    """He init for ReLU nets: std = sqrt(2 / fan) with fan = fan_in or fan_out."""
    fn = {"uniform": nn.init.kaiming_uniform_, "normal": nn.init.kaiming_normal_}.get(distribution)
    if fn is None:
        raise ValueError(f"distribution must be 'uniform' or 'normal', got {distribution!r}")
    for m in _weighted_modules(module):
        fn(m.weight, mode=mode, nonlinearity=nonlinearity)
        _init_bias(m, bias)
    return module


def normal_init(module: nn.Module, *, std: float = 0.01, mean: float = 0.0, bias: float = 0.0) -> nn.Module:
    """Gaussian init with a fixed std (detection heads: 0.01 for classifiers, 0.001 for box deltas)."""
    for m in _weighted_modules(module):
        nn.init.normal_(m.weight, mean=mean, std=std)
        _init_bias(m, bias)
    return module


def init_norms(module: nn.Module) -> nn.Module:
    """Affine norm layers to weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


def prior_probability_bias(prior: float) -> float:
    """Bias for a sigmoid classifier so its initial probability is `prior` (focal-loss init)."""
    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be in (0, 1), got {prior}")
    return -math.log((1.0 - prior) / prior)
