"""Reading detkit checkpoints without the training stack: `torch.load(weights_only=True)` with clear
errors, and the detector a training checkpoint describes (`build_model_from_checkpoint`).

A training checkpoint (written by `detkit fit`) holds Lightning's entries (`state_dict` with the
detector under `model.`, `hyper_parameters`, ...) and detkit's own entry `checkpoint[STATS_KEY]`:
model name, class count, model arguments, class names, `{label: category id}` of the training
data and the selective-search settings of its proposals. Nothing here imports Lightning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from detkit.structures.label_map import LabelMap
from detkit.utils.checkpoint import STATS_KEY, load_checkpoint

__all__ = ["CheckpointInfo", "build_model_from_checkpoint", "checkpoint_info"]


@dataclass(frozen=True)
class CheckpointInfo:
    """What a detkit training checkpoint records besides the weights.

    `label_map` is the training data's label -> category id / name map (None for checkpoints
    written before detkit stored it); `class_names` the names as stored (None when not stored);
    `proposal_settings` the selective-search settings of the training proposals (None if not
    recorded); `keypoint_names` and `skeleton` (0-based index pairs) of a keypoint detector's training data
    (None when not recorded); `version` the detkit version that wrote the checkpoint ("" when not stored).
    `model_kwargs` are the builder's arguments without `backbone_weights` (the checkpoint holds
    all weights).
    """

    model_name: str
    num_classes: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    label_map: LabelMap | None = None
    proposal_settings: dict[str, Any] | None = None
    keypoint_names: list[str] | None = None
    skeleton: list[tuple[int, int]] | None = None
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
    for option in ("fold_bn", "cpu_kernels"):  # the kernel options of the run (DetectionModule arguments)
        if option in hparams:
            model_kwargs[option] = bool(hparams[option])
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
    keypoints = stats.get("keypoints") or {}
    return CheckpointInfo(
        model_name=str(model_name),
        num_classes=num_classes,
        model_kwargs=model_kwargs,
        class_names=class_names,
        label_map=label_map,
        proposal_settings=dict(proposals) if proposals else None,
        keypoint_names=[str(n) for n in keypoints["names"]] if keypoints.get("names") else None,
        skeleton=[(int(a), int(b)) for a, b in keypoints["skeleton"]] if keypoints.get("names") else None,
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
