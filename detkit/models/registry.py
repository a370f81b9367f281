"""Model registry: named builder functions (`build_model("faster_rcnn_r50_fpn", num_classes=3)`)."""

from __future__ import annotations

from typing import Callable

from torch import nn

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable:
    """Decorator registering `builder(*, num_classes, **overrides) -> nn.Module` under `name`."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = builder
        return builder

    return wrap


def list_models() -> list[str]:
    """Names accepted by `build_model`, sorted."""
    return sorted(_MODELS)


def build_model(name: str, *, num_classes: int, weights: str | None = None, **overrides) -> nn.Module:
    """Build a registered detector.

    Args:
        name: a name from `list_models()`.
        num_classes: number of object classes, background excluded.
        weights: optional checkpoint path: a detkit checkpoint, a Lightning checkpoint of a
            detkit model, or a torchvision detection state dict of the same architecture
            (see `detkit.models.weights`). Loaded with `torch.load(weights_only=True)`.
        overrides: keyword arguments of the builder (e.g. `min_size`, `backbone_weights`).
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (background excluded), got {num_classes!r}")
    model = _MODELS[name](num_classes=num_classes, **overrides)
    if weights is not None:
        from detkit.models.weights import load_detector_weights

        load_detector_weights(model, weights, arch=name)
    return model
