"""Everything `detkit analyze` computes and writes, from loaded json data."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detkit.analysis.coco_errors import analyze_coco_errors
from detkit.analysis.confusion import confusion_matrix
from detkit.analysis.dataset import dataset_statistics
from detkit.analysis.report import draw_image, write_report
from detkit.evaluation import COCOEvaluator

__all__ = ["analyze", "split_known_predictions"]


def split_known_predictions(
    predictions: Sequence[Any], image_ids: set, category_ids: set
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The predictions whose image and category are in the annotations, and one note per kind left out."""
    kept, unknown_images, unknown_categories = [], {}, {}
    for p in predictions:
        if not isinstance(p, Mapping):
            raise ValueError(f"predictions must be COCO result objects, got {p!r:.80}")
        if p.get("image_id") not in image_ids:
            unknown_images[p.get("image_id")] = unknown_images.get(p.get("image_id"), 0) + 1
        elif p.get("category_id") not in category_ids:
            unknown_categories[p.get("category_id")] = unknown_categories.get(p.get("category_id"), 0) + 1
        else:
            kept.append(p)
    notes = []
    for what, counts in (("image ids", unknown_images), ("category ids", unknown_categories)):
        if counts:
            ids = ", ".join(repr(i) for i in sorted(counts, key=repr)[:5]) + (" ..." if len(counts) > 5 else "")
            notes.append(
                f"left out {sum(counts.values())} predictions with {len(counts)} {what} not in the annotations: {ids}"
            )
    return kept, notes


def _mask_analysis(evaluator: COCOEvaluator, predictions: list, notes: list[str]):
    """The segm error analysis where every prediction has a mask and every object a segmentation;
    None (with a note when only some have masks, or the objects have none) otherwise."""
    with_masks = sum("segmentation" in p for p in predictions)
    if with_masks == 0:
        return None
    if with_masks < len(predictions):
        missing = len(predictions) - with_masks
        notes.append(f"{missing} of {len(predictions)} predictions have no mask: no mask analysis")
        return None
    bare = next((a for a in evaluator._dataset["annotations"] if not a.get("segmentation")), None)
    if bare is not None:
        notes.append(f"annotation id {bare.get('id')!r} (and maybe others) has no segmentation: no mask analysis")
        return None
    return analyze_coco_errors(evaluator, predictions, "segm")


def _worst_images(analysis, confusion, n: int) -> list[tuple[int, str]]:
    """Image indices: the `n` lowest per-image AP50, then the most false positives / missed objects."""
    m = analysis.matches
    aps = np.array([-1.0 if v is None else v for v in (analysis.image_ap[int(i)] for i in m.image_ids)])
    fp, missed = confusion.image_false_positives, confusion.image_missed
    chosen: list[tuple[int, str]] = []
    seen: set[int] = set()
    with_objects = np.flatnonzero(aps >= 0)
    ranked = with_objects[np.lexsort((-fp[with_objects], aps[with_objects]))]
    lists = ((ranked, "lowest AP50"), (np.argsort(-fp, kind="stable"), "most false positives"),
             (np.argsort(-missed, kind="stable"), "most missed objects"))  # fmt: skip
    for order, reason in lists:
        count = 0
        for i in order:
            if count == n or (reason != "lowest AP50" and (fp if "positives" in reason else missed)[i] == 0):
                break
            if int(i) not in seen:
                seen.add(int(i))
                chosen.append((int(i), reason))
                count += 1
    return chosen


