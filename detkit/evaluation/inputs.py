"""Reading the inputs of an evaluation: ground truth checked as `detkit fit` checks it, and
predictions matched to the ground truth's image ids (`detkit evaluate` and `detkit analyze`).

Needs neither torch nor Lightning. Errors are one line: `FileNotFoundError` / `ValueError` for
a missing or unreadable file or invalid ground truth, `PredictionsMismatchError` for
predictions whose image ids do not belong to the ground truth.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

__all__ = ["PredictionsMismatchError", "check_annotations", "read_json", "read_predictions"]


class PredictionsMismatchError(ValueError):
    """Predictions numbered for other images than the ground truth's."""


def read_json(path: str, label: str) -> Any:
    """The json at `path`; `label` names the file in the one-line errors ("annotations", ...)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{label} file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # includes json.JSONDecodeError / UnicodeDecodeError
        raise ValueError(f"cannot read {label} file {path}: {e}") from None


def check_annotations(data: Any, *, with_masks: bool) -> None:
    """Refuse ground truth that `detkit fit` refuses (`detkit.data.CocoDetection`'s checks, shared
    through `annotation_box`): an annotation of an unknown image or category id, a malformed,
    negative or outside box; with `with_masks`, an invalid segmentation. One line, with the id."""
    from detkit.utils.coco_format import annotation_box

    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise ValueError("not COCO ground truth (needs 'images' and 'categories' lists)")
    images = {img.get("id"): img for img in data["images"] if isinstance(img, dict)}
    category_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    for ann in data.get("annotations") or []:
        if not isinstance(ann, dict):
            continue  # the evaluator names it
        img = images.get(ann.get("image_id"))
        if img is None:
            raise ValueError(f"annotation id {ann.get('id')!r}: unknown image id {ann.get('image_id')!r}")
        height, width = img.get("height"), img.get("width")
        sized = type(height) is int and type(width) is int and height > 0 and width > 0
        try:
            if sized:
                annotation_box(ann, height, width, category_ids, with_masks=with_masks)
            else:  # no image size to check the box against
                annotation_box(ann, math.inf, math.inf, category_ids)
        except ValueError as e:
            raise ValueError(f"annotation id {ann.get('id')!r}: {e}") from None


def read_predictions(
    path: str, gt_names: dict, gt_source: str, known_ids: set | None = None, *, say: Callable[[str], None] = print
) -> Any:
    """The detections of `--predictions` (a results json, or a `detkit predict` output folder), with
    the image ids of the ground truth (`gt_names`: image id -> file_name). `say` prints the
    lines that tell what was mapped or left out.

    With predict's images.json (in the folder, or beside the json): ids that predict numbered
    itself ("sequential") are mapped by file name (the ground truth's file_name exactly, else the
    base name where it is unique; files that match nothing are left out and counted); ids it took
    from annotations must name the same files as the ground truth. Without images.json, ids not
    in the ground truth are refused. Every refusal says to pass --annotations to predict.
    """
    folder = os.path.isdir(path)
    detections_path = os.path.join(path, "detections.json") if folder else path
    predictions = read_json(detections_path, "predictions")
    meta_path = os.path.join(os.path.dirname(detections_path), "images.json")
    meta = read_json(meta_path, "images") if os.path.isfile(meta_path) else None
    if not (isinstance(meta, dict) and isinstance(meta.get("images"), list) and "checkpoint" in meta):
        meta = None  # not written by `detkit predict`
    if not isinstance(predictions, list):
        return predictions  # the evaluator names the problem
    known = set(gt_names) if known_ids is None else known_ids
    advice = f"pass --annotations {gt_source} to `detkit predict` so that it uses the ground truth's image ids"
    if meta is None:
        ids = {r.get("image_id") for r in predictions if isinstance(r, dict)}
        unknown = ids - known
        if unknown:
            shown = ", ".join(map(str, sorted(unknown, key=repr)[:5]))
            raise PredictionsMismatchError(
                f"{detections_path}: {len(unknown)} image ids not in {gt_source} ({shown}); for the output of "
                f"`detkit predict` evaluate its folder (with images.json), or {advice}"
            )
        return predictions
    entries = [e for e in meta["images"] if isinstance(e, dict)]
    matched = match_file_names([e.get("file_name") for e in entries], gt_names)
    if meta.get("image_ids") == "sequential":
        to_gt = {e.get("id"): m for e, m in zip(entries, matched) if m is not None}
        unmatched = [e.get("file_name") for e, m in zip(entries, matched) if m is None]
        targets = list(to_gt.values())
        if len(set(targets)) < len(targets):
            twice = next(t for t in targets if targets.count(t) > 1)
            raise PredictionsMismatchError(
                f"{meta_path}: two predicted files match image id {twice} of {gt_source} "
                f"({gt_names[twice]!r}) by base name: {advice}"
            )
        mapped = [{**r, "image_id": to_gt[r["image_id"]]} for r in predictions if r.get("image_id") in to_gt]
        if unmatched:
            say(
                f"{len(unmatched)} of {len(entries)} predicted files match no file_name of {gt_source} "
                f"(first: {unmatched[0]!r}); their {len(predictions) - len(mapped)} detections are left out"
            )
        if not to_gt:
            raise PredictionsMismatchError(
                f"{meta_path}: none of the {len(entries)} predicted files is an image of {gt_source}"
            )
        say(
            f"{detections_path}: image ids numbered by `detkit predict` mapped to {gt_source}'s by "
            f"file name ({len(to_gt)} images)"
        )
        return mapped
    for entry, gt_id in zip(entries, matched):  # ids from annotations (or an older predict): must agree
        if gt_id != entry.get("id") or entry.get("id") not in known:
            there = f"image id {gt_id}" if gt_id is not None else "no image"
            raise PredictionsMismatchError(
                f"{meta_path}: predicted file {entry.get('file_name')!r} has image id {entry.get('id')!r}, but "
                f"{there} in {gt_source}: the predictions were numbered for other ground truth; {advice}"
            )
    return predictions


def match_file_names(names: list, gt_names: dict) -> list[int | None]:
    """The ground-truth image id of each predicted file name: the same file_name, else the same base
    name where exactly one ground-truth image has it; None where neither."""
    exact, by_base = {}, {}
    for image_id, file_name in gt_names.items():
        if isinstance(file_name, str):
            posix = file_name.replace("\\", "/")
            exact[posix] = image_id
            by_base.setdefault(posix.rsplit("/", 1)[-1], []).append(image_id)
    out = []
    for name in names:
        if not isinstance(name, str):
            out.append(None)
            continue
        hit = exact.get(name)
        if hit is None:
            ids = by_base.get(name.rsplit("/", 1)[-1], [])
            hit = ids[0] if len(ids) == 1 else None
        out.append(hit)
    return out
