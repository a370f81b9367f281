"""Detection transforms on torchvision.transforms.v2 (boxes and masks move with the image).

Samples are ``(image, target)`` pairs as returned by the detkit data sets: ``image`` a
``tv_tensors.Image``, ``target`` a dict with ``boxes`` (``tv_tensors.BoundingBoxes``),
``labels``, ``iscrowd`` and optionally ``masks`` (``tv_tensors.Mask``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2

__all__ = ["PER_BOX_KEYS", "build_transforms", "per_box_tensors"]

# Per-instance target entries that must stay aligned with ``boxes`` when boxes are dropped.
# (``masks`` are tv_tensors.Mask and are filtered by SanitizeBoundingBoxes on their own.)
PER_BOX_KEYS = ("labels", "iscrowd", "difficult", "area")


def per_box_tensors(sample: Any) -> tuple[torch.Tensor, ...] | None:
    """``labels_getter`` for ``v2.SanitizeBoundingBoxes``: the per-box tensors of the target.

    Accepts ``(image, target)`` or a single dict sample.
    """
    target = sample
    if isinstance(sample, (tuple, list)):
        target = next((s for s in sample if isinstance(s, dict)), None)
    if not isinstance(target, dict):
        return None
    found = tuple(target[k] for k in PER_BOX_KEYS if isinstance(target.get(k), torch.Tensor))
    return found or None


def build_transforms(
    train: bool,
    *,
    min_size: int | Sequence[int] | None = 800,
    max_size: int | None = 1333,
    hflip_prob: float = 0.5,
    color_jitter: float = 0.0,
) -> v2.Compose:
    """Standard detection pipeline.

    ``ToImage`` -> colour jitter (train) -> shortest-side resize -> horizontal flip (train)
    -> ``ToDtype(float32, scale=True)`` -> clamp + sanitize boxes (labels, iscrowd and
    masks follow the kept boxes).

    Args:
        train: add the random augmentations.
        min_size: target shorter side; a sequence gives scale jitter in training (one value
            drawn per image) and its largest value is used at test time. None: no resize
            (detkit models also resize internally).
        max_size: cap on the longer side after resizing (None: no cap).
        hflip_prob: probability of a horizontal flip (train).
        color_jitter: strength s of ``ColorJitter(brightness=0.4s, contrast=0.4s,
            saturation=0.4s, hue=0.1s)`` (train); 0 disables.
    """
    ops: list[Any] = [v2.ToImage()]
    if train and color_jitter > 0:
        s = float(color_jitter)
        ops.append(
            v2.ColorJitter(
                brightness=0.4 * s,
                contrast=0.4 * s,
                saturation=0.4 * s,
                hue=min(0.1 * s, 0.5),
            )
        )
    if min_size is not None:
        sizes = [int(min_size)] if isinstance(min_size, int) else [int(v) for v in min_size]
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"min_size must be positive, got {min_size!r}")
        # RandomShortestSize: scale = min(short / shorter_side, max_size / longer_side)
        ops.append(v2.RandomShortestSize(sizes if train else [max(sizes)], max_size=max_size))
    if train and hflip_prob > 0:
        ops.append(v2.RandomHorizontalFlip(p=hflip_prob))
    ops += [
        v2.ToDtype(torch.float32, scale=True),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(labels_getter=per_box_tensors),
    ]
    return v2.Compose(ops)
