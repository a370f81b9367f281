"""`detkit evaluate`: COCO or Pascal VOC metrics of a COCO results json.

    detkit evaluate --annotations GT.json --predictions RESULTS.json [--iou-type segm|keypoints] [--output M.json]
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
import sys
from collections.abc import Sequence

from detkit.utils.gc_pause import paused_gc

__all__ = ["build_parser", "main"]

PROG = "detkit evaluate"


class _Failed(Exception):
    """A one-line error and the exit status it ends with."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


EXAMPLES = """examples (the output of `detkit predict ... --output predictions/`, see `detkit predict --help`):
  detkit evaluate --annotations data/shapes/val/annotations.json --predictions predictions/
  detkit evaluate --annotations data/shapes/val/annotations.json --predictions predictions/detections.json \\
      --output metrics.json --pr-curve pr.png
"""


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="COCO or Pascal VOC evaluation of a predictions json.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--annotations", help="COCO ground-truth annotation json (required unless --voc-root)")
    parser.add_argument(
        "--predictions", required=True,
        help="COCO results json (list of detections), or a `detkit predict` output folder (its detections.json; "
        "its images.json maps predict's image ids to the ground truth's by file name)",
    )  # fmt: skip
    parser.add_argument(
        "--iou-type", choices=("bbox", "segm", "keypoints"), default="bbox",
        help="bbox (default), segm (masks) or keypoints (OKS; the categories name their 'keypoints')",
    )  # fmt: skip
    parser.add_argument(
        "--kpt-sigmas",
        help="with --iou-type keypoints: comma-separated OKS sigma per keypoint (default: the categories' "
        "'keypoint_sigmas', else COCO's person sigmas for 17 keypoints, else 0.1 each)",
    )
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


@paused_gc()  # no collection over the loaded files' millions of containers: ~1/4 of the CPU time with masks
def _evaluate_coco(args: argparse.Namespace) -> None:
    from detkit.evaluation import COCOEvaluator, save_results_json
    from detkit.evaluation.inputs import check_annotations, read_json, read_predictions

    if args.annotations is None or args.voc_root:
        raise _Failed("--metric coco needs --annotations GT.json (--voc-root goes with --metric voc07 / voc2010)", 2)
    annotations = read_json(args.annotations, "annotations")
    try:
        check_annotations(annotations, with_masks=args.iou_type == "segm")
        evaluator = COCOEvaluator(annotations)
    except (ValueError, TypeError, KeyError) as e:
        raise _Failed(f"invalid annotations file {args.annotations}: {e}", 2) from None
    gt_names = {img["id"]: img.get("file_name") for img in annotations["images"]}
    predictions = read_predictions(args.predictions, gt_names, args.annotations, say=_say)
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
    sigmas = None
    if args.kpt_sigmas:
        try:
            sigmas = [float(v) for v in args.kpt_sigmas.split(",")]
        except ValueError:
            raise _Failed(f"--kpt-sigmas must be comma-separated numbers, got {args.kpt_sigmas!r}", 2) from None
    try:
        result = evaluator.evaluate(predictions, args.iou_type, backend=args.backend, verbose=True, kpt_sigmas=sigmas)
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
    from detkit.evaluation.inputs import read_predictions

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
    known_ids = set(gt.image_ids.tolist())
    predictions = read_predictions(args.predictions, gt.file_names, gt.source, known_ids, say=_say)
    if not isinstance(predictions, list):
        raise _Failed(f"{args.predictions}: expected a list of detections", 2)
    try:
        result = evaluate_voc(gt, predictions, args.metric)
    except ValueError as e:
        raise _Failed(f"invalid predictions file {args.predictions}: {e}", 1) from None
    print(result.summary)
    if args.output:
        save_results_json(result.to_dict(), args.output)


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """`detkit evaluate ...` (`argv` without the command name); returns the exit status."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as e:  # --help or a usage error; argparse already printed
        return int(e.code or 0)
    return _exit_status(_evaluate_coco if args.metric == "coco" else _evaluate_voc, args, prog)


def _say(line: str) -> None:
    print(f"{PROG}: {line}", file=sys.stderr)


def _exit_status(evaluate, args: argparse.Namespace, prog: str = PROG) -> int:
    from detkit.evaluation.inputs import PredictionsMismatchError

    try:
        evaluate(args)
    except _Failed as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.code
    except PredictionsMismatchError as e:  # predictions of other images: status 1, as for bad predictions
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # a missing or unreadable input file
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
