"""COCO box / mask / keypoint evaluation on top of faster-coco-eval (or pycocotools as a fallback).

The backends compute the metrics; this module loads ground truth once, validates and
sanitises results, hides the backends' printing, and returns one typed `EvalResult`.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detkit.utils.gc_pause import paused_gc

__all__ = [
    "COCO_PERSON_SIGMAS",
    "DEFAULT_KEYPOINT_SIGMA",
    "KEYPOINT_STAT_NAMES",
    "STAT_NAMES",
    "COCOEvaluator",
    "EvalResult",
    "format_summary",
    "gather_and_deduplicate",
]

STAT_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "APs",
    "APm",
    "APl",
    "AR1",
    "AR10",
    "AR100",
    "ARs",
    "ARm",
    "ARl",
)
"""Names of the 12 COCO summary numbers, in pycocotools' `stats` order (AP at IoU .50:.95, AP50, AP75,
AP small / medium / large, AR at 1 / 10 / 100 detections, AR small / medium / large)."""
# (is_ap, iou threshold or None for .50:.95, area range, max detections), in STAT_NAMES order.
_STAT_SPECS = (
    (True, None, "all", 100),
    (True, 0.5, "all", 100),
    (True, 0.75, "all", 100),
    (True, None, "small", 100),
    (True, None, "medium", 100),
    (True, None, "large", 100),
    (False, None, "all", 1),
    (False, None, "all", 10),
    (False, None, "all", 100),
    (False, None, "small", 100),
    (False, None, "medium", 100),
    (False, None, "large", 100),
)
# Keypoints (OKS): 10 numbers, areas medium / large only, 20 detections per image, as COCO.
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
_KEYPOINT_STAT_SPECS = tuple(
    (is_ap, iou, area, 20) for is_ap in (True, False) for iou, area in
    ((None, "all"), (0.5, "all"), (0.75, "all"), (None, "medium"), (None, "large"))
)  # fmt: skip
# The COCO person keypoints' OKS sigmas (nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles).
COCO_PERSON_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072,
    0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)  # fmt: skip
# Sigma of every keypoint of a data set with other than 17 keypoints and no `keypoint_sigmas` of its
# own: about COCO's loosest (hips 0.107, shoulders 0.079), since how precisely such points are
# annotated is unknown; OKS 0.5 is then reached at ~0.24 sqrt(area) from the true point.
DEFAULT_KEYPOINT_SIGMA = 0.1
_BACKENDS = ("auto", "faster_coco_eval", "pycocotools")
_IOU_TYPES = ("bbox", "segm", "keypoints")


@dataclass
class EvalResult:
    """Outcome of one COCO evaluation.

    `stats` holds the 12 standard numbers in COCO order (-1 where COCO leaves a metric
    undefined, e.g. APs without small ground truth); for keypoints the 10 of COCO's keypoint
    summary (`KEYPOINT_STAT_NAMES`). `per_class_ap` is AP@[.5:.95]
    (all areas, 100 detections) per category name; categories without ground truth are
    left out. `precision` is the backend's `Tensor[T, R, K, A, M]` precision array
    (IoU thresholds, recall thresholds, categories, area ranges, max detections).
    """

    iou_type: str
    backend: str
    stats: dict[str, float]
    per_class_ap: dict[str, float]
    precision: np.ndarray = field(repr=False)
    summary: str = field(repr=False)
    category_names: list[str] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Json-serialisable metrics (stats and per-class AP)."""
        return {
            "iou_type": self.iou_type,
            "backend": self.backend,
            "stats": dict(self.stats),
            "per_class_ap": dict(self.per_class_ap),
        }


