"""`detkit export`: write a detector as an ONNX file or a torch.export program (.pt2).

detkit export --checkpoint last.ckpt --output model.onnx
detkit export --model faster_rcnn_r50_fpn --num-classes 90 --weights tv.pth --output model.pt2

detkit export --checkpoint last.ckpt --output model_int8.onnx --quantize int8 --calibration-images train/

The format follows the output's suffix (.onnx / .pt2) unless --format says it. `--model` without
`--weights` is refused unless `--random-weights` asks for an untrained detector. `--quantize int8`
(ONNX only) calibrates on the image files of `--calibration-images` (see detkit.export.quantize).
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
        if info.keypoint_names:  # keypoint names and skeleton, for the drawings of `detkit predict --onnx`
            meta["keypoints"] = {"names": info.keypoint_names, "skeleton": [list(p) for p in info.skeleton or ()]}
        return model, meta
    from detkit.models import build_model

    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights not found: {weights}")
    model = build_model(model_name, num_classes=int(num_classes), weights=weights)
    return model.eval(), {"model_name": model_name}


FORMAT_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
DEFAULT_CALIBRATION_COUNT = 64


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


EXAMPLES = """examples (with the checkpoint and data of `detkit fit --config shapes_faster_rcnn_tiny`):
  detkit export --checkpoint runs/shapes_faster_rcnn_tiny/version_0/checkpoints/last.ckpt --output shapes.onnx
  detkit export --checkpoint runs/shapes_faster_rcnn_tiny/version_0/checkpoints/last.ckpt --output shapes_int8.onnx \\
      --quantize int8 --calibration-images data/shapes/train/images   # int8, calibrated on training images
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
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="ONNX only: int8 weights and activations for the convolutions and matrix products (ONNX Runtime "
        "static quantization; needs --calibration-images)",
    )
    parser.add_argument(
        "--calibration-images",
        metavar="DIR",
        help="with --quantize: folder of image files (searched recursively) that calibrate the int8 ranges: "
        "images like those the model will see, not the ones it is evaluated on",
    )
    parser.add_argument(
        "--calibration-count",
        type=int,
        default=DEFAULT_CALIBRATION_COUNT,
        help=f"with --quantize: use at most this many calibration images, in sorted file order (default "
        f"{DEFAULT_CALIBRATION_COUNT})",
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
    if args.quantize and args.format != "onnx":
        parser.error(f"--quantize {args.quantize} applies to --format onnx only (ONNX Runtime quantization), "
                     f"not {args.format}")  # fmt: skip
    if args.quantize and not args.calibration_images:
        parser.error(f"--quantize {args.quantize} needs --calibration-images DIR (image files that calibrate "
                     "the int8 ranges)")  # fmt: skip
    if args.calibration_images and not args.quantize:
        parser.error("--calibration-images goes with --quantize int8")
    if args.calibration_count < 1:
        parser.error("--calibration-count must be >= 1")
    return args


def calibration_images(folder: str, count: int) -> list:
    """The first `count` readable image files under `folder` (sorted paths) as float32 [3, H, W] in 0..1.

    Raises ValueError when the folder does not exist or holds no readable image.
    """
    from pathlib import Path

    from detkit.cli.predict import IMAGE_EXTENSIONS
    from detkit.data import ImageReadError, read_image_rgb

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--calibration-images {folder}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    images = []
    for path in files:
        try:
            rgb = read_image_rgb(path)
        except ImageReadError:
            continue
        images.append(rgb.transpose(2, 0, 1).astype("float32") / 255)
        if len(images) == count:
            break
    if not images:
        found = f"{len(files)} image file(s), none readable" if files else "no image files"
        raise ValueError(f"--calibration-images {folder}: {found} ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def main(argv: Sequence[str] | None = None, prog: str = "detkit export") -> int:
    args = parse_args(argv, prog)

    from detkit.export.api import DEFAULT_OPSET, export_onnx, export_program

    calibration = None
    if args.quantize:
        from detkit.utils.optional import require

        require("onnxruntime", "export", "int8 quantization (--quantize)")
        calibration = calibration_images(args.calibration_images, args.calibration_count)
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
        options = dict(
            opset=args.opset or DEFAULT_OPSET,
            max_detections=args.max_detections,
            category_ids=category_ids,
            metadata=meta,
        )
        if calibration is None:
            export_onnx(model, args.output, **options)
        else:
            import tempfile

            from detkit.export.quantize import quantize_onnx

            with tempfile.TemporaryDirectory(prefix="detkit-export-") as tmp:
                fp32 = export_onnx(model, os.path.join(tmp, "fp32.onnx"), **options)
                quantize_onnx(fp32, args.output, calibration)
    kind = args.format if calibration is None else f"{args.format}, int8, calibrated on {len(calibration)} images"
    print(f"{type(model).__name__} -> {args.output} ({kind}, {time.perf_counter() - start:.0f} s)")
    return 0
