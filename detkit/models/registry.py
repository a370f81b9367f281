"""Model registry: named builder functions (`build_model("faster_rcnn_r50_fpn", num_classes=3)`).

A builder is a callable ``builder(*, num_classes, <keywords>) -> nn.Module`` whose keyword-only
parameters are the model's keywords; a ``**kwargs: Unpack[SomeTypedDict]`` parameter adds the
TypedDict's keys, with the defaults of the function `register_keywords` names for it.
`model_keywords(name)` lists them; `build_model` refuses any other keyword. Third-party
packages add detectors without touching detkit through the "detkit.models" entry-point group,
as backbones do through "detkit.backbones" (see `detkit.utils.registry.Registry`, the class
both registries are)::

    [options.entry_points]
    detkit.models =
        my_detector = my_package.models:build_my_detector
"""

from __future__ import annotations

import difflib
import inspect
import typing
from collections.abc import Callable, Sequence
from os import PathLike
from typing import Any

from torch import nn

from detkit.models.kernels import configure_kernels
from detkit.utils.registry import Registry

ENTRY_POINT_GROUP = "detkit.models"

Builder = Callable[..., nn.Module]

#: every model builder, by name
MODELS: Registry[nn.Module] = Registry("model", nn.Module, entry_point_group=ENTRY_POINT_GROUP)


#: the function whose keyword defaults stand for each TypedDict of a builder's `**kwargs: Unpack[...]`
_KEYWORD_SOURCES: dict[type, Callable[..., Any]] = {}


def register_model(name: str, *, overwrite: bool = False) -> Callable[[Builder], Builder]:
    """Decorator registering `builder(*, num_classes, <keywords>) -> nn.Module` under `name`
    (ValueError if taken, unless `overwrite`)."""
    return MODELS.register(name, overwrite=overwrite)


def unregister_model(name: str) -> None:
    """Remove a registered builder (KeyError if absent); mostly for tests."""
    MODELS.unregister(name)


def list_models() -> list[str]:
    """Names accepted by `build_model` (registered and entry-point plugins), sorted."""
    return MODELS.names()


def get_model_builder(name: str) -> Builder:
    """The builder registered as `name`; plugins are imported here. ValueError if unknown."""
    return MODELS.get(name)


def register_keywords(keywords: type, source: Callable[..., Any]) -> None:
    """Declare that a builder's `**kwargs: Unpack[keywords]` (a TypedDict) reach `source`, whose signature
    gives their defaults to `model_keywords`. TypeError if a key of `keywords` is not a keyword of `source`."""
    taken, _ = _keywords(source)
    missing = [key for key in keywords.__annotations__ if key not in taken]
    if missing:
        raise TypeError(f"{keywords.__name__} has keys {missing} that {source.__qualname__} does not take")
    _KEYWORD_SOURCES[keywords] = source


def _keywords(function: Callable[..., Any]) -> tuple[dict[str, Any], bool]:
    """The keyword-only parameters of `function` with their defaults (`inspect.Parameter.empty` if
    required), a `**kwargs: Unpack[TD]` resolved through `register_keywords`; and whether `function` takes
    any other keyword (a `**kwargs` untyped or typed by a TypedDict `register_keywords` does not know)."""
    found: dict[str, Any] = {}
    takes_any = False
    for param in inspect.signature(function).parameters.values():
        if param.kind is inspect.Parameter.KEYWORD_ONLY:
            found[param.name] = param.default
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            typed_dict = _unpacked(function.__init__ if isinstance(function, type) else function, param.name)
            if typed_dict not in _KEYWORD_SOURCES:
                takes_any = True
                continue
            defaults, _ = _keywords(_KEYWORD_SOURCES[typed_dict])
            found.update({key: value for key, value in defaults.items() if key in typed_dict.__annotations__})
    return found, takes_any


def _unpacked(function: Callable[..., Any], name: str) -> type | None:
    """The TypedDict of `function`'s `**name: Unpack[TD]`; None if untyped or if the annotation does not evaluate."""
    try:
        hint = typing.get_type_hints(function).get(name)
    except (NameError, TypeError):
        return None
    return typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Unpack else None


def model_keywords(name: str) -> dict[str, Any]:
    """The keywords the builder of `name` takes besides `num_classes`, each with the model's default
    (`inspect.Parameter.empty`: required); `build_model(name, ...)` refuses any other.

    A builder (a plugin's) with an untyped `**kwargs` may take more: `build_model` then leaves the
    checking to it. ValueError if `name` is unknown.
    """
    keywords, _ = _keywords(get_model_builder(name))
    keywords.pop("num_classes", None)
    return keywords


def _check_keywords(name: str, keywords: Sequence[str]) -> None:
    """TypeError, one line naming the model `name`, the first of `keywords` its builder does not take
    (and the closest one it takes) and the keywords it takes."""
    taken, takes_any = _keywords(get_model_builder(name))
    taken.pop("num_classes", None)
    if takes_any:
        return
    for key in keywords:
        if key not in taken:
            close = difflib.get_close_matches(key, list(taken), n=1, cutoff=0.85)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(
                f"model {name!r} takes no keyword {key!r}{hint}; its keywords: {', '.join(taken)} "
                f"(defaults: detkit.models.model_keywords({name!r}))"
            )


def build_model(
    name: str,
    *,
    num_classes: int,
    weights: str | PathLike | None = None,
    class_names: Sequence[str] | None = None,
    fold_bn: bool = True,
    cpu_kernels: bool = True,
    **overrides,
) -> nn.Module:
    """Build a registered detector.

    Args:
        name: a name from `list_models()`.
        num_classes: number of object classes, background excluded.
        weights: optional checkpoint path: a detkit checkpoint, a Lightning checkpoint of a
            detkit model, or a torchvision detection state dict of the same architecture
            (see `detkit.models.weights`). Loaded with `torch.load(weights_only=True)`. A
            checkpoint with other classes fine-tunes: everything but the class-specific layers
            is loaded, their rows are carried over for the classes it shares (see
            `load_detector_weights`), and one warning says what was re-initialised.
        class_names: the `num_classes` class names in label order, matched (exactly, after
            `strip()`) with the names the checkpoint records to carry over the rows of shared classes.
        fold_bn, cpu_kernels: the kernel options (`detkit.models.configure_kernels`): the defaults
            run detkit's fast CPU kernels; False runs torchvision's / CUDA's arithmetic on the CPU.
        overrides: keywords of the builder (e.g. `min_size`, `backbone_weights`): those
            `model_keywords(name)` lists; any other is a TypeError naming it and the model.
    """
    MODELS.get(name)  # an unknown name is the first error, whatever num_classes is
    _check_keywords(name, list(overrides))
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (background excluded), got {num_classes!r}")
    if class_names is not None and (isinstance(class_names, str) or len(class_names) != num_classes):
        raise ValueError(
            f"class_names must be a list of num_classes={num_classes} names in label order, got {class_names!r}"
        )
    model = MODELS.build(name, num_classes=num_classes, **overrides)
    if weights is not None:
        from detkit.models.weights import load_detector_weights

        load_detector_weights(model, weights, arch=name, class_names=class_names)
    return configure_kernels(model, fold_bn=fold_bn, cpu_kernels=cpu_kernels)
