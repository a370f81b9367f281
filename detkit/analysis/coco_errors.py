"""Error analysis of COCO box results: the COCO site's PR curves, TIDE-style AP lost per error
type, per-image AP.

The 12 COCO numbers and the C75 / C50 / Loc curves come from one faster-coco-eval run (COCO's
thresholds with IoU 0.1 added). The matchings that run does not expose, at IoU 0.5 with the
matched pairs (TIDE, per-image AP, confusion matrix) and at IoU 0.1 with other classes'
objects as ignored crowds (Sim / Oth), are COCO's rule vectorised in `coco_matching`.

Shape shorthand: N detections, G ground-truth objects, K categories, A area ranges (all,
small, medium, large), R recall thresholds (101).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detkit.analysis.coco_matching import (
    AREA_RANGES,
    RECALL_THRESHOLDS,
    BoxIoU,
    MaskIoU,
    grouped_average_precision,
    match_groups,
    precision_at_recall,
    precision_by_class,
)
from detkit.evaluation import STAT_NAMES, COCOEvaluator

__all__ = [
    "AREA_NAMES",
    "CURVE_NAMES",
    "ERROR_TYPES",
    "CocoErrorAnalysis",
    "Matches",
    "analyze_coco_errors",
    "average_precision",
]

CURVE_NAMES = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
"""The COCO site's error-analysis PR curves, in drawing order: C75, C50 (IoU 0.75 / 0.5), Loc (IoU 0.1),
Sim / Oth (confusions with classes of the same supercategory / any class forgiven), BG (no background
false positives), FN (no missed objects)."""
AREA_NAMES = ("all", "small", "medium", "large")
"""The COCO object-size ranges of the analysis: all, small (< 32² px), medium, large (> 96² px)."""
ERROR_TYPES = ("classification", "localisation", "both", "duplicate", "background", "missed")
"""TIDE's error types, in report order: the AP at IoU 0.5 that fixing each one alone would gain."""
POS_IOU = 0.5  # a detection is a true positive at IoU >= 0.5 (TIDE's and the confusion matrix's threshold)
BG_IOU = 0.1  # below this IoU with every object a false positive is background (the COCO site's Loc threshold)
MAX_DETS = 100


