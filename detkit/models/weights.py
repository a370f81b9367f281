"""Loading detector weights: detkit / Lightning checkpoints and torchvision detection checkpoints.

torchvision's `fasterrcnn_resnet50_fpn` / `maskrcnn_resnet50_fpn` state dicts (COCO, 91
classes including background -> `num_classes=90` here) and `keypointrcnn_resnet50_fpn` (person
and background -> `num_classes=1`, 17 keypoints) map onto detkit's modules with the explicit
key maps below. Everything is read with `torch.load(weights_only=True)`.

Fine-tuning to other classes: the class-specific parameters a model declares
(`Detector.class_rows()`: class logits, class-specific box deltas, mask logits) may differ
in their class rows; every other parameter must fit exactly. Rows of classes the checkpoint
shares with the model (by name) are carried over, the others keep the model's initialisation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from os import PathLike, fspath
from typing import Any

from torch import Tensor, nn

from detkit.backbones.weights import as_state_dict, convert_torchvision_state_dict
from detkit.heads.box_head import ClassRows
from detkit.models.coco_names import COCO_CATEGORY_NAMES
from detkit.utils.checkpoint import STATS_KEY, load_checkpoint

__all__ = [
    "convert_torchvision_detector",
    "is_torchvision_detection_state_dict",
    "load_detector_weights",
    "read_detector_checkpoint",
]

logger = logging.getLogger(__name__)


def _torchvision_head_key(key: str) -> str | None:
    """torchvision RPN / RoI-head key -> detkit key; None for keys outside the heads."""
    if m := re.fullmatch(r"rpn\.head\.conv\.(?:0\.0\.)?(weight|bias)", key):
        return f"rpn.head.conv.0.{m[1]}"
    if re.fullmatch(r"rpn\.head\.(cls_logits|bbox_pred)\.(weight|bias)", key):
        return key
    if re.fullmatch(r"roi_heads\.(box_head\.fc[67]|box_predictor\.(cls_score|bbox_pred))\.(weight|bias)", key):
        return key
    if m := re.fullmatch(r"roi_heads\.mask_head\.(?:(\d+)\.0|mask_fcn(\d+))\.(weight|bias)", key):
        index = int(m[1]) if m[1] is not None else int(m[2]) - 1
        return f"roi_heads.mask_head.convs.{index}.conv.{m[3]}"
    if m := re.fullmatch(r"roi_heads\.mask_predictor\.(conv5_mask|mask_fcn_logits)\.(weight|bias)", key):
        return f"roi_heads.mask_head.{'deconv' if m[1] == 'conv5_mask' else 'mask_logits'}.{m[2]}"
    if m := re.fullmatch(r"roi_heads\.keypoint_head\.(\d+)\.(weight|bias)", key):  # conv, ReLU, conv, ...
        return f"roi_heads.keypoint_head.convs.{int(m[1]) // 2}.conv.{m[2]}"
    if m := re.fullmatch(r"roi_heads\.keypoint_predictor\.kps_score_lowres\.(weight|bias)", key):
        return f"roi_heads.keypoint_head.deconv.{m[1]}"
    return None


def is_torchvision_detection_state_dict(state_dict: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("backbone.body.") for k in state_dict) and any(
        k.startswith("backbone.fpn.") for k in state_dict
    )


def convert_torchvision_detector(
    model: nn.Module, state_dict: Mapping[str, Tensor], *, source: str = "state dict"
) -> dict[str, Tensor]:
    """Translate a torchvision detection state dict to `model`'s keys (raises on unknown keys)."""
    arch = getattr(model.backbone, "torchvision_arch", None)
    if arch is None:
        raise ValueError(f"{source}: a torchvision detection checkpoint needs a backbone with a torchvision layout")
    converted = convert_torchvision_state_dict(
        arch,
        state_dict,
        src_prefix="backbone.",
        dst_prefix="backbone.",
        fpn_in_features=tuple(getattr(model.backbone, "in_features", ())) or None,
        source=source,
    )
    unknown = []
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            continue
        new_key = _torchvision_head_key(key)
        if new_key is None:
            unknown.append(key)
        elif new_key.startswith("roi_heads.mask_head.mask_logits."):
            converted[new_key] = value[1:]  # torchvision keeps an unused background mask channel
        else:
            converted[new_key] = value
    if unknown:
        raise ValueError(f"{source}: unexpected torchvision key(s): {unknown[:10]}")
    return converted


def read_detector_checkpoint(
    weights: str | PathLike | Mapping[str, Any],
) -> tuple[dict[str, Tensor], list[str] | None]:
    """The state dict of a detector checkpoint and the class names it records (None if it records none).

    Accepts a path or an already loaded object: a state dict, a detkit Lightning checkpoint
    (`{"state_dict": {"model.<key>": ...}, "detkit": {"class_names": [...]}}`, "model." kept)
    or `{"model": state dict}`. A path is read with `torch.load(weights_only=True)`.
    """
    obj = load_checkpoint(weights) if isinstance(weights, (str, PathLike)) else weights
    source = fspath(weights) if isinstance(weights, (str, PathLike)) else "state dict"
    info = obj.get(STATS_KEY) if isinstance(obj, Mapping) else None
    names = info.get("class_names") if isinstance(info, Mapping) else None
    return as_state_dict(obj, source), None if names is None else [str(n) for n in names]


