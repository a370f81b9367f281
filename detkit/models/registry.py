"""Model registry: named builder functions (`build_model("faster_rcnn_r50_fpn", num_classes=3)`).

A builder is a callable ``builder(*, num_classes, **overrides) -> nn.Module``. Third-party
packages add detectors without touching detkit through the "detkit.models" entry-point group,
as backbones do through "detkit.backbones" (see `detkit.utils.registry.Registry`, the class
both registries are)::

    [options.entry_points]
    detkit.models =
        my_detector = my_package.models:build_my_detector
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from os import PathLike

from torch import nn

from detkit.utils.registry import Registry

ENTRY_POINT_GROUP = "detkit.models"

Builder = Callable[..., nn.Module]

#: every model builder, by name
MODELS: Registry[nn.Module] = Registry("model", nn.Module, entry_point_group=ENTRY_POINT_GROUP)


def register_model(name: str, *, overwrite: bool = False) -> Callable[[Builder], Builder]:
    """Decorator registering `builder(*, num_classes, **overrides) -> nn.Module` under `name`
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


def build_model(
    name: str,
    *,
    num_classes: int,
    weights: str | PathLike | None = None,
    class_names: Sequence[str] | None = None,
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
        overrides: keyword arguments of the builder (e.g. `min_size`, `backbone_weights`).
    """
    MODELS.get(name)  # an unknown name is the first error, whatever num_classes is
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
    return model
