"""Loading detector weights: detkit / Lightning checkpoints and torchvision detection checkpoints.

torchvision's `fasterrcnn_resnet50_fpn` / `maskrcnn_resnet50_fpn` state dicts (COCO, 91
classes including background -> `num_classes=90` here) map onto detkit's modules with the
explicit key maps below. Everything is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import re
from os import PathLike, fspath
from typing import Mapping

from torch import Tensor, nn

from detkit.backbones.weights import convert_torchvision_state_dict, read_checkpoint


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


def load_detector_weights(
    model: nn.Module, weights: str | PathLike | Mapping[str, Tensor], *, arch: str = ""
) -> nn.Module:
    """Load a checkpoint into `model` strictly; errors name the file and the offending keys.

    Accepts a detkit state dict, a Lightning checkpoint of `detkit.engine.DetectionModule`
    (keys under "model."), or a torchvision detection state dict.
    """
    source = fspath(weights) if isinstance(weights, (str, PathLike)) else "state dict"
    state_dict = read_checkpoint(weights) if isinstance(weights, (str, PathLike)) else dict(weights)
    if state_dict and all(k.startswith("model.") for k in state_dict):
        state_dict = {k[len("model.") :]: v for k, v in state_dict.items()}
    if is_torchvision_detection_state_dict(state_dict):
        state_dict = convert_torchvision_detector(model, state_dict, source=source)
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if k in own and own[k].shape != v.shape
    ]
    if mismatched:
        raise ValueError(
            f"{source}: shapes do not match {arch or type(model).__name__} (was it trained with another "
            f"num_classes? torchvision COCO checkpoints need num_classes=90): {mismatched[:5]}"
        )
    result = model.load_state_dict(state_dict, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{source}: checkpoint does not fit {arch or type(model).__name__}: "
            f"missing keys {result.missing_keys[:10]}, unexpected keys {result.unexpected_keys[:10]}"
        )
    return model
