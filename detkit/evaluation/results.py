"""Convert model predictions to COCO result dicts (the only place boxes become XYWH).

Shape shorthand: K detections in one image, H x W the original image size, P keypoints per detection.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from detkit.utils.io import atomic_write

if TYPE_CHECKING:  # torch is imported on use: `detkit evaluate` starts without it
    from torch import Tensor

__all__ = ["detections_to_coco_results", "label_lookup_table", "save_results_json"]


def label_lookup_table(
    label_to_category_id: Mapping[int, int] | Sequence[int],
) -> np.ndarray:
    """Array `lut` with `lut[label] = category_id` (-1 where a label has no category).

    A mapping is read as `{label: category_id}`. A sequence lists the category ids of
    labels 1..num_classes in order, i.e. `seq[label - 1]` (label 0 is the background).
    """
    if isinstance(label_to_category_id, Mapping):
        pairs = [(int(k), int(v)) for k, v in label_to_category_id.items()]
    else:
        pairs = [(i + 1, int(v)) for i, v in enumerate(label_to_category_id)]
    if not pairs:
        raise ValueError("label_to_category_id is empty")
    if min(k for k, _ in pairs) < 0:
        raise ValueError("labels in label_to_category_id must be >= 0")
    lut = np.full(max(k for k, _ in pairs) + 1, -1, dtype=np.int64)
    for label, cat_id in pairs:
        lut[label] = cat_id
    return lut


def _encode_masks(masks: Tensor, mask_threshold: float) -> list[dict]:
    """Compressed RLEs (counts as str) of `Tensor[K, H, W]` (or `[K, 1, H, W]`) masks."""
    import pycocotools.mask as mask_utils
    import torch

    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must be Tensor[K, H, W], got shape {tuple(masks.shape)}")
    masks = masks.detach()
    if masks.is_floating_point():
        masks = masks > mask_threshold
    masks = masks.to(device="cpu", dtype=torch.uint8)
    # [K, W, H] C-contiguous, transposed to [H, W, K], is Fortran-contiguous: one copy.
    fortran = masks.transpose(1, 2).contiguous().numpy().transpose(2, 1, 0)
    rles = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detections_to_coco_results(
    image_ids: Sequence[int],
    detections: Sequence[Mapping[str, Tensor]],
    *,
    label_to_category_id: Mapping[int, int] | Sequence[int],
    mask_threshold: float = 0.5,
) -> list[dict]:
    """COCO result dicts (json-serialisable) for per-image detections.

    Args:
        image_ids: COCO image id of each entry of `detections`.
        detections: per image, `boxes` Tensor[K, 4] XYXY absolute pixels of the original
            image, `scores` Tensor[K], `labels` int Tensor[K] in 1..num_classes, and
            optionally `masks` Tensor[K, H, W] (bool/uint8; float masks are thresholded at
            `mask_threshold`) and `keypoints` Tensor[K, P, 3] (x, y, visibility flag) with
            `keypoints_scores` Tensor[K, P].
        label_to_category_id: `{label: category_id}` or a sequence where `seq[label - 1]`
            is the category id of `label`.

    Returns:
        One dict per detection: `image_id`, `category_id`, `bbox` [x, y, w, h], `score`,
        `segmentation` (compressed RLE with str counts) when masks are given, and with keypoints
        `keypoints` [x, y, v] * P as COCO results (v the predicted flag; OKS reads only x and y)
        and `keypoints_scores` [P].
    """
    if len(image_ids) != len(detections):
        raise ValueError(f"got {len(image_ids)} image ids for {len(detections)} detection dicts")
    import torch

    lut = label_lookup_table(label_to_category_id)
    results: list[dict] = []
    for image_id, det in zip(image_ids, detections):
        boxes = det["boxes"].detach().to(device="cpu", dtype=torch.float64).reshape(-1, 4)
        num = boxes.shape[0]
        if num == 0:
            continue
        scores = det["scores"].detach().to(device="cpu", dtype=torch.float64).reshape(-1)
        labels = det["labels"].detach().to(device="cpu", dtype=torch.int64).reshape(-1).numpy()
        if scores.numel() != num or labels.size != num:
            raise ValueError(f"image {image_id}: boxes, scores and labels differ in length")
        bad = (labels < 0) | (labels >= lut.size)
        cat_ids = lut[np.where(bad, 0, labels)]
        bad |= cat_ids < 0
        if bad.any():
            raise ValueError(f"image {image_id}: label {int(labels[bad][0])} has no category id")
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        score_list = scores.tolist()
        cat_list = cat_ids.tolist()
        image_id = int(image_id)
        start = len(results)
        if det.get("masks") is not None:
            rles = _encode_masks(det["masks"], mask_threshold)
            if len(rles) != num:
                raise ValueError(f"image {image_id}: {len(rles)} masks for {num} boxes")
            results.extend(
                {
                    "image_id": image_id,
                    "category_id": c,
                    "bbox": b,
                    "score": s,
                    "segmentation": r,
                }
                for c, b, s, r in zip(cat_list, xywh, score_list, rles)
            )
        else:
            results.extend(
                {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
                for c, b, s in zip(cat_list, xywh, score_list)
            )
        if det.get("keypoints") is not None:
            _add_keypoints(results[start:], det, image_id, num)
    return results


def _add_keypoints(results: list[dict], det: Mapping[str, Tensor], image_id: int, num: int) -> None:
    """`keypoints` [x, y, v] * P (flat) and `keypoints_scores` [P] into each of one image's `results`."""
    import torch

    kp = det["keypoints"].detach().to(device="cpu", dtype=torch.float64)
    if kp.dim() != 3 or kp.shape[0] != num or kp.shape[2] != 3:
        raise ValueError(f"image {image_id}: keypoints must be Tensor[{num}, P, 3], got {tuple(kp.shape)}")
    flat = kp.reshape(num, -1).tolist()
    scores = det.get("keypoints_scores")
    score_rows = (
        scores.detach().to(device="cpu", dtype=torch.float64).reshape(num, -1).tolist()
        if scores is not None
        else [None] * num
    )
    for r, points, point_scores in zip(results, flat, score_rows):
        r["keypoints"] = points
        if point_scores is not None:
            r["keypoints_scores"] = point_scores


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`
    (`detkit.utils.io.atomic_write` without fsync)."""
    atomic_write(path, data, fsync=False)


def save_results_json(results: list[dict] | dict, path: str | os.PathLike) -> None:
    """Write COCO results (or any json-serialisable object) to `path` atomically."""
    atomic_write_bytes(path, json.dumps(results).encode("utf-8"))