@dataclass
class Matches:
    """Detections and ground truth of a data set as flat arrays, and COCO's matching at IoU 0.5.

    Detections keep the order of the results list; `det_rank` is the rank by score within their
    (image, category), and COCO evaluates the 100 best (`det_evaluated`). `det_gt` is the index
    (into the `gt_*` arrays) of the object a detection matched at IoU 0.5, -1 for none. `iou`
    compares detections and objects as the analysis does: boxes, or masks for iou_type "segm"
    (`det_area` is then the mask's pixel count and `det_box` the box around it).
    """

    image_ids: np.ndarray  # Tensor[I] the evaluated images, in COCO's order
    category_ids: np.ndarray  # Tensor[K]
    det_image: np.ndarray  # Tensor[N] index into image_ids
    det_class: np.ndarray  # Tensor[N] index into category_ids
    det_box: np.ndarray  # Tensor[N, 4] XYWH as in the results
    det_area: np.ndarray  # Tensor[N] the box's or the mask's area (COCO's size ranges use it)
    det_score: np.ndarray  # Tensor[N]
    det_order: np.ndarray  # Tensor[N] COCO's ranking key: image order, then score rank within (image, category)
    det_rank: np.ndarray  # Tensor[N] int
    det_gt: np.ndarray  # Tensor[N] int
    gt_image: np.ndarray  # Tensor[G]
    gt_class: np.ndarray  # Tensor[G]
    gt_box: np.ndarray  # Tensor[G, 4] XYWH
    gt_area: np.ndarray  # Tensor[G] the annotations' area (COCO's size ranges use it)
    gt_crowd: np.ndarray  # Tensor[G] bool
    gt_ann_ids: np.ndarray  # Tensor[G]
    iou: BoxIoU | MaskIoU = field(repr=False)

    @property
    def det_evaluated(self) -> np.ndarray:
        """Tensor[N] bool: among the 100 best of their (image, category), which COCO evaluates."""
        return self.det_rank < MAX_DETS

    @property
    def det_ignored(self) -> np.ndarray:
        """Detections COCO ignores: matched to a crowd."""
        if len(self.gt_crowd) == 0:
            return np.zeros(len(self.det_gt), bool)
        return (self.det_gt >= 0) & self.gt_crowd[np.maximum(self.det_gt, 0)]

    @property
    def det_tp(self) -> np.ndarray:
        return (self.det_gt >= 0) & ~self.det_ignored

    def per_image(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Indices of each image's detections and objects, in `image_ids` order."""
        n = len(self.image_ids)
        return _split_by(self.det_image, n), _split_by(self.gt_image, n)


@dataclass
class CocoErrorAnalysis:
    """The COCO site's error curves and TIDE-style AP lost per error type.

    `precision` is `Tensor[7, R, K, A]` in `CURVE_NAMES` order (0 where COCO has -1), `valid`
    `Tensor[K, A]` marks the categories with ground truth in an area range; `ap` holds the area
    under each curve for all classes together (mean over the valid categories) and per class.
    """

    stats: dict[str, float]
    per_class: dict[str, dict[str, float]]
    category_names: list[str]
    precision: np.ndarray = field(repr=False)
    valid: np.ndarray = field(repr=False)
    ap: dict[str, dict[str, float]]  # area -> curve -> AP (all classes)
    class_ap: dict[str, dict[str, dict[str, float]]]  # class -> area -> curve -> AP
    tide: dict[str, float]  # "AP50" and the AP gained by fixing each error type
    error_counts: dict[str, int]
    image_ap: dict[int, float | None] = field(repr=False)  # per-image AP50; None without ground truth
    matches: Matches = field(repr=False)

    def curve(self, name: str, area: str = "all", class_name: str | None = None) -> np.ndarray:
        """Precision at the 101 recall thresholds of one curve (mean over valid classes, or one class)."""
        t, a = CURVE_NAMES.index(name), AREA_NAMES.index(area)
        if class_name is not None:
            return self.precision[t, :, self.category_names.index(class_name), a]
        keep = self.valid[:, a]
        if not keep.any():
            return np.zeros(len(RECALL_THRESHOLDS))
        return self.precision[t][:, keep, a].mean(axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stats": self.stats,
            "per_class": self.per_class,
            "curves": {
                area: {
                    name: {"ap": self.ap[area][name], "precision": _rounded(self.curve(name, area))}
                    for name in CURVE_NAMES
                }
                for area in AREA_NAMES
            },
            "class_curves": {
                cls: {
                    area: {
                        name: {"ap": self.class_ap[cls][area][name], "precision": _rounded(self.curve(name, area, cls))}
                        for name in CURVE_NAMES
                    }
                    for area in AREA_NAMES
                    if self.valid[k, AREA_NAMES.index(area)]
                }
                for k, cls in enumerate(self.category_names)
            },
            "recall_thresholds": _rounded(RECALL_THRESHOLDS),
            "tide": self.tide,
            "error_counts": self.error_counts,
        }


def _rounded(x: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in x]


def _split_by(index: np.ndarray, n: int) -> list[np.ndarray]:
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(n + 1))
    return [order[bounds[i] : bounds[i + 1]] for i in range(n)]


# ----------------------------------------------------------------------------- COCO runs
class _Runner:
    """faster-coco-eval's `COCOeval` on one evaluator's ground truth and one results list.

    Reuses `COCOEvaluator`'s validation and its backend objects (ground truth indexed once,
    results loaded once) for every run.
    """

    backend = "faster_coco_eval"

    def __init__(self, evaluator: COCOEvaluator, results: Sequence[Mapping[str, Any]], iou_type: str = "bbox"):
        self.evaluator = evaluator
        self.iou_type = iou_type
        self.results = evaluator._sanitise(results, iou_type)
        self.gt = evaluator._ground_truth(self.backend)
        self.dt = evaluator._detections(self.backend, self.gt, [dict(r) for r in self.results], iou_type)
        self.image_ids = sorted(evaluator.image_ids)
        self.category_ids = sorted(evaluator.category_names)

    def run(self) -> Any:
        """COCO's standard evaluation (summarised), 100 detections per image, with IoU 0.1 added in
        front of its thresholds: `eval["precision"]` holds the standard thresholds, `loc_precision`
        the IoU 0.1 one (each threshold is matched on its own: 0.1 changes none of the others)."""
        from faster_coco_eval import COCOeval_faster

        coco_eval = COCOeval_faster(self.gt, self.dt, self.iou_type, print_function=lambda *args, **kwargs: None)
        p = coco_eval.params
        p.imgIds, p.catIds = self.image_ids, self.category_ids
        if not np.array_equal(np.asarray(p.areaRng, np.float64), AREA_RANGES):
            raise RuntimeError(f"faster-coco-eval's area ranges {p.areaRng} are not COCO's {AREA_RANGES.tolist()}")
        standard = np.asarray(p.iouThrs, dtype=np.float64)
        p.iouThrs = np.r_[BG_IOU, standard]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.loc_precision = np.asarray(coco_eval.eval["precision"], np.float64)[:1]
        coco_eval.eval["precision"] = np.asarray(coco_eval.eval["precision"])[1:]
        coco_eval.eval["recall"] = np.asarray(coco_eval.eval["recall"])[1:]
        p.iouThrs = standard
        coco_eval.summarize()  # the 12 standard numbers
        return coco_eval


