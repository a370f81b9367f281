"""Exported Faster R-CNN R50-FPN on ONNX Runtime (CPU) vs eager detkit vs eager torchvision.

    python benchmarks/bench_export.py                       # batch 1 and 4, 512x512 and 800x1216
    python benchmarks/bench_export.py --sizes 512x512 --batch-sizes 1 --iters 10

One process, same weights (random, no downloads; torchvision's layout loaded into detkit) and
the same images. Per size the models are built with min_size / max_size equal to the image
sides (no resizing, as bench_infer) and detkit's model is exported once to ONNX (cached in
--workdir). A biased class logit makes about 100 detections per image survive the 0.05 score
threshold, as with trained weights. The ONNX Runtime detections are checked against eager
detkit (counts, scores). Ratios > 1: ONNX Runtime faster.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from _pairs import build_pair, make_inputs, time_alternating

from detkit.export import OnnxDetector, export_onnx


def _pairs_of(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]


def run_size(height: int, width: int, args) -> list[dict]:
    device = torch.device("cpu")
    dk, tv = build_pair("faster_rcnn_r50_fpn", min_size=min(height, width), max_size=max(height, width), device=device)
    with torch.no_grad():  # trained-like: one class dominates, ~100 detections per image
        for model in (dk, tv):
            model.roi_heads.box_predictor.cls_score.bias[1] += 4.0
    dk.eval()
    tv.eval()
    path = os.path.join(args.workdir, f"faster_rcnn_r50_fpn_{height}x{width}.onnx")
    if not os.path.isfile(path):
        start = time.perf_counter()
        export_onnx(dk, path)
        print(f"exported {path} in {time.perf_counter() - start:.0f} s", flush=True)
    config = {"session.intra_op.allow_spinning": "0"} if args.no_spin else None
    session = OnnxDetector(path, threads=args.threads, config=config)
    rows = []
    for batch_size in args.batch_sizes:
        images, _ = make_inputs(batch_size, height, width, device=device, with_masks=False)
        batch = torch.stack(images).numpy()
        with torch.no_grad():
            ref = dk.predict(images)
        got = session.predict(list(batch), batch_size=batch_size)
        same_counts = [len(r["scores"]) for r in ref] == [len(g["scores"]) for g in got]
        score_diff = (
            max(
                (float(np.abs(np.sort(r["scores"].numpy()) - np.sort(g["scores"])).max()) for r, g in zip(ref, got)),
                default=0.0,
            )
            if same_counts
            else float("nan")
        )

        def ort_step(batch=batch):
            session.run(batch)

        def detkit_step(images=images):
            with torch.no_grad():
                dk.predict(images)

        def torchvision_step(images=images):
            with torch.no_grad():
                tv(images)

        steps = {"onnxruntime": ort_step, "detkit": detkit_step, "torchvision": torchvision_step}
        result = time_alternating(steps, iters=args.iters, warmup=args.warmup, device=device)
        s = {k: v["seconds"] for k, v in result.items()}
        row = {
            "size": f"{height}x{width}",
            "batch_size": batch_size,
            "seconds": s,
            "ort_vs_torchvision": s["torchvision"] / s["onnxruntime"],
            "ort_vs_detkit": s["detkit"] / s["onnxruntime"],
            "detkit_vs_torchvision": s["torchvision"] / s["detkit"],
            "detections_per_image": [len(g["scores"]) for g in got],
            "same_counts_as_eager": same_counts,
            "max_score_diff": score_diff,
        }
        print(
            f"| {row['size']} | {batch_size} | {s['onnxruntime']:.3f} | {s['detkit']:.3f} | {s['torchvision']:.3f} "
            f"| {row['ort_vs_torchvision']:.2f}x | {row['ort_vs_detkit']:.2f}x | counts equal: {same_counts}, "
            f"max score diff {score_diff:.1e} |",
            flush=True,
        )
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_pairs_of, default=_pairs_of("512x512,800x1216"), help="HxW[,HxW...]")
    parser.add_argument("--batch-sizes", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4])
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime intra-op threads")
    parser.add_argument(
        "--no-spin", action="store_true", help="ONNX Runtime threads sleep instead of spinning (busy shared machines)"
    )
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "detkit_bench_export"))
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.workdir, exist_ok=True)
    print(
        f"faster_rcnn_r50_fpn, CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, median of "
        f"{args.iters} alternating runs (seconds per call)"
    )
    print("| size | batch | ORT s | detkit eager s | torchvision eager s | ORT / torchvision | ORT / detkit | check |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for height, width in args.sizes:
        rows += run_size(height, width, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
