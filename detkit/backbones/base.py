"""The backbone contract: named feature maps plus their declared channels and strides.

Shape shorthand: N images, C channels, H x W input size; a feature of stride s has spatial
size ceil(H / s) x ceil(W / s) (exactly H / s for inputs divisible by the largest stride).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

from torch import Tensor, nn

from detkit.layers import freeze_module

__all__ = ["Backbone", "FeatureSpec", "StagedBackbone"]


class FeatureSpec(NamedTuple):
    """Channels and stride (input pixels per feature-map cell) of one feature map."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class of every detkit backbone.

    `forward(images: Tensor[N, 3, H, W])` returns an OrderedDict name -> Tensor[N, C, h, w]
    holding exactly `out_features`, in order of increasing stride. `feature_specs()`
    declares the same names with their `FeatureSpec`, without running a forward, so that
    heads can size themselves from it.
    """

    #: torchvision architecture whose checkpoints this backbone can load ("resnet50",
    #: "vgg16_bn", ...), or None. Used by `detkit.backbones.weights`.
    torchvision_arch: str | None = None

    @property
    def out_features(self) -> tuple[str, ...]:
        return tuple(self.feature_specs())

    def feature_specs(self) -> OrderedDict[str, FeatureSpec]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        raise NotImplementedError


class StagedBackbone(Backbone):
    """A backbone made of stages run one after the other (stem, c2, c3, ...).

    Subclasses create their stages with `add_stage` (in order) and then call `finalize`.
    Each stage is a child module named after its feature ("c2" has stride 4, ...). A stage
    registered with `is_feature=False` (e.g. the ResNet "stem") cannot be selected as an
    output. Stages after the last selected output are never run, so `finalize` removes
    them (their checkpoint keys are skipped on load, see `pruned_stages`).

    `freeze_at=k` freezes the first k stages (the stem counts as the first one): their
    parameters get requires_grad=False and their BatchNorms become FrozenBatchNorm2d.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stage_names: list[str] = []
        self._stage_specs: OrderedDict[str, FeatureSpec] = OrderedDict()
        self._feature_stages: list[str] = []
        self._out_features: tuple[str, ...] = ()
        self.pruned_stages: tuple[str, ...] = ()
        self.freeze_at = 0

    def add_stage(self, name: str, module: nn.Module, spec: FeatureSpec, *, is_feature: bool = True) -> None:
        if name in self._stage_specs:
            raise ValueError(f"duplicate stage name {name!r}")
        if self._stage_specs and spec.stride < next(reversed(self._stage_specs.values())).stride:
            raise ValueError(f"stage {name!r} has a smaller stride than the stage before it")
        self.add_module(name, module)
        self._stage_names.append(name)
        self._stage_specs[name] = spec
        if is_feature:
            self._feature_stages.append(name)

    def finalize(self, out_features: Sequence[str] | None, default: Sequence[str], freeze_at: int) -> None:
        """Select the outputs, drop unused trailing stages and freeze the first `freeze_at` stages."""
        if isinstance(out_features, str):
            raise TypeError(f"out_features must be a sequence of names, got the string {out_features!r}")
        selected = tuple(default if out_features is None else out_features)
        if not selected:
            raise ValueError("out_features must name at least one feature")
        unknown = [f for f in selected if f not in self._feature_stages]
        if unknown:
            raise ValueError(
                f"unknown out_features {unknown} for {type(self).__name__}; available: {self._feature_stages}"
            )
        if len(set(selected)) != len(selected):
            raise ValueError(f"out_features has duplicates: {list(selected)}")
        # keep the order of increasing stride, whatever order the caller used
        self._out_features = tuple(f for f in self._feature_stages if f in selected)
        last = max(self._stage_names.index(f) for f in self._out_features)
        self.pruned_stages = tuple(self._stage_names[last + 1 :])
        for name in self.pruned_stages:
            delattr(self, name)
        self._stage_names = self._stage_names[: last + 1]
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Freeze the first `freeze_at` stages (0 = nothing, 1 = stem, 2 = stem + next stage...)."""
        total = len(self._stage_specs)
        if not 0 <= freeze_at <= total:
            raise ValueError(f"freeze_at must be in [0, {total}] for {type(self).__name__}, got {freeze_at}")
        for name in list(self._stage_specs)[:freeze_at]:
            if name in self._stage_names:
                setattr(self, name, freeze_module(getattr(self, name)))
        self.freeze_at = max(self.freeze_at, freeze_at)

    def feature_specs(self) -> OrderedDict[str, FeatureSpec]:
        return OrderedDict((name, self._stage_specs[name]) for name in self._out_features)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        outputs: OrderedDict[str, Tensor] = OrderedDict()
        for name in self._stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs
