"""Backbone variants by name: built-in builders plus plugins from the "detkit.backbones" entry points.

A builder is a callable ``builder(*, out_features=None, freeze_at=0, norm=None, **kwargs) ->
Backbone`` where ``norm=None`` means "the variant's default". Third-party packages add
builders without touching detkit by declaring an entry point, e.g. in their setup.cfg::

    [options.entry_points]
    detkit.backbones =
        tiny_net = my_package.backbones:build_tiny_net

Entry points are discovered once, on the first lookup, and imported only when built.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import EntryPoint, entry_points
from os import PathLike
from typing import Any

from detkit.backbones.base import Backbone
from detkit.backbones.weights import load_backbone_weights

ENTRY_POINT_GROUP = "detkit.backbones"

Builder = Callable[..., Backbone]

_BUILTINS: dict[str, Builder] = {}
_PLUGINS: dict[str, EntryPoint] | None = None  # discovered lazily


def register_backbone(name: str, *, overwrite: bool = False) -> Callable[[Builder], Builder]:
    """Decorator registering `builder` under `name` (ValueError if taken, unless `overwrite`)."""

    def decorator(builder: Builder) -> Builder:
        if not callable(builder):
            raise TypeError(f"backbone builder for {name!r} must be callable, got {builder!r}")
        if name in _BUILTINS and not overwrite:
            raise ValueError(f"backbone {name!r} is already registered")
        _BUILTINS[name] = builder
        return builder

    return decorator


def unregister_backbone(name: str) -> None:
    """Remove a registered builder (KeyError if absent); mostly for tests."""
    del _BUILTINS[name]


def _plugins(refresh: bool = False) -> dict[str, EntryPoint]:
    global _PLUGINS
    if _PLUGINS is None or refresh:
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in _BUILTINS:
                warnings.warn(
                    f"entry point {ep.value!r} of group {ENTRY_POINT_GROUP!r} reuses the registered "
                    f"backbone name {ep.name!r}; it is ignored",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            found[ep.name] = ep
        _PLUGINS = found
    return _PLUGINS


def list_backbones() -> list[str]:
    """Sorted names of all buildable backbones (registered and entry-point plugins)."""
    return sorted(set(_BUILTINS) | set(_plugins()))


def get_builder(name: str) -> Builder:
    """The builder registered as `name`; plugins are imported here. ValueError if unknown."""
    if name in _BUILTINS:
        return _BUILTINS[name]
    plugins = _plugins()
    if name not in plugins:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(list_backbones())}")
    builder = plugins[name].load()
    if not callable(builder):
        raise TypeError(f"entry point {plugins[name].value!r} for backbone {name!r} is not callable")
    return builder


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
    builder = get_builder(name)
    backbone = builder(out_features=out_features, freeze_at=freeze_at, norm=norm, **kwargs)
    if not isinstance(backbone, Backbone):
        raise TypeError(f"builder of backbone {name!r} returned {type(backbone).__name__}, not a Backbone")
    if weights is not None:
        load_backbone_weights(backbone, weights)
    return backbone