def _matches(runner: _Runner) -> Matches:
    """Flat arrays of the data and COCO's matching at IoU 0.5 (all areas, 100 detections); boxes, or
    masks for iou_type "segm"."""
    image_index = {i: n for n, i in enumerate(runner.image_ids)}
    class_index = {c: k for k, c in enumerate(runner.category_ids)}
    results = runner.results
    n = len(results)
    det_image = np.fromiter((image_index[r["image_id"]] for r in results), np.int64, n)
    det_class = np.fromiter((class_index[r["category_id"]] for r in results), np.int64, n)
    det_score = np.fromiter((r["score"] for r in results), np.float64, n)
    segm = runner.iou_type == "segm"
    if segm:
        from faster_coco_eval.core import mask as mask_utils

        det_rles = [r["segmentation"] for r in results]
        det_box = np.asarray(mask_utils.toBbox(det_rles), np.float64).reshape(n, 4) if n else np.zeros((0, 4))
        det_area = np.asarray(mask_utils.area(det_rles), np.float64) if n else np.zeros(0)  # as the backend's
    else:
        det_box = np.array([r["bbox"] for r in results], dtype=np.float64).reshape(n, 4)
        det_area = det_box[:, 2] * det_box[:, 3]
    # COCO ranks an (image, category)'s detections by score, ties in results order (a stable sort)
    order = np.lexsort((np.arange(n), -det_score, det_class, det_image))
    group = det_image[order] * len(class_index) + det_class[order]
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    det_rank = np.empty(n, np.int64)
    det_rank[order] = rank
    det_order = np.empty(n, np.int64)
    det_order[np.lexsort((det_rank, det_image))] = np.arange(n)

    anns = runner.evaluator._dataset["annotations"]
    anns = [a for a in anns if a["image_id"] in image_index and a["category_id"] in class_index]
    g = len(anns)
    gt_image = np.fromiter((image_index[a["image_id"]] for a in anns), np.int64, g)
    gt_box = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(g, 4)
    if segm:
        iou = MaskIoU(det_image, det_rles, gt_image, [runner.gt.annToRLE(a) for a in anns])
    else:
        iou = BoxIoU(det_box, gt_box)
    m = Matches(
        image_ids=np.asarray(runner.image_ids, np.int64),
        category_ids=np.asarray(runner.category_ids, np.int64),
        det_image=det_image,
        det_class=det_class,
        det_box=det_box,
        det_area=det_area,
        det_score=det_score,
        det_order=det_order,
        det_rank=det_rank,
        det_gt=np.full(n, -1, np.int64),
        gt_image=gt_image,
        gt_class=np.fromiter((class_index[a["category_id"]] for a in anns), np.int64, g),
        gt_box=gt_box,
        gt_area=np.fromiter((a["area"] for a in anns), np.float64, g),
        gt_crowd=np.fromiter((bool(a.get("iscrowd", 0)) for a in anns), bool, g),
        gt_ann_ids=np.fromiter((a["id"] for a in anns), np.int64, g),
        iou=iou,
    )
    m.det_gt = _match(m, POS_IOU, AREA_RANGES[:1])[0][:, 0]
    return m


def _match(m: Matches, iou_threshold: float, area_ranges: np.ndarray, forgiven: np.ndarray | None = None):
    """`match_groups` on the data of `m`."""
    return match_groups(
        m.det_image, m.det_class, m.det_area, m.det_rank, m.gt_image, m.gt_class, m.gt_area, m.gt_crowd, m.iou,
        iou_threshold=iou_threshold, area_ranges=area_ranges, forgiven=forgiven, max_dets=MAX_DETS,
    )  # fmt: skip


