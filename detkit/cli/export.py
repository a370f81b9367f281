"""`detkit export`: write a detector as an ONNX file or a torch.export program (.pt2).

detkit export --checkpoint last.ckpt --format onnx --output model.onnx
detkit export --model faster_rcnn_r50_fpn --num-classes 90 --weights tv.pth --format pt2 --output model.pt2
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

__all__ = ["export_main", "load_for_export", "main"]


def load_for_export(
    checkpoint: str | None, model_name: str | None, num_classes: int | None, weights: str | None
) -> tuple[object, dict]:
    """(eval-mode model, metadata: class names and label -> category id when the checkpoint has them)."""
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
        from detkit.engine.checkpoint_io import build_model_from_checkpoint, load_checkpoint
        from detkit.engine.module import STATS_KEY

        model, class_names = build_model_from_checkpoint(checkpoint)
        info = load_checkpoint(checkpoint).get(STATS_KEY) or {}
        meta = {"model_name": info.get("model_name", "")}
        if class_names:
            meta["class_names"] = list(class_names)
        if info.get("label_to_category_id"):
            meta["label_to_category_id"] = {str(k): int(v) for k, v in info["label_to_category_id"].items()}
        if info.get("proposals"):
            meta["proposals"] = dict(info["proposals"])  # selective-search settings, for `detkit predict --onnx`
        return model.eval(), meta
    from detkit.models import build_model

    if weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"weights not found: {weights}")
    model = build_model(model_name, num_classes=int(num_classes), weights=weights)
    return model.eval(), {"model_name": model_name}


def main(argv: Sequence[str] | None = None, prog: str = "detkit export") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Export a detector (whole inference path) to ONNX or a torch.export .pt2 program."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Lightning checkpoint written by `detkit fit`")
    source.add_argument("--model", help="registered model name (see detkit.models.list_models())")
    parser.add_argument("--weights", help="with --model: weights file (detkit or torchvision checkpoint)")
    parser.add_argument(
        "--num-classes", type=int, help="with --model: classes without background (default 90, as COCO checkpoints)"
    )
    parser.add_argument("--format", choices=("onnx", "pt2"), default="onnx")
    parser.add_argument("--output", required=True, help="output file (.onnx or .pt2)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18, at least 16)")
    parser.add_argument("--max-detections", type=int, default=None, help="detections per image (default: the model's)")
    parser.add_argument(
        "--category-ids",
        action="store_true",
        help="with --checkpoint: output the data set's category ids as `labels` instead of 1..num_classes",
    )
    args = parser.parse_args(argv)
    if args.model is None and (args.weights or args.num_classes) and args.checkpoint:
        parser.error("--weights / --num-classes go with --model, not --checkpoint")
    if args.max_detections is not None and args.max_detections < 1:
        parser.error("--max-detections must be >= 1")
    if args.opset is not None and args.format != "onnx":
        parser.error("--opset applies to --format onnx only")
    if args.category_ids and not args.checkpoint:
        parser.error("--category-ids needs --checkpoint (the mapping is stored there)")

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


export_main = main  # the name before the commands moved to detkit.cli
