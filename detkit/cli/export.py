"""`detkit export`: write a detector as an ONNX file or a torch.export program (.pt2).

detkit export --checkpoint last.ckpt --output model.onnx
detkit export --model faster_rcnn_r50_fpn --num-classes 90 --weights tv.pth --output model.pt2

The format follows the output's suffix (.onnx / .pt2) unless --format says it. `--model` without
`--weights` is refused unless `--random-weights` asks for an untrained detector.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

__all__ = ["build_parser", "load_for_export", "main", "output_format", "parse_args"]


def load_for_export(
    checkpoint: str | None, model_name: str | None, num_classes: int | None, weights: str | None
) -> tuple[object, dict]:
    """(eval-mode model, metadata: class names and label -> category id when the checkpoint has them)."""
    if checkpoint:
        from detkit.io.checkpoint import build_model_from_checkpoint

        model, info = build_model_from_checkpoint(checkpoint)
        meta = {"model_name": info.model_name}
        if info.class_names:
            meta["class_names"] = list(info.class_names)
        if info.label_map is not None:
            meta["label_to_category_id"] = {str(k): v for k, v in info.label_map.label_to_category_id.items()}
        if info.proposal_settings:
            meta["proposals"] = dict(info.proposal_settings)  # selective-search settings, for `detkit predict --onnx`
        return model, meta
    from detkit.models import build_model

    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights not found: {weights}")
    model = build_model(model_name, num_classes=int(num_classes), weights=weights)
    return model.eval(), {"model_name": model_name}


FORMAT_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}


def output_format(output: str, requested: str | None) -> str:
    """The export format: `requested` (--format), else the one `output`'s suffix names.

    Raises ValueError when the suffix names the other format, or names none and no format is requested.
    """
    suffix = os.path.splitext(output)[1].lower()
    implied = FORMAT_SUFFIXES.get(suffix)
    if requested is None:
        if implied is None:
            raise ValueError(f"--output {output}: cannot tell the format from the suffix: name it .onnx or .pt2, "
                             "or pass --format onnx|pt2")  # fmt: skip
        return implied
    if implied is not None and implied != requested:
        raise ValueError(f"--output {output} names a .{implied} file but --format is {requested}: "
                         f"use a .{requested} suffix or --format {implied}")  # fmt: skip
    return requested


EXAMPLES = """examples (the first with the checkpoint of `detkit fit --config shapes_faster_rcnn_tiny`):
  detkit export --checkpoint runs/shapes_faster_rcnn_tiny/version_0/checkpoints/last.ckpt --output shapes.onnx
  detkit export --model faster_rcnn_tiny --num-classes 3 --random-weights --output tiny.pt2   # untrained
"""


def build_parser(prog: str = "detkit export") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Export a detector (whole inference path) to ONNX or a torch.export .pt2 program.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Lightning checkpoint written by `detkit fit`")
    source.add_argument("--model", help="registered model name (see detkit.models.list_models())")
    parser.add_argument("--weights", help="with --model: weights file (detkit or torchvision checkpoint)")
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="with --model and no --weights: export the untrained detector (refused without this flag)",
    )
    parser.add_argument(
        "--num-classes", type=int, help="with --model: classes without background (default 90, as COCO checkpoints)"
    )
    parser.add_argument(
        "--format", choices=("onnx", "pt2"), default=None, help="default: from the --output suffix (.onnx / .pt2)"
    )
    parser.add_argument("--output", required=True, help="output file (.onnx or .pt2: the suffix picks the format)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18, at least 16)")
    parser.add_argument("--max-detections", type=int, default=None, help="detections per image (default: the model's)")
    parser.add_argument(
        "--category-ids",
        action="store_true",
        help="with --checkpoint: output the data set's category ids as `labels` instead of 1..num_classes",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None, prog: str = "detkit export") -> argparse.Namespace:
    """The checked options of `detkit export` (`args.format` filled in from the output suffix); a bad
    combination exits through argparse's error (status 2)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.model is None and (args.weights or args.num_classes) and args.checkpoint:
        parser.error("--weights / --num-classes go with --model, not --checkpoint")
    if args.random_weights and not args.model:
        parser.error("--random-weights goes with --model")
    if args.model and args.weights and args.random_weights:
        parser.error("--random-weights and --weights exclude each other")
    if args.model and not args.weights and not args.random_weights:
        parser.error(f"--model {args.model} without --weights would export random weights: pass --weights FILE, "
                     "or --random-weights to export the untrained detector")  # fmt: skip
    try:
        args.format = output_format(args.output, args.format)
    except ValueError as e:
        parser.error(str(e))
    if args.max_detections is not None and args.max_detections < 1:
        parser.error("--max-detections must be >= 1")
    if args.opset is not None and args.format != "onnx":
        parser.error("--opset applies to --format onnx only")
    if args.category_ids and not args.checkpoint:
        parser.error("--category-ids needs --checkpoint (the mapping is stored there)")
    return args


def main(argv: Sequence[str] | None = None, prog: str = "detkit export") -> int:
    args = parse_args(argv, prog)

    from detkit.export.api import DEFAULT_OPSET, export_onnx, export_program

    num_classes = args.num_classes if args.num_classes is not None else 90
    model, meta = load_for_export(args.checkpoint, args.model, num_classes, args.weights)
    category_ids = None
    if args.category_ids:
        mapping = meta.get("label_to_category_id")
        if not mapping:
            raise ValueError(f"{args.checkpoint}: has no label -> category id mapping; export without --category-ids")
        category_ids = [int(mapping[str(k)]) for k in range(1, model.num_classes + 1)]
    start = time.perf_counter()
    if args.format == "pt2":
        export_program(model, args.output, max_detections=args.max_detections, category_ids=category_ids)
    else:
        export_onnx(
            model,
            args.output,
            opset=args.opset or DEFAULT_OPSET,
            max_detections=args.max_detections,
            category_ids=category_ids,
            metadata=meta,
        )
    print(f"{type(model).__name__} -> {args.output} ({args.format}, {time.perf_counter() - start:.0f} s)")
    return 0