def load_detector_weights(
    model: nn.Module,
    weights: str | PathLike | Mapping[str, Any],
    *,
    arch: str = "",
    class_names: Sequence[str] | None = None,
) -> nn.Module:
    """Load a checkpoint into `model`; a checkpoint with other classes fine-tunes the class-specific layers.

    Accepts a detkit state dict, a Lightning checkpoint of `detkit.engine.DetectionModule`
    (keys under "model.", class names under "detkit"), or a torchvision detection state dict
    (COCO: the 80 names of `COCO_CATEGORY_NAMES` at their category ids).

    Every parameter must fit `model` exactly, except the class-specific ones the model declares
    (`model.class_rows()`). Their rows map to classes: the background rows are always carried
    over; a class of `model` is carried over from the checkpoint's class of the same name (exact
    match after `strip()`) when the checkpoint records names and `class_names` (the model's
    classes, in label order) is given; without names, every row is carried over when the class
    counts are equal and none otherwise. Rows not carried over keep the model's values (the
    layer's initialisation on a freshly built model). When any row is not loaded as it was, one
    warning names the re-initialised parameters and the classes carried over. A checkpoint of
    the same classes loads unchanged. Errors (mis-shaped or missing keys) are one line naming
    the file and the keys.
    """
    source = fspath(weights) if isinstance(weights, (str, PathLike)) else "state dict"
    name = arch or type(model).__name__
    state_dict, checkpoint_names = read_detector_checkpoint(weights)
    if state_dict and all(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model.") :]: v for k, v in state_dict.items()}
    from_torchvision = is_torchvision_detection_state_dict(state_dict)
    if from_torchvision:
        state_dict = convert_torchvision_detector(model, state_dict, source=source)
    own = model.state_dict()
    layouts = {k: v for k, v in _class_rows(model).items() if k in own and k in state_dict}
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape and (k not in layouts or own[k].shape[1:] != v.shape[1:])
    ]
    if mismatched:
        raise ValueError(
            f"{source}: shapes do not match {name} outside the class-specific layers (build the model with "
            f"the settings the checkpoint was trained with, e.g. its backbone and head sizes): {mismatched[:5]}"
        )
    old_k, new_k = _class_count(state_dict, layouts), _class_count(own, layouts)
    if layouts and (old_k is None or new_k is None):
        shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}" for k in layouts]
        raise ValueError(
            f"{source}: shapes do not match {name}: the class-specific layers of the checkpoint agree on no "
            f"class count (another classifier or box-delta layout?): {shapes[:6]}"
        )
    if layouts:
        if from_torchvision and checkpoint_names is None and old_k == len(COCO_CATEGORY_NAMES):
            checkpoint_names = list(COCO_CATEGORY_NAMES)
        sources, said = _match_classes(old_k, new_k, checkpoint_names, class_names, source)
        if old_k != new_k or sources != list(range(1, new_k + 1)):
            for key, layout in layouts.items():
                state_dict[key] = _carry_rows(own[key], state_dict[key], layout, sources)
            logger.warning(
                f"{source}: {old_k} checkpoint classes -> {new_k} classes of {name}: re-initialised "
                f"{', '.join(layouts)} except {said}"
            )
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source}: checkpoint does not fit {name}: "
            f"missing keys {result.missing_keys[:10]}, unexpected keys {result.unexpected_keys[:10]}"
        )
    return model


def _class_rows(model: nn.Module) -> dict[str, ClassRows]:
    """`model.class_rows()`, or none for a model that declares no class-specific parameters."""
    declared = getattr(model, "class_rows", None)
    return declared() if callable(declared) else {}


def _class_count(state_dict: Mapping[str, Tensor], layouts: Mapping[str, ClassRows]) -> int | None:
    """The class count K all class-specific rows agree on; None when they disagree or fit none."""
    counts = set()
    for key, layout in layouts.items():
        rows = state_dict[key].shape[0]
        count = rows // layout.per_class - int(layout.background)
        counts.add(count if rows % layout.per_class == 0 and count >= 1 else None)
    return counts.pop() if len(counts) == 1 else None


def _match_classes(
    old_k: int,
    new_k: int,
    old_names: Sequence[str | None] | None,
    new_names: Sequence[str] | None,
    source: str,
) -> tuple[list[int | None], str]:
    """For each class 1..new_k, the checkpoint class it is carried over from (None: new), and the rows carried
    over, in words."""
    if new_names is not None and len(new_names) != new_k:
        raise ValueError(f"class_names has {len(new_names)} names but the model has {new_k} classes: {list(new_names)}")
    if old_names is None or new_names is None:
        if old_k == new_k:
            return list(range(1, new_k + 1)), ""  # loads as it is
        why = "the checkpoint records no class names" if old_names is None else "no class_names given"
        return [None] * new_k, f"the background rows ({why} to match classes by name)"
    if len(old_names) != old_k:
        raise ValueError(f"{source}: the checkpoint records {len(old_names)} class names for {old_k} classes")
    index: dict[str, int] = {}
    for label, old_name in enumerate(old_names, 1):
        if old_name is not None:
            index.setdefault(str(old_name).strip(), label)
    stripped = [str(n).strip() for n in new_names]
    sources = [index.get(n) for n in stripped]
    carried = [f"{n!r} ({old} -> {new})" for new, (n, old) in enumerate(zip(stripped, sources), 1) if old]
    fresh = [f"{n!r} ({new})" for new, (n, old) in enumerate(zip(stripped, sources), 1) if old is None]
    said = "the background rows and, by name, " + (", ".join(carried) if carried else "no class")
    return sources, said + (f"; new classes {', '.join(fresh)}" if fresh else "")


def _carry_rows(own: Tensor, loaded: Tensor, layout: ClassRows, sources: Sequence[int | None]) -> Tensor:
    """The model's `own` parameter with the rows of carried classes (and the background) from `loaded`."""
    out = own.detach().clone()
    per, first = layout.per_class, int(layout.background)
    if layout.background:
        out[:per] = loaded[:per]
    for new, old in enumerate(sources, 1):
        if old is not None:
            out[(new - 1 + first) * per : (new + first) * per] = loaded[(old - 1 + first) * per : (old + first) * per]
    return out