def _draw_worst(dataset, analysis, confusion, images_dir: str, output: str, n: int) -> tuple[list[dict], list[str]]:
    m = analysis.matches
    files = {int(img["id"]): img.get("file_name") for img in dataset["images"]}
    names = analysis.category_names
    pictures, missing = [], []
    os.makedirs(os.path.join(output, "images"), exist_ok=True)
    dets_of, gts_of = m.per_image()
    for i, reason in _worst_images(analysis, confusion, n):
        image_id = int(m.image_ids[i])
        file_name = files.get(image_id)
        path = os.path.join(images_dir, file_name) if file_name else None
        if path is None or not os.path.isfile(path):
            missing.append(str(file_name or f"image id {image_id}"))
            continue
        d = dets_of[i][m.det_score[dets_of[i]] >= confusion.score_threshold]
        objects = [(names[m.gt_class[g]], m.gt_box[g]) for g in gts_of[i] if not m.gt_crowd[g]]
        dets = [(names[m.det_class[j]], int(m.det_class[j]), float(m.det_score[j]), m.det_box[j]) for j in d]
        out = f"images/{len(pictures):03d}_{image_id}.jpg"
        draw_image(path, objects, dets, os.path.join(output, out))
        ap = analysis.image_ap[image_id]
        ap_text = "—" if ap is None else f"{ap:.3f}"
        caption = (
            f"<b>{reason}</b>: {file_name} (id {image_id}) &middot; AP50 {ap_text} &middot; "
            f"{confusion.image_false_positives[i]} false positives, {confusion.image_missed[i]} missed"
        )
        pictures.append({"file": out, "caption": caption, "image_id": image_id, "file_name": file_name,
                         "reason": reason})  # fmt: skip
    return pictures, missing


def analyze(
    dataset: Mapping[str, Any],
    predictions: Sequence[Any] | None,
    output: str,
    *,
    images_dir: str | None = None,
    score_threshold: float = 0.3,
    iou_threshold: float = 0.5,
    worst: int = 12,
    title: str = "detkit analyze",
    model: Any = None,
) -> dict[str, Any]:
    """Analyse `predictions` (COCO box results, or None for the data set alone) against the COCO
    annotation dict `dataset`; writes `output/index.html` and `output/analysis.json`, returns the
    json's content. Results with masks (`segmentation`) get a mask (segm) analysis too. `worst`
    images are drawn from `images_dir` (none without it, or with 0). `model` (a detector) adds its
    input size and how many objects its RPN's anchors reach."""
    evaluator = COCOEvaluator(dataset)
    report: dict[str, Any] = {"title": title, "notes": []}
    report["dataset"] = dataset_statistics(evaluator._dataset)
    if model is not None:
        from detkit.analysis.anchors import anchor_coverage  # torch only when a model is given

        report["anchors"] = anchor_coverage(model, evaluator._dataset)
    analysis = segm_analysis = None
    if predictions is not None:
        if not isinstance(predictions, list):
            raise ValueError(f"predictions must be a list of COCO results, got {type(predictions).__name__}")
        kept, notes = split_known_predictions(predictions, set(evaluator.image_ids), set(evaluator.category_names))
        report["notes"] += notes
        if not kept:
            report["notes"].append("the predictions hold no detection of these annotations: data set part only")
        else:
            analysis = analyze_coco_errors(evaluator, kept)
            confusion = confusion_matrix(analysis.matches, score_threshold, iou_threshold)
            report["errors"] = {**analysis.to_dict(), "confusion": confusion.to_dict(analysis.category_names)}
            report["errors"]["image_ap50"] = {str(k): v for k, v in analysis.image_ap.items()}
            report["subtitle"] = (f"{len(evaluator.image_ids)} images, {report['dataset']['objects']} objects, "
                                  f"{len(kept)} detections; AP {analysis.stats['AP']:.3f}, "
                                  f"AP50 {analysis.stats['AP50']:.3f}")  # fmt: skip
            segm_analysis = _mask_analysis(evaluator, kept, report["notes"])
            if segm_analysis is not None:
                report["segm"] = segm_analysis.to_dict()
                report["subtitle"] += f"; mask AP {segm_analysis.stats['AP']:.3f}"
    if "subtitle" not in report:
        report["subtitle"] = f"{len(evaluator.image_ids)} images, {report['dataset']['objects']} objects"
    pictures: list[dict] = []
    if analysis is not None and worst > 0:
        if images_dir is None:
            report["images_note"] = "no --images folder given: the worst images are not drawn"
        else:
            pictures, missing = _draw_worst(evaluator._dataset, analysis, confusion, images_dir, output, worst)
            if missing:
                report["notes"].append(
                    f"{len(missing)} of the worst images are not in {images_dir}, not drawn: "
                    + ", ".join(missing[:5])
                    + (" ..." if len(missing) > 5 else "")
                )
            report["worst_images"] = [{k: p[k] for k in ("image_id", "file_name", "reason")} for p in pictures]
    write_report(output, report, analysis, pictures, segm_analysis)
    return report
