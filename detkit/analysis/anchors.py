"""Does a detector's RPN reach the data set's objects? Anchors against ground-truth boxes.

The computation is the RPN's own: every image is resized as the model's transform resizes it
(`resized_size`, padded to `size_divisible`), its ground-truth boxes are scaled with it, the
model's anchor generator lays its anchors on the feature maps the backbone gives for that
padded size, and an object is reached when some anchor's IoU with it is at least the RPN
matcher's positive threshold (`fg_iou_threshold`). Feature-map sizes come from running the
backbone on the "meta" device (shapes only, no arithmetic).

Shape shorthand: G objects of one padded size, A anchors over all levels.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from detkit.analysis.dataset import RATIO_BINS
from detkit.models.transform import DetectionTransform, resized_size
from detkit.structures import batched_box_iou

__all__ = ["anchor_coverage"]

# max IoU is computed for this many boxes at a time (G x A floats: 64 x 270k anchors of an
# 800 x 1344 FPN input is ~70 MB)
_BOX_CHUNK = 64
# sqrt(area) bins of the boxes in the model's input pixels (log-spaced, 4 per octave)
INPUT_SIZE_BINS = tuple(float(2**e) for e in np.arange(1.0, 11.01, 0.25))


def _input_size(transform: DetectionTransform) -> dict[str, Any]:
    min_size = transform.min_size
    if min_size is not None and not isinstance(min_size, int):
        min_size = max(int(v) for v in min_size)  # evaluation uses the largest of a multi-scale list
    return {"min_size": min_size, "max_size": transform.max_size, "size_divisible": int(transform.size_divisible)}


def _padded(size: int, divisible: int) -> int:
    return (size + divisible - 1) // divisible * divisible


def anchor_coverage(model: nn.Module, dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The RPN's anchors, the input size and the objects of the COCO dict `dataset` no anchor reaches.

    Returns a json-ready dict: `applies` (False for models that take external proposals, with
    `reason`), `input_size` (min_size / max_size / size_divisible and the resized sizes met),
    `anchor_sizes` / `aspect_ratios` per level, `fg_iou_threshold`, `objects`, `unreached`,
    `unreached_share`, per-class counts and histograms of the objects' size and aspect ratio in
    the model's input pixels, split into reached / unreached. Crowds and boxes without area are
    left out, as are objects of images without `width` / `height` (counted in `unsized_objects`).
    """
    transform = getattr(model, "transform", None)
    out: dict[str, Any] = {"model": type(model).__name__}
    if isinstance(transform, DetectionTransform):
        out["input_size"] = _input_size(transform)
    if getattr(model, "requires_proposals", False) or getattr(model, "rpn", None) is None:
        out["applies"] = False
        out["reason"] = (
            "the model takes external proposals (R-CNN / Fast R-CNN: selective search), it has no RPN: "
            "anchors do not apply"
        )
        return out
    rpn = model.rpn
    generator = rpn.anchor_generator
    threshold = float(rpn.matcher.high_threshold)
    size = out["input_size"]
    out.update(applies=True, anchor_sizes=[list(s) for s in generator.sizes],
               aspect_ratios=[list(r) for r in generator.aspect_ratios], fg_iou_threshold=threshold)  # fmt: skip

    categories = {int(c["id"]): str(c["name"]) for c in dataset["categories"]}
    images = {img["id"]: img for img in dataset["images"]}
    boxes_of: dict[tuple[int, int, int, int], list] = {}  # (resized h, w, padded h, w) -> [(box, class)]
    resized_count: dict[tuple[int, int], int] = {}
    unsized = 0
    for img in images.values():
        h, w = img.get("height"), img.get("width")
        if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0:
            rh, rw = resized_size(h, w, size["min_size"], size["max_size"])
            resized_count[(rh, rw)] = resized_count.get((rh, rw), 0) + 1
    for a in dataset.get("annotations", []):
        img = images.get(a["image_id"])
        if a.get("iscrowd", 0) or int(a["category_id"]) not in categories or img is None:
            continue
        x, y, bw, bh = (float(v) for v in a["bbox"])
        if not (bw > 0 and bh > 0):
            continue
        h, w = img.get("height"), img.get("width")
        if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
            unsized += 1
            continue
        rh, rw = resized_size(h, w, size["min_size"], size["max_size"])
        sx, sy = np.float32(rw) / np.float32(w), np.float32(rh) / np.float32(h)  # float32, as resize_boxes
        key = (rh, rw, _padded(rh, size["size_divisible"]), _padded(rw, size["size_divisible"]))
        boxes_of.setdefault(key, []).append(
            ((x * sx, y * sy, (x + bw) * sx, (y + bh) * sy), categories[int(a["category_id"])])
        )

    backbone = copy.deepcopy(model.backbone).to("meta")  # feature-map shapes without arithmetic
    best_iou, box_list, class_list = [], [], []
    with torch.no_grad():
        for (_, _, hp, wp), items in boxes_of.items():
            features = backbone(torch.empty(1, 3, hp, wp, device="meta"))
            feature_sizes = [tuple(features[name].shape[-2:]) for name in rpn.in_features]
            anchors = torch.cat(generator.grid_anchors(feature_sizes, torch.device("cpu"), image_size=(hp, wp)))
            boxes = torch.tensor([b for b, _ in items], dtype=torch.float32)
            for start in range(0, len(boxes), _BOX_CHUNK):
                iou = batched_box_iou(boxes[None, start : start + _BOX_CHUNK], anchors[None])[0]  # [G, A]
                best_iou.append(iou.max(dim=1).values.numpy())
            box_list.append(boxes.numpy())
            class_list += [c for _, c in items]
    best = np.concatenate(best_iou) if best_iou else np.zeros(0)
    boxes = np.concatenate(box_list) if box_list else np.zeros((0, 4), np.float32)
    reached = best >= threshold
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    sizes = np.sqrt(widths * heights)
    ratios = np.clip(np.log2(heights / np.maximum(widths, 1e-12)), RATIO_BINS[0], RATIO_BINS[-1])
    size_edges = np.asarray(INPUT_SIZE_BINS)
    classes = np.asarray(class_list, dtype=object)
    out.update(
        input_size={
            **size,
            "resized_sizes": [[h, w, n] for (h, w), n in sorted(resized_count.items(), key=lambda kv: -kv[1])][:10],
        },
        objects=int(len(best)),
        unreached=int((~reached).sum()),
        unreached_share=float((~reached).mean()) if len(best) else 0.0,
        unsized_objects=unsized,
        unreached_per_class={
            name: [int((~reached & (classes == name)).sum()), int((classes == name).sum())]
            for name in categories.values()
        },
        size_bins=list(INPUT_SIZE_BINS),
        size_histogram={
            "reached": np.histogram(np.clip(sizes[reached], size_edges[0], size_edges[-1]), size_edges)[0].tolist(),
            "unreached": np.histogram(np.clip(sizes[~reached], size_edges[0], size_edges[-1]), size_edges)[0].tolist(),
        },
        ratio_bins=list(RATIO_BINS),
        ratio_histogram={
            "reached": np.histogram(ratios[reached], np.asarray(RATIO_BINS))[0].tolist(),
            "unreached": np.histogram(ratios[~reached], np.asarray(RATIO_BINS))[0].tolist(),
        },
        best_iou_median=float(np.median(best)) if len(best) else None,
    )
    return out
