"""Batch collation: lists of images and of plain-tensor targets (the model packs them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["collate_detection"]


def _plain(value: Any) -> Any:
    """tv_tensors (Image, BoundingBoxes, Mask) -> plain tensors; other values unchanged."""
    if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor:
        return value.as_subclass(torch.Tensor)
    return value


def collate_detection(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]],
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Collate ``(image, target)`` samples for a detection DataLoader.

    Returns:
        ``images``: list of ``Tensor[3, H_i, W_i]`` float32 (uint8 input is scaled to 0..1);
        ``targets``: list of dicts with plain tensors -- ``boxes`` ``Tensor[K_i, 4]`` float32
        XYXY, ``labels`` int64 ``[K_i]``, ``masks`` uint8 ``[K_i, H_i, W_i]`` when present,
        ``iscrowd``, ``image_id``, ``orig_size`` -- plus any other keys, unchanged.
        Samples that are None (unreadable images skipped with ``skip_invalid``) are dropped.
    """
    images: list[torch.Tensor] = []
    targets: list[dict[str, Any]] = []
    for sample in batch:
        if sample is None:
            continue
        image, target = sample
        image = _plain(image)
        if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected images as Tensor[3, H, W], got {getattr(image, 'shape', type(image))}")
        if image.dtype == torch.uint8:
            image = image.float().div_(255.0)
        elif image.dtype != torch.float32:
            image = image.float()
        out = {k: _plain(v) for k, v in target.items()}
        out["boxes"] = out["boxes"].reshape(-1, 4).float()
        out["labels"] = out["labels"].long()
        if "masks" in out:
            out["masks"] = out["masks"].to(torch.uint8)
        images.append(image)
        targets.append(out)
    return images, targets
