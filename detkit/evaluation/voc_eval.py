"""Pascal VOC detection metric (per-class AP and mAP), as the VOC devkit defines it.

Shape shorthand: D detections of one class, G ground-truth objects, I images.

Per class, detections are sorted by score (ties keep their input order) and matched greedily
to the ground truth of their image: a detection whose best-overlapping object (IoU > 0.5)
is difficult is neither a true nor a false positive; if that object is not difficult it is a
true positive the first time and a false positive for every later detection (a duplicate);
without an object above the threshold it is a false positive. Difficult objects do not count
as positives. AP from the precision/recall curve:

- ``voc07``: 11-point interpolated AP (VOC2007 devkit): mean over ``t in 0, 0.1, ..., 1`` of
  the highest precision at recall >= t (0 where recall never reaches t).
- ``voc2010``: area under the monotone precision envelope (VOC2010-2012 devkits).

A class without non-difficult ground truth has no AP (None, ``null`` in JSON, "-" in the
table) and is left out of the mAP; a class with ground truth but no detections has AP 0.

Boxes: with COCO-format ground truth (detkit's VOC export writes a ``difficult`` flag per
annotation; ``iscrowd=1`` annotations without that flag count as difficult too) IoU is
computed on continuous boxes, as COCO does. With VOC XML (``VOCGroundTruth.from_voc``) the
devkit's inclusive pixel convention is used: widths are ``x2 - x1 + 1``, and a detection
``[x, y, w, h]`` in detkit's 0-based continuous pixels becomes ``(x + 1, y + 1, x + w, y + h)``
(the inverse of how :class:`detkit.data.VocDetection` reads the XML boxes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detkit.evaluation.inputs import read_json

__all__ = ["VOC_METRICS", "VOCGroundTruth", "VOCResult", "evaluate_voc", "voc_ap"]

log = logging.getLogger(__name__)

VOC_METRICS = ("voc07", "voc2010")
_CHUNK = 1 << 15  # detections per IoU block (bounds the memory of a [chunk, G_max] block)


def voc_ap(recall: np.ndarray, precision: np.ndarray, metric: str = "voc07") -> float:
    """AP of one class from its cumulative recall / precision (detections in score order)."""
    recall, precision = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if metric == "voc07":
        total = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # the devkit's thresholds, float steps included
            above = recall >= t
            total += precision[above].max() if above.any() else 0.0
        return float(total / 11.0)
    if metric == "voc2010":
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # monotone envelope
        steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    raise ValueError(f"unknown VOC metric {metric!r}; expected one of {VOC_METRICS}")


@dataclass
class VOCGroundTruth:
    """Ground truth for :func:`evaluate_voc`.

    Attributes:
        image_ids: ``int64[I]`` image ids, sorted.
        category_ids: the evaluated categories' ids (COCO ``category_id`` of the detections).
        class_names: their names, same order.
        boxes: ``float64[G, 4]`` XYXY (continuous, or inclusive pixels when ``inclusive``).
        labels: ``int64[G]`` category id of each object.
        image_index: ``int64[G]`` position of each object's image in ``image_ids``.
        difficult: ``bool[G]``.
        inclusive: VOC devkit pixel convention (+1 in widths and heights).
        source: where it came from (for messages).
        file_names: image id -> file name (the COCO ``file_name``; ``<name>.jpg`` for a VOC folder).
    """

    image_ids: np.ndarray
    category_ids: list[int]
    class_names: list[str]
    boxes: np.ndarray
    labels: np.ndarray
    image_index: np.ndarray
    difficult: np.ndarray
    inclusive: bool = False
    source: str = "ground truth"
    file_names: dict[int, str] = field(default_factory=dict, repr=False)

    @classmethod
    def _build(cls, image_ids, cats, objects, *, inclusive: bool, source: str, file_names=None) -> VOCGroundTruth:
        ids = np.unique(np.asarray(list(image_ids), dtype=np.int64))
        rows = list(objects)  # (image_id, category_id, x1, y1, x2, y2, difficult)
        arr = np.asarray([r[:6] for r in rows], dtype=np.float64).reshape(-1, 6)
        return cls(
            image_ids=ids,
            category_ids=[int(c) for c, _ in cats],
            class_names=[str(n) for _, n in cats],
            boxes=arr[:, 2:6],
            labels=arr[:, 1].astype(np.int64),
            image_index=np.searchsorted(ids, arr[:, 0].astype(np.int64)),
            difficult=np.asarray([bool(r[6]) for r in rows], dtype=bool),
            inclusive=inclusive,
            source=source,
            file_names=dict(file_names or {}),
        )

    @classmethod
    def from_coco(cls, coco: Mapping[str, Any] | str | os.PathLike) -> VOCGroundTruth:
        """From a COCO-format dict or json file (``bbox`` XYWH; ``difficult`` or ``iscrowd`` flags).

        Raises:
            ValueError: missing lists, or an annotation without a usable bbox / ids (named).
        """
        source = "ground truth"
        if isinstance(coco, (str, os.PathLike)):
            source = os.fspath(coco)
            coco = read_json(source, "annotations")
        if not isinstance(coco, Mapping) or not all(isinstance(coco.get(k), list) for k in ("images", "categories")):
            raise ValueError(f"{source}: not COCO-format ground truth (needs 'images' and 'categories' lists)")
        cats = sorted((c["id"], c["name"]) for c in coco["categories"])
        image_ids = [im["id"] for im in coco["images"]]
        known = set(image_ids)
        objects = []
        for ann in coco.get("annotations") or []:
            bbox = ann.get("bbox")
            if ann.get("image_id") not in known or not isinstance(bbox, list) or len(bbox) != 4:
                raise ValueError(f"{source}: annotation id {ann.get('id')!r}: unknown image id or malformed bbox")
            x, y, w, h = (float(v) for v in bbox)
            difficult = bool(ann["difficult"]) if "difficult" in ann else bool(ann.get("iscrowd", 0))
            objects.append((ann["image_id"], ann["category_id"], x, y, x + w, y + h, difficult))
        names = {im["id"]: im["file_name"] for im in coco["images"] if isinstance(im.get("file_name"), str)}
        return cls._build(image_ids, cats, objects, inclusive=False, source=source, file_names=names)

    @classmethod
    def from_voc(
        cls, root: str | os.PathLike, image_set: str = "test", class_names: Sequence[str] | None = None
    ) -> VOCGroundTruth:
        """From a VOC year folder (``Annotations/*.xml``, ``ImageSets/Main/<image_set>.txt``).

        Boxes stay as the XML writes them (1-based inclusive); category ids are ``1..K`` in
        the order of ``class_names`` (default: the 20 VOC classes), image ids as
        :class:`detkit.data.VocDetection` makes them. Objects of other classes are ignored.
        The images are those the data set keeps (as validation counts them): an image whose
        XML or file it skips as invalid (``skip_invalid=True``) is left out, with its count line.
        """
        from detkit.data.voc import VOC_CLASSES, VocDetection, _image_ids, parse_voc_xml

        root = os.fspath(root)
        names = list(class_names or VOC_CLASSES)
        split_file = os.path.join(root, "ImageSets", "Main", f"{image_set}.txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"VOC image set not found: {split_file}")
        with open(split_file, encoding="utf-8") as f:
            stems = [line.split()[0] for line in f if line.strip()]
        label = {n: i + 1 for i, n in enumerate(names)}
        objects, other = [], 0
        ids = _image_ids(stems)
        for stem in stems:
            if os.sep in stem or "/" in stem or stem.startswith(".."):
                raise ValueError(f"{split_file}: invalid image name {stem!r}")
        kept = set(VocDetection(root, image_set, class_names=names, use_difficult=True, skip_invalid=True).image_ids)
        stems, ids = [s for s, i in zip(stems, ids) if i in kept], [i for i in ids if i in kept]
        for stem, image_id in zip(stems, ids):
            ann = parse_voc_xml(os.path.join(root, "Annotations", f"{stem}.xml"))
            for obj in ann["objects"]:
                if obj["name"] not in label:
                    other += 1
                    continue
                objects.append((image_id, label[obj["name"]], *obj["bbox"], obj["difficult"]))
        if other:
            log.warning("%s (%s): %d objects of classes not evaluated were ignored", root, image_set, other)
        cats = [(i + 1, n) for i, n in enumerate(names)]
        file_names = {i: f"{stem}.jpg" for stem, i in zip(stems, ids)}
        return cls._build(ids, cats, objects, inclusive=True, source=f"{root} ({image_set})", file_names=file_names)


@dataclass
class VOCResult:
    """Per-class AP (None: no ground truth), mAP over the classes with ground truth."""

    metric: str
    mAP: float | None
    per_class_ap: dict[str, float | None]
    num_positives: dict[str, int]
    num_detections: dict[str, int]
    num_images: int

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mAP": self.mAP, "per_class_ap": dict(self.per_class_ap)}

    @property
    def summary(self) -> str:
        kind = "11-point AP" if self.metric == "voc07" else "AP (area under the precision envelope)"
        width = max([5, *(len(n) for n in self.per_class_ap)])
        lines = [
            f"Pascal VOC {self.metric}: {kind}, IoU > 0.5, {self.num_images} images",
            f"{'class':<{width}}  {'AP':>6}  {'GT':>6}  {'dets':>7}",
        ]
        for name, ap in self.per_class_ap.items():
            shown = "-" if ap is None else f"{ap:.4f}"
            lines.append(f"{name:<{width}}  {shown:>6}  {self.num_positives[name]:>6}  {self.num_detections[name]:>7}")
        lines.append(f"{'mAP':<{width}}  {'-' if self.mAP is None else format(self.mAP, '.4f'):>6}")
        return "\n".join(lines)


def _iou(det: np.ndarray, gt: np.ndarray, valid: np.ndarray, offset: float) -> np.ndarray:
    """IoU ``[D, G_max]`` of each detection with the padded objects of its image (-1 where invalid)."""
    ix1 = np.maximum(det[:, None, 0], gt[..., 0])
    iy1 = np.maximum(det[:, None, 1], gt[..., 1])
    ix2 = np.minimum(det[:, None, 2], gt[..., 2])
    iy2 = np.minimum(det[:, None, 3], gt[..., 3])
    inter = np.clip(ix2 - ix1 + offset, 0.0, None) * np.clip(iy2 - iy1 + offset, 0.0, None)
    area_d = (det[:, 2] - det[:, 0] + offset) * (det[:, 3] - det[:, 1] + offset)
    area_g = (gt[..., 2] - gt[..., 0] + offset) * (gt[..., 3] - gt[..., 1] + offset)
    union = area_d[:, None] + area_g - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return np.where(valid, iou, -1.0)


def _class_tp_fp(gt: VOCGroundTruth, cat: int, det_index, det_boxes, threshold: float):
    """True/false positive flags (``float64[D]`` each) of one class's detections, in score order."""
    mine = gt.labels == cat
    g_img, g_boxes, g_diff = gt.image_index[mine], gt.boxes[mine], gt.difficult[mine]
    num_images = len(gt.image_ids)
    counts = np.bincount(g_img, minlength=num_images)
    g_max = max(int(counts.max(initial=0)), 1)
    order = np.argsort(g_img, kind="stable")
    slot = np.arange(len(order)) - np.concatenate([[0], np.cumsum(counts)])[g_img[order]]
    pad = np.zeros((num_images, g_max, 4))
    pad_valid = np.zeros((num_images, g_max), dtype=bool)
    pad_diff = np.zeros((num_images, g_max), dtype=bool)
    pad[g_img[order], slot] = g_boxes[order]
    pad_valid[g_img[order], slot] = True
    pad_diff[g_img[order], slot] = g_diff[order]

    d = len(det_index)
    best = np.empty(d, dtype=np.int64)
    best_iou = np.empty(d)
    offset = 1.0 if gt.inclusive else 0.0
    for start in range(0, d, _CHUNK):
        sl = slice(start, start + _CHUNK)
        iou = _iou(det_boxes[sl], pad[det_index[sl]], pad_valid[det_index[sl]], offset)
        best[sl] = iou.argmax(axis=1)
        best_iou[sl] = iou.max(axis=1)
    hit = best_iou > threshold
    on_difficult = hit & pad_diff[det_index, best]
    candidate = hit & ~on_difficult
    # the first candidate (in score order) of each object is the true positive; later ones duplicates
    obj = det_index * g_max + best
    cand_pos = np.nonzero(candidate)[0]
    _, first = np.unique(obj[cand_pos], return_index=True)
    tp = np.zeros(d)
    tp[cand_pos[first]] = 1.0
    fp = (~on_difficult).astype(np.float64) - tp
    return tp, fp, int((~g_diff).sum())


def _parse_detections(gt: VOCGroundTruth, detections: Iterable[Mapping[str, Any]], img_ids, known_ids) -> tuple:
    rows = []
    for k, det in enumerate(detections):
        try:
            x, y, w, h = (float(v) for v in det["bbox"])
            rows.append((int(det["image_id"]), int(det["category_id"]), float(det["score"]), x, y, x + w, y + h))
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"detection {k} is not a COCO result (image_id, category_id, bbox, score)") from None
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
    image_id, cat = arr[:, 0].astype(np.int64), arr[:, 1].astype(np.int64)
    unknown_images = np.setdiff1d(image_id, known_ids)
    if unknown_images.size:
        shown = ", ".join(map(str, unknown_images[:5].tolist()))
        raise ValueError(f"detections for {unknown_images.size} image ids not in {gt.source}: {shown}")
    unknown_cats = np.setdiff1d(cat, gt.category_ids)
    if unknown_cats.size:
        raise ValueError(f"detections with category ids not in {gt.source}: {unknown_cats[:5].tolist()}")
    if not np.isfinite(arr[:, 2:]).all():
        raise ValueError("detections with non-finite scores or boxes")
    keep = np.ones(len(arr), dtype=bool) if img_ids is None else np.isin(image_id, img_ids)
    boxes = arr[keep, 3:7]
    if gt.inclusive:  # 0-based continuous -> the devkit's 1-based inclusive pixels
        boxes[:, :2] += 1.0
    return np.searchsorted(gt.image_ids, image_id[keep]), cat[keep], arr[keep, 2], boxes


def evaluate_voc(
    gt: VOCGroundTruth,
    detections: Iterable[Mapping[str, Any]],
    metric: str = "voc07",
    *,
    iou_threshold: float = 0.5,
    img_ids: Iterable[int] | None = None,
) -> VOCResult:
    """Per-class AP and mAP of COCO-format detections (``image_id``, ``category_id``,
    ``bbox`` XYWH, ``score``) against ``gt``.

    Args:
        metric: ``"voc07"`` (11-point) or ``"voc2010"`` (area under the precision envelope).
        iou_threshold: a match needs IoU strictly above it.
        img_ids: evaluate only these images (ground truth and detections); default all.

    Raises:
        ValueError: unknown metric, or detections of image / category ids not in ``gt``.
    """
    if metric not in VOC_METRICS:
        raise ValueError(f"unknown VOC metric {metric!r}; expected one of {VOC_METRICS}")
    known_ids = gt.image_ids
    if img_ids is not None:
        wanted = np.unique(np.asarray(list(img_ids), dtype=np.int64))
        missing = np.setdiff1d(wanted, gt.image_ids)
        if missing.size:
            raise ValueError(f"img_ids not in {gt.source}: {missing[:5].tolist()}")
        mask = np.isin(gt.image_ids[gt.image_index], wanted) if len(gt.labels) else np.zeros(0, dtype=bool)
        old_ids = gt.image_ids
        gt = VOCGroundTruth(
            image_ids=wanted,
            category_ids=gt.category_ids,
            class_names=gt.class_names,
            boxes=gt.boxes[mask],
            labels=gt.labels[mask],
            image_index=np.searchsorted(wanted, old_ids[gt.image_index[mask]]),
            difficult=gt.difficult[mask],
            inclusive=gt.inclusive,
            source=gt.source,
        )
        img_ids = wanted
    det_index, det_cat, det_score, det_boxes = _parse_detections(gt, detections, img_ids, known_ids)

    per_class: dict[str, float | None] = {}
    positives: dict[str, int] = {}
    counts: dict[str, int] = {}
    names = _unique_names(gt.class_names, gt.category_ids)
    for cat, name in zip(gt.category_ids, names):
        mine = np.nonzero(det_cat == cat)[0]
        mine = mine[np.argsort(-det_score[mine], kind="stable")]
        tp, fp, npos = _class_tp_fp(gt, cat, det_index[mine], det_boxes[mine], iou_threshold)
        positives[name], counts[name] = npos, len(mine)
        if npos == 0:
            per_class[name] = None
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        per_class[name] = voc_ap(recall, precision, metric)
    aps = [ap for ap in per_class.values() if ap is not None]
    return VOCResult(
        metric=metric,
        mAP=float(np.mean(aps)) if aps else None,
        per_class_ap=per_class,
        num_positives=positives,
        num_detections=counts,
        num_images=len(gt.image_ids),
    )


def _unique_names(names: Sequence[str], cat_ids: Sequence[int]) -> list[str]:
    seen: dict[str, int] = {}
    for n in names:
        seen[n] = seen.get(n, 0) + 1
    return [f"{n} ({c})" if seen[n] > 1 else n for n, c in zip(names, cat_ids)]