def format_summary(
    stats: Mapping[str, float], iou_thresholds: Sequence[float] = (0.5, 0.95), *, keypoints: bool = False
) -> str:
    """The standard 12-line COCO summary table for `stats` (keys `STAT_NAMES`); with `keypoints`
    the 10-line keypoint table (keys `KEYPOINT_STAT_NAMES`)."""
    lines = []
    lo, hi = iou_thresholds[0], iou_thresholds[-1]
    names, specs = (KEYPOINT_STAT_NAMES, _KEYPOINT_STAT_SPECS) if keypoints else (STAT_NAMES, _STAT_SPECS)
    for name, (is_ap, iou, area, max_dets) in zip(names, specs):
        title, kind = ("Average Precision", "(AP)") if is_ap else ("Average Recall", "(AR)")
        iou_str = f"{lo:0.2f}:{hi:0.2f}" if iou is None else f"{iou:0.2f}"
        lines.append(
            f" {title:<18} {kind} @[ IoU={iou_str:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {stats[name]:0.3f}"
        )
    return "\n".join(lines)


def _resolve_backend(backend: str) -> str:
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            return "pycocotools"
        return "faster_coco_eval"
    return backend


def _describe_ids(ids: Iterable[Any], limit: int = 5) -> str:
    ids = sorted(ids, key=repr)
    text = ", ".join(repr(i) for i in ids[:limit])
    return text + (f" (and {len(ids) - limit} more)" if len(ids) > limit else "")


