"""Checks of COCO json entries shared by the data set (`detkit.data.CocoDetection`, what `fit`
refuses) and `detkit evaluate`, so that both refuse the same ground truth. Plain Python: the
evaluation starts without torch.
"""

from __future__ import annotations

import math
from collections.abc import Container
from typing import Any

from detkit.utils.rle import compressed_rle_problem

__all__ = ["annotation_box", "segmentation_problem"]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """Why ``seg`` is not a valid COCO segmentation of a ``height`` x ``width`` image, or None."""
    if isinstance(seg, list):
        if not seg:
            return "empty polygon list"
        for poly in seg:
            if not isinstance(poly, list) or not all(_is_number(v) for v in poly):
                return "polygon is not a list of numbers"
            if len(poly) % 2:
                return f"polygon has an odd number of coordinates ({len(poly)})"
            if len(poly) < 6:
                return f"polygon with fewer than 3 points ({len(poly) // 2})"
            xs, ys = poly[0::2], poly[1::2]  # far-out coordinates crash or exhaust pycocotools
            if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
                return "polygon coordinates lie far outside the image"
        return None
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        if not isinstance(size, list) or [v for v in size if isinstance(v, int)] != [height, width]:
            return f"RLE size {size!r} does not match the image size [{height}, {width}]"
        if isinstance(counts, list):
            if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
                return "uncompressed RLE counts are not non-negative ints summing to H*W"
            return None
        if isinstance(counts, (str, bytes)) and counts:
            return compressed_rle_problem(counts, height, width)
        return "RLE without counts"
    return f"segmentation of unsupported type {type(seg).__name__}"


def annotation_box(
    ann: dict, height: int, width: int, category_ids: Container[int], *, with_masks: bool = False
) -> tuple[list[float], bool] | None:
    """The XYXY box of a COCO annotation clipped to its ``width`` x ``height`` image and whether it
    was clipped; None for a box of zero width or height.

    Raises:
        ValueError: why the annotation is invalid (unknown category id, malformed or negative
            bbox, box outside the image; with ``with_masks``, a missing or invalid segmentation).
    """
    cat = ann.get("category_id")
    if not isinstance(cat, int) or cat not in category_ids:
        raise ValueError(f"unknown category id {cat!r}")
    bbox = ann.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        raise ValueError(f"malformed bbox {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"negative box size (w={w}, h={h})")
    if w == 0 or h == 0:
        return None
    x1, y1 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x2, y2 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {bbox} lies outside the {width}x{height} image")
    if with_masks:
        if "segmentation" not in ann:
            raise ValueError("missing segmentation")
        reason = segmentation_problem(ann["segmentation"], height, width)
        if reason:
            raise ValueError(reason)
    return [x1, y1, x2, y2], (x1, y1, x2, y2) != (x, y, x + w, y + h)
