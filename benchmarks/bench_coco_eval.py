"""detkit COCOEvaluator (faster-coco-eval backend) vs plain pycocotools COCOeval.

Same seeded synthetic ground truth and results files, same process; both runs start
from the json files (load + evaluate + accumulate + summarize). Checks that the 12
summary numbers agree and prints both times as a table and as JSON.

--whole-command also times `detkit evaluate` as a user runs it: a new process, from start-up
(imports) to the metrics file, against the same in-process pycocotools time.

    python benchmarks/bench_coco_eval.py [--images 2000] [--dets-per-image 100] [--iou-type bbox] [--whole-command]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.evaluation import STAT_NAMES, COCOEvaluator

IMG_W, IMG_H = 640, 480
POLY_POINTS = 12


def _random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` XYWH boxes inside the image, sizes log-uniform 8..400 px (all COCO areas)."""
    wh = np.exp(rng.uniform(np.log(8), np.log(400), size=(n, 2)))
    wh = np.minimum(wh, [IMG_W - 1, IMG_H - 1])
    xy = rng.uniform(0, 1, size=(n, 2)) * ([IMG_W, IMG_H] - wh)
    return np.concatenate([xy, wh], axis=1)


def _ellipse_polygons(boxes: np.ndarray) -> np.ndarray:
    """`[n, 2 * POLY_POINTS]` polygons of ellipses inscribed in XYWH boxes."""
    t = np.linspace(0, 2 * np.pi, POLY_POINTS, endpoint=False)
    cx, cy = boxes[:, :1] + boxes[:, 2:3] / 2, boxes[:, 1:2] + boxes[:, 3:4] / 2
    xs = cx + boxes[:, 2:3] / 2 * np.cos(t)
    ys = cy + boxes[:, 3:4] / 2 * np.sin(t)
    return np.stack([xs, ys], axis=2).reshape(len(boxes), -1)


def make_data(num_images: int, dets_per_image: int, num_classes: int, iou_type: str, seed: int):
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": IMG_W, "height": IMG_H, "file_name": f"{i + 1}.jpg"} for i in range(num_images)]
    categories = [{"id": c + 1, "name": f"class_{c + 1}"} for c in range(num_classes)]
    annotations, results = [], []
    for img in images:
        n_gt = max(1, int(rng.poisson(7)))
        gt_boxes = _random_boxes(rng, n_gt)
        gt_cats = rng.integers(1, num_classes + 1, size=n_gt)
        gt_polys = _ellipse_polygons(gt_boxes)
        x, y = gt_polys[:, 0::2], gt_polys[:, 1::2]
        areas = 0.5 * np.abs((x * np.roll(y, -1, 1) - np.roll(x, -1, 1) * y).sum(1))  # shoelace
        crowd = rng.random(n_gt) < 0.01
        for box, cat, poly, area, is_crowd in zip(gt_boxes, gt_cats, gt_polys, areas, crowd):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img["id"],
                    "category_id": int(cat),
                    "bbox": box.tolist(),
                    "area": float(area),
                    "segmentation": [poly.tolist()],
                    "iscrowd": int(is_crowd),
                }
            )
        # detections: 1-2 jittered copies of each GT (mostly right class), the rest random
        copies = rng.integers(1, 3, size=n_gt)
        src = np.repeat(np.arange(n_gt), copies)[:dets_per_image]
        jitter = rng.normal(0, 0.08, size=(len(src), 4)) * np.tile(gt_boxes[src, 2:], 2)
        tp_boxes = gt_boxes[src] + jitter
        tp_boxes[:, 2:] = np.maximum(tp_boxes[:, 2:], 2)
        tp_cats = np.where(
            rng.random(len(src)) < 0.8,
            gt_cats[src],
            rng.integers(1, num_classes + 1, len(src)),
        )
        n_fp = dets_per_image - len(src)
        boxes = np.concatenate([tp_boxes, _random_boxes(rng, n_fp)])
        cats = np.concatenate([tp_cats, rng.integers(1, num_classes + 1, n_fp)])
        scores = np.concatenate([rng.uniform(0.3, 1.0, len(src)), rng.uniform(0.0, 0.7, n_fp)])
        if iou_type == "segm":
            rles = mask_utils.frPyObjects(_ellipse_polygons(boxes).tolist(), IMG_H, IMG_W)  # one RLE per polygon
            for rle, cat, score in zip(rles, cats.tolist(), scores.tolist()):
                rle["counts"] = rle["counts"].decode("ascii")
                results.append(
                    {
                        "image_id": img["id"],
                        "category_id": cat,
                        "segmentation": rle,
                        "score": score,
                    }
                )
        else:
            for box, cat, score in zip(boxes.tolist(), cats.tolist(), scores.tolist()):
                results.append(
                    {
                        "image_id": img["id"],
                        "category_id": cat,
                        "bbox": box,
                        "score": score,
                    }
                )
    return {
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }, results