def _forgiven_precision(m: Matches, forgiven: np.ndarray) -> np.ndarray:
    """`Tensor[R, K, A]` precision at IoU 0.1 with the objects of the classes `forgiven[c]` ignored
    crowds for class c's detections (the COCO site's Sim and Oth); -1 where a class has no objects."""
    det_gt, det_ignored = _match(m, BG_IOU, AREA_RANGES, forgiven)
    in_range = (m.gt_area[:, None] >= AREA_RANGES[:, 0]) & (m.gt_area[:, None] <= AREA_RANGES[:, 1])
    counted = in_range & ~m.gt_crowd[:, None]  # Tensor[G, A]: objects COCO does not ignore
    num_gt = np.stack([np.bincount(m.gt_class[c], minlength=len(m.category_ids)) for c in counted.T], axis=1)
    return precision_by_class(m.det_class, m.det_score, m.det_order, m.det_evaluated, det_gt, det_ignored, num_gt)


def average_precision(tp: np.ndarray, num_gt: int) -> float:
    """COCO's 101-point AP of detections already ranked by score (`tp`: `Tensor[D]` bool) and
    `num_gt` objects; what `COCOeval.accumulate` computes for one category and threshold."""
    if num_gt <= 0:
        raise ValueError("average_precision needs at least one ground-truth object")
    return float(precision_at_recall(tp, num_gt).mean())


def _mean_ap(by_score: np.ndarray, mask: np.ndarray, det_class, det_tp, num_gt: np.ndarray) -> float:
    """Mean over the classes with ground truth of each class's AP of the detections in `mask`;
    `by_score` lists all detections in COCO's ranking (score, then image order and rank)."""
    rank = by_score[mask[by_score]]
    rank = rank[np.argsort(det_class[rank], kind="stable")]
    cls, tp = det_class[rank], det_tp[rank]
    bounds = np.searchsorted(cls, np.arange(len(num_gt) + 1))
    aps = [average_precision(tp[bounds[k] : bounds[k + 1]], int(num_gt[k])) for k in np.flatnonzero(num_gt > 0)]
    return float(np.mean(aps)) if aps else -1.0  # COCO's "undefined"


def _image_ap(m: Matches) -> dict[int, float | None]:
    """AP at IoU 0.5 of each image: mean over the classes it has objects of (None without objects)."""
    num_classes = len(m.category_ids)
    objects = ~m.gt_crowd
    keys, num_gt = np.unique(m.gt_image[objects] * num_classes + m.gt_class[objects], return_counts=True)
    d = np.flatnonzero(m.det_evaluated & ~m.det_ignored)  # (image, class) groups with objects: their detections
    det_keys = m.det_image[d] * num_classes + m.det_class[d]
    group = np.searchsorted(keys, det_keys)
    inside = group < len(keys)
    inside[inside] = keys[group[inside]] == det_keys[inside]
    d, group = d[inside], group[inside]
    ranked = np.lexsort((m.det_order[d], group))
    ap = grouped_average_precision(group[ranked], m.det_tp[d[ranked]], num_gt)
    image = keys // num_classes
    total = np.bincount(image, ap, minlength=len(m.image_ids))
    count = np.bincount(image, minlength=len(m.image_ids))
    return {int(i): (float(t / c) if c else None) for i, t, c in zip(m.image_ids, total, count)}


