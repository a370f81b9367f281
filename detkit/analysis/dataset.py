"""What a COCO data set holds: objects and images per class, box sizes and aspect ratios."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["SIZE_BINS", "dataset_statistics"]

# sqrt(box area) bin edges in pixels (COCO's small / medium limits are 32 and 96)
SIZE_BINS = (0, 8, 16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, math.inf)
# log2(height / width) bin edges: 1:8 ... 8:1
RATIO_BINS = tuple(np.round(np.arange(-3.0, 3.01, 0.5), 2).tolist())


def dataset_statistics(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """Counts and histograms of a COCO annotation dict (crowds counted apart, not in histograms)."""
    categories = {int(c["id"]): str(c["name"]) for c in dataset["categories"]}
    images = dataset["images"]
    anns = [a for a in dataset.get("annotations", []) if int(a["category_id"]) in categories]
    objects = {name: 0 for name in categories.values()}
    crowds = {name: 0 for name in categories.values()}
    images_with: dict[str, set] = {name: set() for name in categories.values()}
    sizes, ratios = [], []
    for a in anns:
        name = categories[int(a["category_id"])]
        if a.get("iscrowd", 0):
            crowds[name] += 1
            continue
        objects[name] += 1
        images_with[name].add(a["image_id"])
        w, h = float(a["bbox"][2]), float(a["bbox"][3])
        if w > 0 and h > 0:
            sizes.append(math.sqrt(w * h))
            ratios.append(math.log2(h / w))
    sizes_a, ratios_a = np.asarray(sizes), np.clip(np.asarray(ratios), RATIO_BINS[0], RATIO_BINS[-1])
    annotated = {a["image_id"] for a in anns}
    widths = [int(i["width"]) for i in images if isinstance(i.get("width"), int)]
    heights = [int(i["height"]) for i in images if isinstance(i.get("height"), int)]
    return {
        "images": len(images),
        "images_without_objects": len(images) - len(annotated & {i["id"] for i in images}),
        "objects": int(sum(objects.values())),
        "crowds": int(sum(crowds.values())),
        "objects_per_class": objects,
        "crowds_per_class": crowds,
        "images_per_class": {name: len(ids) for name, ids in images_with.items()},
        "degenerate_boxes": len([a for a in anns if not a.get("iscrowd", 0)]) - len(sizes),
        "size_bins": [b if math.isfinite(b) else None for b in SIZE_BINS],
        "size_histogram": np.histogram(sizes_a, bins=np.asarray(SIZE_BINS, dtype=float))[0].tolist(),
        "ratio_bins": list(RATIO_BINS),
        "ratio_histogram": np.histogram(ratios_a, bins=np.asarray(RATIO_BINS))[0].tolist(),
        "small_medium_large": [
            int((sizes_a**2 < 32**2).sum()),
            int(((sizes_a**2 >= 32**2) & (sizes_a**2 < 96**2)).sum()),
            int((sizes_a**2 >= 96**2).sum()),
        ],  # fmt: skip
        "image_width_range": [min(widths), max(widths)] if widths else None,
        "image_height_range": [min(heights), max(heights)] if heights else None,
    }
