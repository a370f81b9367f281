"""`detkit evaluate`: COCO or Pascal VOC metrics of a COCO results json.

    detkit evaluate --annotations GT.json --predictions RESULTS.json [--iou-type segm] [--output M.json]
    detkit evaluate --metric voc07 --voc-root VOCdevkit/VOC2007 --predictions RESULTS.json

`--predictions` also takes a `detkit predict` output folder (its detections.json). Where predict
numbered the images itself (no `--annotations`: `image_ids: "sequential"` in its images.json),
the detections are moved to the ground truth's image ids by file name; ids that images.json
does not vouch for are refused unless they are the ground truth's, never scored as they are.
The ground truth is checked as `detkit fit` checks it (an unknown category id is an error).

Starts without torch or Lightning: the metrics come from `detkit.evaluation` (numpy and
faster-coco-eval / pycocotools). Exit status 0 on success, 2 for a missing / unreadable
input or bad arguments, 1 when the predictions do not match the ground truth.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from detkit.utils.gc_pause import paused_gc

__all__ = ["build_parser", "evaluate_main", "main", "voc_evaluate_main"]

PROG = "detkit evaluate"


class _Failed(Exception):
    """A one-line error and the exit status it ends with."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="COCO or Pascal VOC evaluation of a predictions json.")
    parser.add_argument("--annotations", help="COCO ground-truth annotation json (required unless --voc-root)")
    parser.add_argument(
        "--predictions", required=True,
        help="COCO results json (list of detections), or a `detkit predict` output folder (its detections.json; "
        "its images.json maps predict's image ids to the ground truth's by file name)",
    )  # fmt: skip
    parser.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox")
    parser.add_argument("--output", help="write metrics (stats, per-class AP) to this json")
    parser.add_argument("--backend", choices=("auto", "faster_coco_eval", "pycocotools"), default="auto")
    parser.add_argument("--pr-curve", help="write a precision-recall plot (IoU=0.50) to this PNG")
    parser.add_argument(
        "--metric", choices=("coco", "voc07", "voc2010"), default="coco",
        help="coco (default), or Pascal VOC AP at IoU > 0.5: voc07 (11-point) / voc2010 (area under the envelope)",
    )  # fmt: skip
    parser.add_argument("--voc-root", help="VOC metrics: ground truth from a VOC year folder (.../VOC2007)")
    parser.add_argument("--image-set", default="test", help="with --voc-root: ImageSets/Main/<image-set>.txt")
    parser.add_argument("--class-names", help="with --voc-root: comma-separated classes (default: the 20 VOC ones)")
    return parser


def _read_json(path: str, label: str) -> Any:
    if not os.path.isfile(path):
        raise _Failed(f"{label} file not found: {path}", 2)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # includes json.JSONDecodeError / UnicodeDecodeError
        raise _Failed(f"cannot read {label} file {path}: {e}", 2) from None


@paused_gc()  # no collection over the loaded files' millions of containers: ~1/4 of the CPU time with masks
def _evaluate_coco(args: argparse.Namespace) -> None:
    from detkit.evaluation import COCOEvaluator, save_results_json

    if args.annotations is None or args.voc_root:
        raise _Failed("--metric coco needs --annotations GT.json (--voc-root goes with --metric voc07 / voc2010)", 2)
    annotations = _read_json(args.annotations, "annotations")
    try:
        _check_annotations(annotations, with_masks=args.iou_type == "segm")
        evaluator = COCOEvaluator(annotations)
    except (ValueError, TypeError, KeyError) as e:
        raise _Failed(f"invalid annotations file {args.annotations}: {e}", 2) from None
    gt_names = {img["id"]: img.get("file_name") for img in annotations["images"]}
    predictions = _predictions(args.predictions, gt_names, args.annotations)
    if evaluator.missing_iscrowd:
        print(f"{PROG}: note: {evaluator.missing_iscrowd} annotations of {args.annotations} have no 'iscrowd'; "
              "taken as 0 (not crowd)", file=sys.stderr)  # fmt: skip
    areas = evaluator.computed_areas
    if any(areas.values()):
        print(
            f"{PROG}: note: {sum(areas.values())} annotations of {args.annotations} have no 'area'; "
            f"computed from their segmentation ({areas['segmentation']}) or box ({areas['bbox']}) "
            "(small / medium / large use it)",
            file=sys.stderr,
        )
    try:
        result = evaluator.evaluate(predictions, args.iou_type, backend=args.backend, verbose=True)
    except ValueError as e:
        raise _Failed(f"invalid predictions file {args.predictions}: {e}", 1) from None
    for name, ap in result.per_class_ap.items():
        print(f" AP[{name}] = {ap:0.3f}")
    if args.output:
        save_results_json(result.to_dict(), args.output)
    if args.pr_curve:
        from detkit.evaluation.pr_curve import plot_pr_curves

        plot_pr_curves(result.precision, result.category_names, args.pr_curve)


