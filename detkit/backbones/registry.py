"""Backbone variants by name: built-in builders plus plugins from the "detkit.backbones" entry points.

A builder is a callable ``builder(*, out_features=None, freeze_at=0, norm=None, **kwargs) ->
Backbone`` where ``norm=None`` means "the variant's default". Third-party packages add
builders without touching detkit by declaring an entry point, e.g. in their setup.cfg::

    [options.entry_points]
    detkit.backbones =
        tiny_net = my_package.backbones:build_tiny_net

Entry points are discovered once, on the first lookup, and imported only when built. The
registry is a `detkit.utils.registry.Registry`, the class the model registry uses too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from os import PathLike
from typing import Any

from detkit.backbones.base import Backbone
from detkit.backbones.weights import load_backbone_weights
from detkit.utils.registry import Registry

ENTRY_POINT_GROUP = "detkit.backbones"
"""The entry-point group through which installed packages add backbone builders."""

Builder = Callable[..., Backbone]

#: every backbone builder, by name
BACKBONES: Registry[Backbone] = Registry("backbone", Backbone, entry_point_group=ENTRY_POINT_GROUP)


def register_backbone(name: str, *, overwrite: bool = False) -> Callable[[Builder], Builder]:
    """Decorator registering `builder` under `name` (ValueError if taken, unless `overwrite`)."""
    return BACKBONES.register(name, overwrite=overwrite)


def unregister_backbone(name: str) -> None:
    """Remove a registered builder (KeyError if absent); mostly for tests."""
    BACKBONES.unregister(name)


def list_backbones() -> list[str]:
    """Sorted names of all buildable backbones (registered and entry-point plugins)."""
    return BACKBONES.names()


def get_builder(name: str) -> Builder:
    """The builder registered as `name`; plugins are imported here. ValueError if unknown."""
    return BACKBONES.get(name)


def build_backbone(
    name: str,
    *,
    weights: str | PathLike | Mapping[str, Any] | None = None,
    out_features: Sequence[str] | None = None,
    freeze_at: int = 0,
    norm: Any = None,
    **kwargs: Any,
) -> Backbone:
    """Build the backbone registered as `name`.

    Args:
        name: a name from `list_backbones()`.
        weights: path to a torchvision ImageNet checkpoint or a detkit backbone checkpoint
            (or an already loaded state dict); see `detkit.backbones.weights.load_backbone_weights`.
        out_features: feature names to return (default: the variant's set).
        freeze_at: number of leading stages to freeze (1 = stem).
        norm: "bn", "frozen_bn", "gn", ...; None keeps the variant's default.
        **kwargs: variant-specific arguments (e.g. `width_mult` for MobileNets).
    """
    backbone = BACKBONES.build(name, out_features=out_features, freeze_at=freeze_at, norm=norm, **kwargs)
    if weights is not None:
        load_backbone_weights(backbone, weights)
    return backbone