def run_detkit(gt_path: str, dt_path: str, iou_type: str) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = COCOEvaluator(gt_path).evaluate(dt_path, iou_type, backend="faster_coco_eval", verbose=False)
    return time.perf_counter() - t0, np.array([out.stats[k] for k in STAT_NAMES])


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_data(folder: str, gt: dict, results: list) -> tuple[str, str]:
    """`folder/gt.json` and `folder/dt.json` of `make_data`'s output; returns their paths."""
    gt_path, dt_path = os.path.join(folder, "gt.json"), os.path.join(folder, "dt.json")
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    with open(dt_path, "w") as f:
        json.dump(results, f)
    return gt_path, dt_path


def detkit_command() -> list[str]:
    """The `detkit` console script next to this Python, else `python -m detkit`."""
    script = Path(sys.executable).parent / "detkit"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "detkit"]


def add_data_args(parser: argparse.ArgumentParser, images: int) -> None:
    """The options of `make_data`'s synthetic set."""
    parser.add_argument("--images", type=int, default=images)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--iou-type", choices=("bbox", "segm"), default="bbox")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)


def run_command(gt_path: str, dt_path: str, iou_type: str, out_path: str) -> tuple[float, float, np.ndarray]:
    """`detkit evaluate` in a new process (the console script next to this Python, else -m detkit).

    Returns wall seconds, CPU seconds (user + system of the process) and the 12 stats.
    """
    cmd = detkit_command() + [
        "evaluate",
        "--annotations",
        gt_path,
        "--predictions",
        dt_path,
        "--iou-type",
        iou_type,
        "--backend",
        "faster_coco_eval",
        "--output",
        out_path,
    ]
    t0, c0 = time.perf_counter(), _children_cpu_s()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds, cpu_s = time.perf_counter() - t0, _children_cpu_s() - c0
    with open(out_path) as f:
        stats = json.load(f)["stats"]
    return seconds, cpu_s, np.array([stats[k] for k in STAT_NAMES])


def run_pycocotools(gt_path: str, dt_path: str, iou_type: str) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes(dt_path)
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return time.perf_counter() - t0, np.asarray(ev.stats, dtype=np.float64)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_data_args(parser, images=2000)
    parser.add_argument(
        "--whole-command",
        action="store_true",
        help="also time `detkit evaluate` as a whole command (new process, imports included)",
    )
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    gt, results = make_data(args.images, args.dets_per_image, args.classes, args.iou_type, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, dt_path = write_data(tmp, gt, results)
        gen_s = time.perf_counter() - t0
        if args.whole_command:
            command_s, command_cpu_s, command_stats = run_command(
                gt_path, dt_path, args.iou_type, os.path.join(tmp, "m.json")
            )
        detkit_s, detkit_stats = run_detkit(gt_path, dt_path, args.iou_type)
        c0 = time.process_time()  # CPU time: less sensitive than wall time to other jobs on the machine
        coco_s, coco_stats = run_pycocotools(gt_path, dt_path, args.iou_type)
        coco_cpu_s = time.process_time() - c0

    max_diff = float(np.abs(detkit_stats - coco_stats).max())
    if args.whole_command:
        max_diff = max(max_diff, float(np.abs(command_stats - coco_stats).max()))
    report = {
        "iou_type": args.iou_type,
        "images": args.images,
        "gt_annotations": len(gt["annotations"]),
        "detections": len(results),
        "data_generation_s": round(gen_s, 3),
        "detkit_faster_coco_eval_s": round(detkit_s, 3),
        "pycocotools_s": round(coco_s, 3),
        "speedup": round(coco_s / detkit_s, 2),
        **(
            {
                "detkit_evaluate_command_s": round(command_s, 3),
                "command_speedup": round(coco_s / command_s, 2),
                "detkit_evaluate_command_cpu_s": round(command_cpu_s, 3),
                "pycocotools_cpu_s": round(coco_cpu_s, 3),
                "command_cpu_speedup": round(coco_cpu_s / command_cpu_s, 2),
            }
            if args.whole_command
            else {}
        ),
        "stats_identical": bool(max_diff == 0.0),
        "stats_max_abs_diff": max_diff,
        "stats": dict(zip(STAT_NAMES, detkit_stats.tolist())),
    }
    print(f"{args.iou_type}: {args.images} images, {len(gt['annotations'])} GT, {len(results)} detections")
    print(f"{'implementation':<34}{'seconds':>10}")
    print(f"{'detkit COCOEvaluator (faster)':<34}{detkit_s:>10.2f}")
    print(f"{'pycocotools COCOeval':<34}{coco_s:>10.2f}")
    print(f"{'speedup (pycocotools / detkit)':<34}{coco_s / detkit_s:>10.2f}")
    if args.whole_command:
        print(f"{'detkit evaluate (whole command)':<34}{command_s:>10.2f}")
        print(f"{'speedup (pycocotools / command)':<34}{coco_s / command_s:>10.2f}")
        print(
            f"CPU seconds: command {command_cpu_s:.2f}, pycocotools {coco_cpu_s:.2f}, "
            f"ratio {coco_cpu_s / command_cpu_s:.2f}"
        )
    print(f"12 stats max |diff| = {max_diff:.3g}; AP = {detkit_stats[0]:.4f}")
    print(json.dumps(report))
    return 0 if max_diff <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
