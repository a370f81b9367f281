"""`detkit analyze` vs `detkit evaluate` as whole commands on the same files (new processes, imports included).

    python benchmarks/bench_analyze.py                        # 5,000 images x 100 detections, boxes, 3 rounds
    python benchmarks/bench_analyze.py --iou-type segm --images 1000

The data is bench_coco_eval's seeded synthetic COCO set (80 classes by default, ~7 objects per image, jittered
and random detections). Each round runs evaluate, then analyze (no image drawings: no --images),
alternating; prints the median seconds of each and analyze / evaluate (the issue's bound: <= 2).
With --iou-type segm the results carry masks and the boxes around them (as `detkit predict` writes
for Mask R-CNN): analyze writes the box and the mask analysis, evaluate runs --iou-type segm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from bench_coco_eval import add_data_args, detkit_command, make_data, write_data


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser, images=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    gt, results = make_data(args.images, args.dets_per_image, args.classes, args.iou_type, args.seed)
    if args.iou_type == "segm":
        from pycocotools import mask as mask_utils

        for r in results:
            r["bbox"] = mask_utils.toBbox(r["segmentation"]).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, dt_path = write_data(tmp, gt, results)
        files = ["--annotations", gt_path, "--predictions", dt_path]
        metrics = os.path.join(tmp, "m.json")
        evaluate = [*detkit_command(), "evaluate", *files, "--iou-type", args.iou_type, "--output", metrics]
        analyze = [*detkit_command(), "analyze", *files, "--output", os.path.join(tmp, "report")]
        times: dict[str, list[float]] = {"evaluate": [], "analyze": []}
        for _ in range(args.rounds):
            times["evaluate"].append(timed(evaluate))
            times["analyze"].append(timed(analyze))
        with open(os.path.join(tmp, "report", "analysis.json")) as f:
            report = json.load(f)
    section = report["segm"] if args.iou_type == "segm" else report["errors"]
    seconds = {k: statistics.median(v) for k, v in times.items()}
    ratio = seconds["analyze"] / seconds["evaluate"]
    print(f"{args.iou_type}: {args.images} images, {len(gt['annotations'])} objects, {len(results)} detections; "
          f"AP {section['stats']['AP']:.4f}")  # fmt: skip
    for name, runs in times.items():
        print(f"detkit {name:<9} median {seconds[name]:6.2f} s   runs {[round(t, 2) for t in runs]}")
    print(f"analyze / evaluate: {ratio:.2f}")
    print(json.dumps({"iou_type": args.iou_type, "images": args.images, "seconds": times, "ratio": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