# ---------------------------------------------------------------------------- TIDE
def _classify_errors(m: Matches, per_image) -> tuple[np.ndarray, np.ndarray]:
    """Each evaluated false positive's error type (index into `ERROR_TYPES`, -1 for the rest)
    and the object it would match if fixed (classification / localisation; -1 otherwise).

    TIDE's order: localisation (0.1 <= IoU < 0.5 with an object of its class), classification
    (IoU >= 0.5 with an object of another class), duplicate (IoU >= 0.5 with an object of its
    class that a better detection took), background (IoU < 0.1 with every object), both.
    """
    n = len(m.det_score)
    kind = np.full(n, -1, np.int64)
    target = np.full(n, -1, np.int64)
    fp = m.det_evaluated & (m.det_gt < 0)
    for d, g in zip(*per_image):
        d = d[fp[d]]
        if len(d) == 0:
            continue
        g = g[~m.gt_crowd[g]]
        if len(g) == 0:
            kind[d] = ERROR_TYPES.index("background")
            continue
        iou = m.iou.pairs(d, g)
        same = m.det_class[d][:, None] == m.gt_class[g][None, :]
        iou_same, iou_other = np.where(same, iou, -1.0), np.where(same, -1.0, iou)
        best_same, best_other = iou_same.max(axis=1), iou_other.max(axis=1)
        is_loc = (best_same >= BG_IOU) & (best_same < POS_IOU)
        is_cls = ~is_loc & (best_other >= POS_IOU)
        is_dup = ~is_loc & ~is_cls & (best_same >= POS_IOU)
        is_bkg = ~is_loc & ~is_cls & ~is_dup & (np.maximum(best_same, best_other) < BG_IOU)
        kinds = np.full(len(d), ERROR_TYPES.index("both"))
        kinds[is_loc], kinds[is_cls] = ERROR_TYPES.index("localisation"), ERROR_TYPES.index("classification")
        kinds[is_dup], kinds[is_bkg] = ERROR_TYPES.index("duplicate"), ERROR_TYPES.index("background")
        kind[d] = kinds
        target[d[is_loc]] = g[iou_same[is_loc].argmax(axis=1)]
        target[d[is_cls]] = g[iou_other[is_cls].argmax(axis=1)]
    return kind, target


def _tide(m: Matches, per_image) -> tuple[dict[str, float], dict[str, int]]:
    """AP at IoU 0.5 and the AP gained by fixing each error type alone (TIDE's fixes: a
    classification / localisation error takes its object's class / box when that object is
    still free, otherwise it is removed; both / duplicate / background errors are removed;
    missed objects (not matched and no error's target) are removed from the ground truth)."""
    kind, target = _classify_errors(m, per_image)
    keep = m.det_evaluated & ~m.det_ignored
    num_gt = np.bincount(m.gt_class[~m.gt_crowd], minlength=len(m.category_ids))
    base_tp = m.det_tp

    by_score = np.lexsort((m.det_order, -m.det_score))

    def mean_ap(mask, det_class, det_tp, gt_count=num_gt) -> float:
        return _mean_ap(by_score, mask, det_class, det_tp, gt_count)

    base = mean_ap(keep, m.det_class, base_tp)
    out = {"AP50": base}
    counts = {name: int((kind == k).sum()) for k, name in enumerate(ERROR_TYPES)}
    taken = np.zeros(len(m.gt_class), bool)
    taken[m.det_gt[base_tp]] = True
    for k, name in enumerate(ERROR_TYPES[:2]):  # fixed to a true positive when the object is free
        mask, det_class, det_tp = keep.copy(), m.det_class.copy(), base_tp.copy()
        errors = np.flatnonzero(kind == k)
        errors = errors[np.lexsort((m.det_order[errors], -m.det_score[errors]))]  # best first
        free = errors[~taken[target[errors]]]
        first = free[np.unique(target[free], return_index=True)[1]]  # the best error on each free object
        mask[errors] = False
        mask[first], det_tp[first], det_class[first] = True, True, m.gt_class[target[first]]
        out[name] = mean_ap(mask, det_class, det_tp) - base
    for name in ("both", "duplicate", "background"):
        out[name] = mean_ap(keep & (kind != ERROR_TYPES.index(name)), m.det_class, base_tp) - base
    missed = ~m.gt_crowd & ~taken
    missed[target[target >= 0]] = False
    counts["missed"] = int(missed.sum())
    fixed_gt = num_gt - np.bincount(m.gt_class[missed], minlength=len(num_gt))
    valid = fixed_gt > 0  # a class whose objects were all missed has no AP left: left out, as COCO does
    out["missed"] = mean_ap(keep & valid[m.det_class], m.det_class, base_tp, fixed_gt) - base if valid.any() else 0.0
    return out, counts