def _annotation_area(ann: Mapping[str, Any], images: Mapping[int, Mapping[str, Any]]) -> tuple[float, str]:
    """Area of a ground-truth annotation without one: from its segmentation, else its box."""
    seg = ann.get("segmentation")
    img = images.get(ann.get("image_id"), {})
    if seg and isinstance(img.get("height"), int) and isinstance(img.get("width"), int):
        from pycocotools import mask as mask_utils

        try:
            h, w = img["height"], img["width"]
            if isinstance(seg, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
                rle = mask_utils.frPyObjects(seg, h, w)
            else:
                rle = seg
            return float(mask_utils.area(rle)), "segmentation"
        except (TypeError, ValueError, KeyError, IndexError):
            pass  # an unusable segmentation: fall back to the box
    box = ann.get("bbox")
    if isinstance(box, (list, tuple)) and len(box) == 4 and all(_is_finite_number(v) for v in box):
        return float(box[2]) * float(box[3]), "bbox"
    raise ValueError(f"annotation id {ann.get('id')!r} has no area, and no usable segmentation or bbox to compute it")


def _with_areas(annotations: Sequence[Any], images: Sequence[Any]) -> tuple[list[Any], dict[str, int]]:
    """Annotations with `area` filled in where missing and `iscrowd` 0 where missing (new dicts; the
    input is not changed), and how many areas came from a segmentation / a box and how many had no
    `iscrowd` (key "iscrowd": both backends then see 0). Duplicate annotation ids are refused."""
    seen: set = set()
    for ann in annotations:
        if not isinstance(ann, Mapping):
            raise ValueError(f"annotation entry is not an object: {ann!r:.100}")
        aid = ann.get("id")
        if aid in seen:
            raise ValueError(f"duplicate annotation id {aid!r}: annotation ids must be unique")
        seen.add(aid)
    counts = {"segmentation": 0, "bbox": 0, "iscrowd": 0}
    if all(_is_finite_number(a.get("area")) and "iscrowd" in a for a in annotations):
        return list(annotations), counts
    out = []
    by_id = {img.get("id"): img for img in images if isinstance(img, Mapping)}
    for ann in annotations:
        if not _is_finite_number(ann.get("area")):
            area, source = _annotation_area(ann, by_id)
            counts[source] += 1
            ann = {**ann, "area": area}
        if "iscrowd" not in ann:  # faster-coco-eval takes 0, pycocotools fails: 0 for both
            counts["iscrowd"] += 1
            ann = {**ann, "iscrowd": 0}
        out.append(ann)
    return out, counts


def _keypoint_categories(categories: Sequence[Any]) -> tuple[list[str], list[float] | None]:
    """The keypoint names the categories give (one set for all), and their `keypoint_sigmas` if any."""
    named = [c for c in categories if isinstance(c, Mapping) and c.get("keypoints")]
    if not named:
        return [], None
    names = list(named[0]["keypoints"])
    sigmas = named[0].get("keypoint_sigmas")
    for c in named:
        if list(c["keypoints"]) != names or c.get("keypoint_sigmas") != sigmas:
            raise ValueError(
                f"category id {c.get('id')!r} names other keypoints (or keypoint_sigmas) than category id "
                f"{named[0].get('id')!r}: one keypoint set per data set"
            )
    return names, None if sigmas is None else [float(v) for v in sigmas]


def _with_keypoint_fields(annotations: list[Any], num: int) -> list[Any]:
    """Annotations with `keypoints` (v = 0 everywhere where missing) and `num_keypoints` (labelled
    points, where missing), which the backends' OKS reads; new dicts where a field is added."""
    out = []
    for ann in annotations:
        if "keypoints" not in ann:
            ann = {**ann, "keypoints": [0] * (3 * num), "num_keypoints": 0}
        elif "num_keypoints" not in ann:
            ann = {**ann, "num_keypoints": sum(1 for v in ann["keypoints"][2::3] if v > 0)}
        out.append(ann)
    return out


def _is_finite_number(v: Any) -> bool:
    if type(v) is float:  # the common cases first: called per prediction value
        return math.isfinite(v)
    return type(v) is int or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


@paused_gc()
def _load_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _is_compressed_rle(seg: Any, size: list[int] | None) -> bool:
    """`seg` is a compressed COCO RLE ({"size": [h, w], "counts": str | bytes}) of `size` (any when None)."""
    if (type(seg) is not dict and not isinstance(seg, Mapping)) or not isinstance(seg.get("counts"), (str, bytes)):
        return False
    got = seg.get("size")
    if got == size:
        return True
    if not isinstance(got, (list, tuple)) or len(got) != 2:
        return False
    return size is None or list(got) == size


def _mask_error(i: int, image_id: Any, seg: Any, size: list[int] | None) -> str:
    where = f"result #{i} (image_id {image_id!r})"
    if isinstance(seg, Mapping) and isinstance(seg.get("counts"), (str, bytes)):
        if size is not None and isinstance(seg.get("size"), (list, tuple)):
            return f"{where}: mask size {seg['size']!r} is not the image's [height, width] {size!r}"
        return f"{where}: segmentation 'size' must be [height, width], got {seg.get('size')!r}"
    return (
        f"{where}: segmentation must be a compressed RLE {{'size': [h, w], 'counts': str}} "
        f"(pycocotools.mask.encode), got {seg!r:.80}"
    )


def _add_result_fields(results: list[dict], iou_type: str) -> None:
    """What faster-coco-eval's `loadRes` adds to each result, with the same values: `id`
    (1, 2, ... in order), `iscrowd` 0 and `area` (box: w * h; mask: its pixel count, all
    masks decoded in one call). Masks get no `bbox`: the backend reads only `id`, `score`,
    `area`, `iscrowd` and the mask of a segm result."""
    if iou_type == "segm":
        from faster_coco_eval.core import mask as mask_utils

        areas = mask_utils.area([r["segmentation"] for r in results]).tolist() if results else []
    elif iou_type == "keypoints":  # as both backends' loadRes: the result's box, else the box around its points
        areas = []
        for r in results:
            if "bbox" not in r:
                xs, ys = r["keypoints"][0::3], r["keypoints"][1::3]
                r["bbox"] = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
            areas.append(r["bbox"][2] * r["bbox"][3])
    else:
        areas = [r["bbox"][2] * r["bbox"][3] for r in results]
    for i, (r, area) in enumerate(zip(results, areas), 1):
        r["area"], r["id"], r["iscrowd"] = area, i, 0


class COCOEvaluator:
    """Evaluates COCO-format results against one ground-truth annotation set.

    Args:
        annotations: path of a COCO annotation json, its loaded dict, or a loaded `COCO`
            object (pycocotools or faster-coco-eval; reused for that backend).
    """

    @paused_gc()
    def __init__(self, annotations: str | os.PathLike | Mapping[str, Any] | Any):
        self._gt_cache: dict[str, Any] = {}
        if isinstance(annotations, (str, os.PathLike)):
            dataset = _load_json(annotations)
        elif isinstance(annotations, Mapping):
            dataset = dict(annotations)
        elif isinstance(getattr(annotations, "dataset", None), Mapping):
            dataset = annotations.dataset
            module = type(annotations).__module__
            if module.startswith("faster_coco_eval"):
                self._gt_cache["faster_coco_eval"] = annotations
            elif module.startswith("pycocotools"):
                self._gt_cache["pycocotools"] = annotations
        else:
            raise TypeError(f"annotations must be a path, a dict or a COCO object, got {type(annotations)}")
        if not isinstance(dataset, Mapping) or "images" not in dataset or "categories" not in dataset:
            raise ValueError("ground truth must be a COCO dict with 'images' and 'categories'")
        dataset.setdefault("annotations", [])
        # `computed_areas`: how many missing `area` values came from a segmentation / a box;
        # `missing_iscrowd`: how many annotations had no `iscrowd` (taken as 0 by both backends)
        dataset["annotations"], self.computed_areas = _with_areas(dataset["annotations"], dataset["images"])
        self.missing_iscrowd = self.computed_areas.pop("iscrowd")
        self._dataset = dataset
        self.image_ids: frozenset[int] = frozenset(int(img["id"]) for img in dataset["images"])
        self.category_names: dict[int, str] = {int(c["id"]): str(c["name"]) for c in dataset["categories"]}
        self._mask_sizes: dict[int, list[int]] = {  # [h, w] a result's mask must have, where known
            int(img["id"]): [img["height"], img["width"]]
            for img in dataset["images"]
            if type(img.get("height")) is int and type(img.get("width")) is int
        }
        self._keypoint_error: str | None = None  # raised by a keypoint evaluation only: boxes stay evaluable
        try:
            self.keypoint_names, self.keypoint_sigmas = _keypoint_categories(dataset["categories"])
        except ValueError as e:
            self.keypoint_names, self.keypoint_sigmas, self._keypoint_error = [], None, str(e)
        if self.keypoint_names:
            dataset["annotations"] = _with_keypoint_fields(dataset["annotations"], len(self.keypoint_names))

    # ------------------------------------------------------------------ backends
    def _dataset_copy(self) -> dict[str, Any]:
        # Backends write into annotation dicts (`ignore`, RLEs); each backend gets its own.
        data = dict(self._dataset)
        data["annotations"] = [dict(a) for a in self._dataset["annotations"]]
        return data

    def _ground_truth(self, backend: str) -> Any:
        if backend not in self._gt_cache:
            if backend == "faster_coco_eval":
                from faster_coco_eval import COCO

                gt = COCO(self._dataset_copy())
            else:
                from pycocotools.coco import COCO

                gt = COCO()
                gt.dataset = self._dataset_copy()
                with contextlib.redirect_stdout(io.StringIO()):
                    gt.createIndex()
            self._gt_cache[backend] = gt
        return self._gt_cache[backend]

    def _detections(self, backend: str, gt: Any, results: list[dict], iou_type: str) -> Any:
        """The backend's result set of `results` (our own fresh dicts, completed in place).

        pycocotools: its `loadRes`. faster-coco-eval: the fields its `loadRes` adds, in one
        pass (`_add_result_fields`): its `loadRes` decodes every mask twice, one call per
        mask, for an area and a box that mask evaluation never reads.
        """
        if results and backend == "pycocotools":
            with contextlib.redirect_stdout(io.StringIO()):
                return gt.loadRes(results)
        # pycocotools' loadRes also fails on an empty list: build the result set directly.
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCO

            _add_result_fields(results, iou_type)
        else:
            from pycocotools.coco import COCO
        dt = COCO()
        dt.dataset = {
            "images": list(gt.dataset["images"]),
            "categories": [dict(c) for c in gt.dataset["categories"]],
            "annotations": results,
        }
        with contextlib.redirect_stdout(io.StringIO()):
            dt.createIndex()
        return dt

    # ---------------------------------------------------------------- validation
    def _sanitise(self, results: Sequence[Mapping[str, Any]], iou_type: str) -> list[dict]:
        """Fresh minimal result dicts (backends mutate theirs); raises on bad ids / fields.

        For mask evaluation the box is dropped so that the backends take the instance
        area (small / medium / large) from the mask, not from the box.
        """
        geometry = {"bbox": "bbox", "segm": "segmentation"}.get(iou_type, iou_type)
        num_values = 3 * len(self.keypoint_names)
        clean = []
        image_ids, cat_ids = set(), set()
        for i, r in enumerate(results):
            if type(r) is not dict and not isinstance(r, Mapping):
                raise ValueError(f"result #{i} is not an object: {r!r:.100}")
            try:
                image_id, cat_id, geom, score = (
                    r["image_id"],
                    r["category_id"],
                    r[geometry],
                    r["score"],
                )
            except KeyError as e:
                raise ValueError(f"result #{i} has no {e.args[0]!r} field (needed for iou_type={iou_type!r})") from None
            if geometry == "bbox" and (not isinstance(geom, (list, tuple)) or len(geom) != 4):
                raise ValueError(f"result #{i}: bbox must be [x, y, w, h], got {geom!r}")
            if geometry == "segmentation" and not _is_compressed_rle(geom, self._mask_sizes.get(image_id)):
                raise ValueError(_mask_error(i, image_id, geom, self._mask_sizes.get(image_id)))
            if geometry == "keypoints" and (
                not isinstance(geom, (list, tuple)) or len(geom) != num_values or not all(map(_is_finite_number, geom))
            ):
                raise ValueError(
                    f"result #{i} (image_id {image_id!r}): keypoints must be {num_values} finite numbers "
                    f"[x, y, v] * {num_values // 3}, got {geom!r:.80}"
                )
            box = r.get("bbox")
            if not isinstance(box, (list, tuple)):
                box = ()
            if not (_is_finite_number(score) and all(map(_is_finite_number, box))):
                bad = "bbox" if _is_finite_number(score) else "score"
                raise ValueError(
                    f"result #{i} (image_id {image_id!r}): non-finite or non-numeric {bad} "
                    f"(bbox {r.get('bbox')!r}, score {score!r})"
                )
            image_ids.add(image_id)
            cat_ids.add(cat_id)
            clean.append(
                {
                    "image_id": image_id,
                    "category_id": cat_id,
                    geometry: geom,
                    "score": score,
                }
            )
            if geometry == "keypoints" and len(box) == 4:  # the backends take a keypoint result's area from its box
                clean[-1]["bbox"] = box
        unknown = image_ids - self.image_ids
        if unknown:
            raise ValueError(f"results reference image id(s) not in the ground truth: {_describe_ids(unknown)}")
        unknown = cat_ids - self.category_names.keys()
        if unknown:
            raise ValueError(f"results reference unknown category id(s): {_describe_ids(unknown)}")
        return clean

    # ---------------------------------------------------------------- evaluation
    @paused_gc()
    def evaluate(
        self,
        results: Sequence[Mapping[str, Any]] | str | os.PathLike,
        iou_type: str = "bbox",
        *,
        backend: str = "auto",
        img_ids: Iterable[int] | None = None,
        verbose: bool = True,
        kpt_sigmas: Sequence[float] | None = None,
    ) -> EvalResult:
        """COCO metrics of `results` (list of result dicts or a results json path).

        Args:
            iou_type: "bbox", "segm" or "keypoints" (OKS; results carry `keypoints` [x, y, v] * P,
                the categories name their `keypoints`).
            backend: "faster_coco_eval", "pycocotools", or "auto" (the first if importable).
            img_ids: images to evaluate (default: every ground-truth image).
            verbose: print the summary table.
            kpt_sigmas: keypoints: the OKS sigma of each keypoint. Default: the categories'
                `keypoint_sigmas` (a detkit field), else COCO's person sigmas for 17 keypoints,
                else `DEFAULT_KEYPOINT_SIGMA` each.
        """
        if iou_type not in _IOU_TYPES:
            raise ValueError(f"iou_type must be one of {_IOU_TYPES}, got {iou_type!r}")
        sigmas = self._sigmas(kpt_sigmas) if iou_type == "keypoints" else None
        backend = _resolve_backend(backend)
        if isinstance(results, (str, os.PathLike)):
            results = _load_json(results)
        if not isinstance(results, Sequence) or isinstance(results, (str, bytes)):
            kind = "an object" if isinstance(results, Mapping) else type(results).__name__
            raise ValueError(
                f"predictions must be a list of COCO results ({{image_id, category_id, bbox, score}}), got {kind}"
            )
        clean = self._sanitise(results, iou_type)

        if img_ids is None:
            eval_img_ids = sorted(self.image_ids)
        else:
            eval_img_ids = sorted({int(i) for i in img_ids})
            unknown = set(eval_img_ids) - self.image_ids
            if unknown:
                raise ValueError(f"img_ids not in the ground truth: {_describe_ids(unknown)}")

        gt = self._ground_truth(backend)
        dt = self._detections(backend, gt, clean, iou_type)
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCOeval_faster

            coco_eval = COCOeval_faster(
                gt, dt, iou_type, print_function=lambda *args, **kwargs: None, kpt_oks_sigmas=sigmas
            )
            coco_eval.params.imgIds = eval_img_ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        else:
            from pycocotools.cocoeval import COCOeval

            with contextlib.redirect_stdout(io.StringIO()):
                coco_eval = COCOeval(gt, dt, iou_type)
                if sigmas is not None:
                    coco_eval.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
                coco_eval.params.imgIds = eval_img_ids
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()

        names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES
        stats = {name: float(v) for name, v in zip(names, np.asarray(coco_eval.stats)[: len(names)])}
        precision = np.asarray(coco_eval.eval["precision"], dtype=np.float64)
        cat_ids = [int(c) for c in coco_eval.params.catIds]
        names = self._unique_names(cat_ids)
        per_class_ap = {}
        for k, name in enumerate(names):
            p = precision[:, :, k, 0, -1]  # all areas, largest maxDets
            valid = p > -1
            if valid.any():
                per_class_ap[name] = float(p[valid].mean())
        iou_thrs = np.asarray(coco_eval.params.iouThrs, dtype=np.float64)
        summary = format_summary(stats, (float(iou_thrs[0]), float(iou_thrs[-1])), keypoints=iou_type == "keypoints")
        if verbose:
            print(summary)
        return EvalResult(
            iou_type=iou_type,
            backend=backend,
            stats=stats,
            per_class_ap=per_class_ap,
            precision=precision,
            summary=summary,
            category_names=names,
        )

    def _sigmas(self, given: Sequence[float] | None) -> list[float]:
        """The OKS sigma of each keypoint (see `evaluate`)."""
        num = len(self.keypoint_names)
        if self._keypoint_error:
            raise ValueError(self._keypoint_error)
        if not num:
            raise ValueError("iou_type='keypoints' needs ground-truth categories that name their 'keypoints'")
        sigmas = given if given is not None else self.keypoint_sigmas
        if sigmas is None:
            sigmas = COCO_PERSON_SIGMAS if num == 17 else (DEFAULT_KEYPOINT_SIGMA,) * num
        sigmas = [float(v) for v in sigmas]
        if len(sigmas) != num or not all(math.isfinite(v) and v > 0 for v in sigmas):
            raise ValueError(f"keypoint sigmas must be {num} positive numbers (one per keypoint), got {sigmas}")
        return sigmas

    def _unique_names(self, cat_ids: Sequence[int]) -> list[str]:
        names = [self.category_names[c] for c in cat_ids]
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        return [f"{n} ({c})" if counts[n] > 1 else n for n, c in zip(names, cat_ids)]


def gather_and_deduplicate(results_per_rank: Sequence[Sequence[dict]]) -> list[dict]:
    """Merge per-rank result lists, dropping images seen on an earlier rank.

    Distributed samplers pad the dataset, so some images are predicted on two ranks.
    Results are grouped by `image_id`; the first rank holding an image keeps all of its
    results for that image and later ranks' results for it are dropped.
    """
    merged: list[dict] = []
    claimed: set = set()
    for rank_results in results_per_rank:
        rank_images = {r["image_id"] for r in rank_results}
        new_images = rank_images - claimed
        merged.extend(r for r in rank_results if r["image_id"] in new_images)
        claimed |= rank_images
    return merged
