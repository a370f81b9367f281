"""`detkit analyze`: an HTML report of a data set and of a model's mistakes on it.

    detkit analyze --annotations GT.json --predictions RESULTS.json|PREDICT_OUT/ --images DIR --output REPORT/
    detkit analyze --annotations GT.json --images DIR --output REPORT/      (the data set part alone)
    ... --checkpoint CK      (adds the model's input size and the objects its anchors do not reach)

Writes REPORT/index.html (open it from disk: charts and pictures are files beside it) and
REPORT/analysis.json with every number. Exit status 0 on success, 2 for a missing /
unreadable input or bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from detkit.utils.gc_pause import paused_gc

__all__ = ["build_parser", "main"]

PROG = "detkit analyze"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="HTML report: data set statistics and error analysis.",
        epilog="examples (the output of `detkit predict ... --output predictions/`, see `detkit predict --help`):\n"
        "  detkit analyze --annotations data/shapes/val/annotations.json --predictions predictions/ \\\n"
        "      --images data/shapes/val/images --output report/\n"
        "  detkit analyze --annotations data/shapes/val/annotations.json --output report_data/   # data set only\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--annotations", required=True, help="COCO ground-truth annotation json")
    parser.add_argument(
        "--predictions",
        help="COCO results json (boxes) or a `detkit predict` output folder; without it the report shows the data set",
    )
    parser.add_argument("--images", help="image folder (file_name of the annotations) to draw the worst images")
    parser.add_argument(
        "--checkpoint",
        help="detkit training checkpoint: its input size, and the objects its RPN's anchors do not reach",
    )
    parser.add_argument("--output", required=True, help="report folder (index.html, analysis.json, charts)")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="confusion matrix and drawings (0.3)")
    parser.add_argument("--iou-threshold", type=float, default=0.5, help="confusion matrix IoU (0.5)")
    parser.add_argument("--worst", type=int, default=12, help="images drawn per list (lowest AP50, most FP / missed)")
    return parser


@paused_gc()  # as `detkit evaluate`: no collection over the loaded files' millions of containers
def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """`detkit analyze ...` (`argv` without the command name); returns the exit status."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    from detkit.analysis.analyze import analyze
    from detkit.evaluation.inputs import read_json, read_predictions

    try:
        if args.worst < 0:
            raise ValueError(f"--worst must be >= 0, got {args.worst}")
        if args.images is not None and not os.path.isdir(args.images):
            raise ValueError(f"--images folder not found: {args.images}")
        dataset = read_json(args.annotations, "annotations")
        predictions = None
        if args.predictions is not None:  # a results json or a `detkit predict` folder, on the ground truth's ids
            gt_names = {
                img.get("id"): img.get("file_name") for img in dataset.get("images") or [] if isinstance(img, dict)
            }
            predictions = read_predictions(
                args.predictions, gt_names, args.annotations, say=lambda line: print(f"{prog}: {line}", file=sys.stderr)
            )
        model = None
        if args.checkpoint is not None:
            from detkit.io import build_model_from_checkpoint

            model, _ = build_model_from_checkpoint(args.checkpoint)
        start = time.perf_counter()
        report = analyze(dataset, predictions, args.output, images_dir=args.images,
                         score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
                         worst=args.worst, title=f"detkit analyze: {os.path.basename(args.annotations)}",
                         model=model)  # fmt: skip
    except (OSError, ValueError, TypeError, KeyError) as e:
        print(f"{prog}: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    for note in report["notes"]:
        print(f"{prog}: note: {note}", file=sys.stderr)
    if report.get("anchors", {}).get("applies"):
        a = report["anchors"]
        print(f"{a['unreached']} of {a['objects']} objects ({100 * a['unreached_share']:.1f}%) reached by no anchor "
              f"at IoU >= {a['fg_iou_threshold']:g}")  # fmt: skip
    if "errors" in report:
        stats = report["errors"]["stats"]
        print(f"AP {stats['AP']:.3f}  AP50 {stats['AP50']:.3f}  AP75 {stats['AP75']:.3f}")
    print(f"report: {os.path.join(args.output, 'index.html')} ({time.perf_counter() - start:.1f} s)")
    return 0
