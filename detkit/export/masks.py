"""Paste Mask R-CNN's box-frame mask probabilities into image-sized masks, with numpy only.

Needs neither torch nor detkit, so it runs next to ONNX Runtime alone; gives the masks of
`detkit.heads.mask_head.paste_masks` (the one `model.predict` uses): the M x M mask is padded
by one pixel, its box expanded to match and truncated to integers, then the mask is resized
bilinearly (half-pixel centres, as `F.interpolate(align_corners=False)`) onto the box.

Shape shorthand: D detections, M mask resolution (28), H x W image.
"""

from __future__ import annotations

import numpy as np

__all__ = ["paste_masks_numpy"]


def _axis_weights(start: np.ndarray, length: np.ndarray, size: int, src: int) -> np.ndarray:
    """Bilinear weights float32 [D, size, src] resizing `src` samples onto `length` pixels at `start`."""
    pos = np.arange(size, dtype=np.float32)[None, :]
    j = pos - start[:, None].astype(np.float32)
    inside = (j >= 0) & (j < length[:, None])
    coord = np.maximum((j + 0.5) * (np.float32(src) / length[:, None].astype(np.float32)) - 0.5, 0).astype(np.float32)
    lo = np.minimum(np.floor(coord), src - 1)
    frac = coord - lo
    lo = lo.astype(np.int64)
    hi = np.minimum(lo + 1, src - 1)
    weights = np.zeros((start.shape[0], size, src), dtype=np.float32)
    rows = np.arange(start.shape[0])[:, None]
    cols = np.arange(size)[None, :]
    np.add.at(weights, (rows, cols, lo), 1 - frac)
    np.add.at(weights, (rows, cols, hi), frac)
    return weights * inside[..., None]


def paste_masks_numpy(
    mask_probs: np.ndarray, boxes: np.ndarray, image_size: tuple[int, int], threshold: float | None = 0.5
) -> np.ndarray:
    """Image-sized masks from the exported model's `mask_probs` and `boxes` of one image.

    Args:
        mask_probs: float [D, M, M] probabilities (the `mask_probs` output rows of the image).
        boxes: float [D, 4] XYXY boxes in the image's pixels (the `boxes` output rows).
        image_size: (H, W) of the image the boxes refer to (the input image).
        threshold: masks are `prob >= threshold` as uint8 0/1; None returns float probabilities.
    Returns:
        uint8 (or float32) array [D, H, W].
    """
    h, w = int(image_size[0]), int(image_size[1])
    mask_probs = np.asarray(mask_probs, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    d = mask_probs.shape[0]
    if boxes.shape[0] != d:
        raise ValueError(f"mask_probs has {d} masks but boxes has {boxes.shape[0]} rows")
    out = np.zeros((d, h, w), dtype=np.uint8 if threshold is not None else np.float32)
    if d == 0:
        return out
    m = mask_probs.shape[-1]
    src = m + 2
    padded = np.pad(mask_probs, ((0, 0), (1, 1), (1, 1)))
    half = (boxes[:, 2:] - boxes[:, :2]) * np.float32(0.5) * np.float32(src / m)
    centre = (boxes[:, 2:] + boxes[:, :2]) * np.float32(0.5)
    ext = np.concatenate([centre - half, centre + half], axis=1).astype(np.int64)  # truncation toward zero
    widths = np.maximum(ext[:, 2] - ext[:, 0] + 1, 1)
    heights = np.maximum(ext[:, 3] - ext[:, 1] + 1, 1)
    chunk = 32
    for s in range(0, d, chunk):
        sl = slice(s, s + chunk)
        wy = _axis_weights(ext[sl, 1], heights[sl], h, src)  # [r, H, src]
        wx = _axis_weights(ext[sl, 0], widths[sl], w, src)  # [r, W, src]
        pasted = wy @ padded[sl] @ wx.transpose(0, 2, 1)
        out[sl] = (pasted >= threshold) if threshold is not None else pasted
    return out
