"""Reading detkit checkpoints without the training stack: `torch.load(weights_only=True)` with clear
errors, and the detector a training checkpoint describes (`build_model_from_checkpoint`).

A training checkpoint (written by `detkit fit`) holds Lightning's entries (`state_dict` with the
detector under `model.`, `hyper_parameters`, ...) and detkit's own entry `checkpoint[STATS_KEY]`:
model name, class count, model arguments, class names, `{label: category id}` of the training
data and the selective-search settings of its proposals. Nothing here imports Lightning.
"""

from __future__ import annotations

import os
import pickle
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from detkit.structures.label_map import LabelMap

__all__ = [
    "STATS_KEY",
    "CheckpointInfo",
    "CheckpointReadError",
    "UnsafeCheckpointError",
    "build_model_from_checkpoint",
    "checkpoint_info",
    "load_checkpoint",
]

STATS_KEY = "detkit"  # detkit's checkpoint entry: class names and how to rebuild the detector


class UnsafeCheckpointError(RuntimeError, ValueError):
    """A checkpoint holds objects that `torch.load(weights_only=True)` refuses to unpickle."""


class CheckpointReadError(RuntimeError, ValueError):
    """A file that is not a torch checkpoint at all (random bytes, a truncated file, text)."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with clear errors.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: torch's weights-only unpickler refused a global (a class or function
            pickled by reference); the file is never loaded unsafely.
        CheckpointReadError: the file is not a torch checkpoint (corrupt, truncated, another format).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of non-torch pickles
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL " in ln), None)
        if refused is None:  # e.g. "Unsupported operand": bytes that are no torch pickle
            raise CheckpointReadError(f"{path}: not a torch checkpoint ({_unpickler_reason(e)})") from None
        raise UnsafeCheckpointError(
            f"{path}: torch.load(weights_only=True) refused this checkpoint "
            f"({refused.removeprefix('WeightsUnpickler error: ').split('. ')[0]}). detkit never falls back to "
            "unsafe unpickling. If you trust the file, load it yourself with weights_only=False and re-save "
            "only tensors, numbers, strings, lists and dicts."
        ) from None
    except Exception as e:  # truncated / corrupt files raise many kinds of errors
        raise CheckpointReadError(f"{path}: not a torch checkpoint ({type(e).__name__}: {_first_line(e)})") from None


def _unpickler_reason(e: BaseException) -> str:
    """The weights-only unpickler's own reason (torch wraps it in paragraphs of advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    after = [ln for i, ln in enumerate(lines) if i and "WeightsUnpickler error" in lines[i - 1]]
    return (after or [ln for ln in lines if ln.startswith("Unsupported")] or [_first_line(e)])[0]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass(frozen=True)
class CheckpointInfo:
    """What a detkit training checkpoint records besides the weights.

    `label_map` is the training data's label -> category id / name map (None for checkpoints
    written before detkit stored it); `class_names` the names as stored (None when not stored);
    `proposal_settings` the selective-search settings of the training proposals (None if not
    recorded); `version` the detkit version that wrote the checkpoint ("" when not stored).
    `model_kwargs` are the builder's arguments without `backbone_weights` (the checkpoint holds
    all weights).
    """

    model_name: str
    num_classes: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    label_map: LabelMap | None = None
    proposal_settings: dict[str, Any] | None = None
    version: str = ""


def checkpoint_info(checkpoint: dict[str, Any], source: str = "checkpoint") -> CheckpointInfo:
    """`CheckpointInfo` of a loaded training checkpoint; ValueError naming `source` when it is not one."""
    stats = checkpoint.get(STATS_KEY) or {}
    hparams = checkpoint.get("hyper_parameters") or {}
    model_name = stats.get("model_name", hparams.get("model_name"))
    num_classes = stats.get("num_classes", hparams.get("num_classes"))
    if model_name is None or num_classes is None or "state_dict" not in checkpoint:
        raise ValueError(f"{source}: not a detkit training checkpoint (no model name / num_classes / state_dict)")
    num_classes = int(num_classes)
    model_kwargs = dict(stats.get("model_kwargs", hparams.get("model_kwargs")) or {})
    model_kwargs.pop("backbone_weights", None)
    class_names = list(stats["class_names"]) if stats.get("class_names") else None
    label_map = None
    if stats.get("label_to_category_id"):
        mapping = {int(k): int(v) for k, v in dict(stats["label_to_category_id"]).items()}
        if sorted(mapping) != list(range(1, num_classes + 1)):
            raise ValueError(f"{source}: label_to_category_id does not cover labels 1..{num_classes}: {mapping}")
        try:
            label_map = LabelMap.from_label_to_category_id(mapping, class_names)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
    proposals = stats.get("proposals")
    return CheckpointInfo(
        model_name=str(model_name),
        num_classes=num_classes,
        model_kwargs=model_kwargs,
        class_names=class_names,
        label_map=label_map,
        proposal_settings=dict(proposals) if proposals else None,
        version=str(stats.get("version", "")),
    )


def build_model_from_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """The eval-mode detector of a detkit training checkpoint (read with weights_only=True) and what
    the checkpoint records about it."""
    from detkit.models import build_model

    checkpoint = load_checkpoint(path, map_location=map_location)
    info = checkpoint_info(checkpoint, os.fspath(path))
    model = build_model(info.model_name, num_classes=info.num_classes, **info.model_kwargs)
    state = {k[len("model.") :]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{os.fspath(path)}: checkpoint does not match {info.model_name}: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    return model.eval(), info