def _evaluate_voc(args: argparse.Namespace) -> None:
    """Pascal VOC AP (IoU > 0.5, difficult objects ignored) of the boxes; ground truth: COCO json or VOC folder."""
    from detkit.evaluation import VOCGroundTruth, evaluate_voc, save_results_json

    if args.iou_type != "bbox" or args.pr_curve:
        raise _Failed("--metric voc07 / voc2010 evaluates boxes only (no --iou-type segm, no --pr-curve)", 2)
    try:
        if args.voc_root:
            names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
            gt = VOCGroundTruth.from_voc(args.voc_root, args.image_set, names)
        elif args.annotations:
            gt = VOCGroundTruth.from_coco(args.annotations)
        else:
            raise _Failed("give --annotations GT.json or --voc-root DIR (with --image-set)", 2)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _Failed(str(e).splitlines()[0] if str(e) else type(e).__name__, 2) from None
    predictions = _predictions(args.predictions, gt.file_names, gt.source, known_ids=set(gt.image_ids.tolist()))
    if not isinstance(predictions, list):
        raise _Failed(f"{args.predictions}: expected a list of detections", 2)
    try:
        result = evaluate_voc(gt, predictions, args.metric)
    except ValueError as e:
        raise _Failed(f"invalid predictions file {args.predictions}: {e}", 1) from None
    print(result.summary)
    if args.output:
        save_results_json(result.to_dict(), args.output)


def _check_annotations(data: Any, *, with_masks: bool) -> None:
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


def _predictions(path: str, gt_names: dict, gt_source: str, known_ids: set | None = None) -> Any:
    """The detections of `--predictions` (a results json, or a `detkit predict` output folder), with
    the image ids of the ground truth (`gt_names`: image id -> file_name).

    With predict's images.json (in the folder, or beside the json): ids that predict numbered
    itself ("sequential") are mapped by file name (the ground truth's file_name exactly, else the
    base name where it is unique; files that match nothing are left out and counted); ids it took
    from annotations must name the same files as the ground truth. Without images.json, ids not
    in the ground truth are refused. Every refusal says to pass --annotations to predict.
    """
    folder = os.path.isdir(path)
    detections_path = os.path.join(path, "detections.json") if folder else path
    predictions = _read_json(detections_path, "predictions")
    meta_path = os.path.join(os.path.dirname(detections_path), "images.json")
    meta = _read_json(meta_path, "images") if os.path.isfile(meta_path) else None
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
            raise _Failed(
                f"{detections_path}: {len(unknown)} image ids not in {gt_source} ({shown}); for the output of "
                f"`detkit predict` evaluate its folder (with images.json), or {advice}",
                1,
            )
        return predictions
    entries = [e for e in meta["images"] if isinstance(e, dict)]
    matched = _match_file_names([e.get("file_name") for e in entries], gt_names)
    if meta.get("image_ids") == "sequential":
        to_gt = {e.get("id"): m for e, m in zip(entries, matched) if m is not None}
        unmatched = [e.get("file_name") for e, m in zip(entries, matched) if m is None]
        targets = list(to_gt.values())
        if len(set(targets)) < len(targets):
            twice = next(t for t in targets if targets.count(t) > 1)
            raise _Failed(f"{meta_path}: two predicted files match image id {twice} of {gt_source} "
                          f"({gt_names[twice]!r}) by base name: {advice}", 1)  # fmt: skip
        mapped = [{**r, "image_id": to_gt[r["image_id"]]} for r in predictions if r.get("image_id") in to_gt]
        if unmatched:
            print(f"{PROG}: {len(unmatched)} of {len(entries)} predicted files match no file_name of {gt_source} "
                  f"(first: {unmatched[0]!r}); their {len(predictions) - len(mapped)} detections are left out",
                  file=sys.stderr)  # fmt: skip
        if not to_gt:
            raise _Failed(f"{meta_path}: none of the {len(entries)} predicted files is an image of {gt_source}", 1)
        print(f"{PROG}: {detections_path}: image ids numbered by `detkit predict` mapped to {gt_source}'s by "
              f"file name ({len(to_gt)} images)", file=sys.stderr)  # fmt: skip
        return mapped
    for entry, gt_id in zip(entries, matched):  # ids from annotations (or an older predict): must agree
        if gt_id != entry.get("id") or entry.get("id") not in known:
            there = f"image id {gt_id}" if gt_id is not None else "no image"
            raise _Failed(
                f"{meta_path}: predicted file {entry.get('file_name')!r} has image id {entry.get('id')!r}, but "
                f"{there} in {gt_source}: the predictions were numbered for other ground truth; {advice}",
                1,
            )
    return predictions


def _match_file_names(names: list, gt_names: dict) -> list[int | None]:
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


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """`detkit evaluate ...` (`argv` without the command name); returns the exit status."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as e:  # --help or a usage error; argparse already printed
        return int(e.code or 0)
    return _exit_status(_evaluate_coco if args.metric == "coco" else _evaluate_voc, args, prog)


def _exit_status(evaluate, args: argparse.Namespace, prog: str = PROG) -> int:
    try:
        evaluate(args)
    except _Failed as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.code
    return 0


def voc_evaluate_main(args: argparse.Namespace) -> int:
    """`detkit evaluate --metric voc07|voc2010` on parsed arguments (the former `detkit.evaluation` name)."""
    return _exit_status(_evaluate_voc, args)


evaluate_main = main  # the former `detkit.evaluation` name