# --------------------------------------------------------------------------- analysis
def analyze_coco_errors(
    evaluator: COCOEvaluator, results: Sequence[Mapping[str, Any]], iou_type: str = "bbox"
) -> CocoErrorAnalysis:
    """COCO metrics, the COCO site's error curves, TIDE-style AP lost and per-image AP of `results`.

    Curves (area under each = AP at 101 recall points, 100 detections per image):
    C75 / C50: COCO's PR at IoU 0.75 / 0.5; Loc: at IoU 0.1 (localisation errors forgiven);
    Sim: also forgiving detections on objects of another class of the same supercategory
    (classes without a supercategory are their own); Oth: of any other class; BG: every false
    positive removed (precision 1 up to the recall Oth reaches); FN: every object found (1).
    `iou_type` "bbox" compares boxes, "segm" masks (results carry compressed RLE `segmentation`).
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"error analysis covers boxes ('bbox') and masks ('segm'), got iou_type {iou_type!r}")
    runner = _Runner(evaluator, results, iou_type)
    standard = runner.run()
    stats = {name: float(v) for name, v in zip(STAT_NAMES, np.asarray(standard.stats)[: len(STAT_NAMES)])}
    names = evaluator._unique_names(runner.category_ids)
    std_p = np.asarray(standard.eval["precision"], np.float64)  # Tensor[T, R, K, A, M]
    std_r = np.asarray(standard.eval["recall"], np.float64)  # Tensor[T, K, A, M]
    thrs = np.asarray(standard.params.iouThrs)
    t50, t75 = int(np.argmin(np.abs(thrs - 0.5))), int(np.argmin(np.abs(thrs - 0.75)))

    m = _matches(runner)
    per_image = m.per_image()
    supercategory = _supercategories(evaluator, runner.category_ids)
    other_class = ~np.eye(len(supercategory), dtype=bool)
    oth = _forgiven_precision(m, other_class)
    if len(np.unique(supercategory)) == len(supercategory):  # no two classes share a supercategory
        sim = None
    else:
        sim = _forgiven_precision(m, other_class & (supercategory[:, None] == supercategory[None, :]))

    k, a = std_p.shape[2], std_p.shape[3]
    precision = np.zeros((len(CURVE_NAMES), std_p.shape[1], k, a))
    precision[0], precision[1] = std_p[t75, :, :, :, -1], std_p[t50, :, :, :, -1]
    precision[2] = standard.loc_precision[0, :, :, :, -1]
    precision[4] = oth
    precision[3] = precision[2] if sim is None else sim
    valid = precision[1, 0] > -1  # Tensor[K, A]: categories with objects in that area range
    precision[precision == -1] = 0
    precision[5] = precision[4] > 0
    precision[6] = 1.0
    precision[:, :, ~valid] = 0
    ap = {
        area: {
            name: float(np.mean(precision[t][:, valid[:, j], j].ravel())) if valid[:, j].any() else -1.0
            for t, name in enumerate(CURVE_NAMES)
        }
        for j, area in enumerate(AREA_NAMES)
    }
    class_ap = {
        cls: {
            area: {name: float(precision[t, :, c, j].mean()) for t, name in enumerate(CURVE_NAMES)}
            for j, area in enumerate(AREA_NAMES)
            if valid[c, j]
        }
        for c, cls in enumerate(names)
    }
    per_class = {}
    dets = np.bincount(m.det_class, minlength=k)
    objects = np.bincount(m.gt_class[~m.gt_crowd], minlength=k)
    for c, cls in enumerate(names):
        p = std_p[:, :, c, 0, -1]
        r = std_r[:, c, 0, -1]
        per_class[cls] = {
            "AP": float(p[p > -1].mean()) if (p > -1).any() else -1.0,
            "AP50": float(p[t50].mean()) if valid[c, 0] else -1.0,
            "AP75": float(p[t75].mean()) if valid[c, 0] else -1.0,
            "AR100": float(r[r > -1].mean()) if (r > -1).any() else -1.0,
            "objects": int(objects[c]),
            "detections": int(dets[c]),
            "images": int(len(np.unique(m.gt_image[(m.gt_class == c) & ~m.gt_crowd]))),
        }
    tide, counts = _tide(m, per_image)
    return CocoErrorAnalysis(
        stats=stats,
        per_class=per_class,
        category_names=names,
        precision=precision,
        valid=valid,
        ap=ap,
        class_ap=class_ap,
        tide=tide,
        error_counts=counts,
        image_ap=_image_ap(m),
        matches=m,
    )


def _supercategories(evaluator: COCOEvaluator, category_ids: Sequence[int]) -> np.ndarray:
    """`Tensor[K]` supercategory index per class; a class without one is its own."""
    by_id = {int(c["id"]): c for c in evaluator._dataset["categories"]}
    names: dict[Any, int] = {}
    out = []
    for cid in category_ids:
        sup = by_id[cid].get("supercategory")
        key = ("super", sup) if sup not in (None, "") else ("own", cid)
        out.append(names.setdefault(key, len(names)))
    return np.asarray(out, np.int64)
