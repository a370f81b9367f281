"""COCO-scale annotation index: build time and memory with DataLoader workers, detkit vs torchvision.

    python benchmarks/bench_data.py                # COCO train2017 size: 118,287 images, ~827k polygons
    python benchmarks/bench_data.py --scale 0.01   # 1% of it (a test runs this)

Generates a COCO-format annotation file of train2017's size with numpy (images of COCO's
sizes, ~7 polygon annotations per image, 80 categories with COCO's ids; cached under the
temp dir), then measures in a fresh process per implementation:

- build: constructing detkit's `CocoDetection` vs torchvision's `CocoDetection` wrapped with
  `wrap_dataset_for_transforms_v2` (both read the json and index it);
- memory: the parent's PSS after building (before the DataLoader starts), then the total PSS
  of the parent and `--workers` workers after one full pass over the index (every record is
  read by `__getitem__`; persistent workers stay alive to be measured).

Build times are wall and CPU time of the building process (CPU time is steadier on a shared
machine); `--repeats N` adds N alternating build-only runs and reports medians.

Images are not decoded: the image read is stubbed (a 1x1 image), so this measures the index.
PSS (proportional set size) splits shared pages between the processes sharing them, so the
total is the memory the processes really use together. Linux only (/proc). JSON at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

COCO_TRAIN_IMAGES = 118_287
COCO_TRAIN_POLYGONS = 827_455
COCO_CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
COCO_SIZES = [(480, 640), (640, 480), (427, 640), (640, 427), (425, 640), (640, 425), (424, 640), (512, 640)]


def generate(path: str, scale: float, seed: int = 0) -> dict:
    """Write a COCO-format file with `scale` x train2017's images and polygons; returns counts."""
    rng = np.random.default_rng(seed)
    n = max(1, round(COCO_TRAIN_IMAGES * scale))
    image_ids = np.sort(rng.choice(600_000, size=n, replace=False))
    sizes = np.array(COCO_SIZES)[rng.integers(0, len(COCO_SIZES), n)]  # (h, w)
    counts = rng.poisson(COCO_TRAIN_POLYGONS / COCO_TRAIN_IMAGES, n)
    m = int(counts.sum())
    owner = np.repeat(np.arange(n), counts)
    h, w = sizes[owner, 0].astype(np.float64), sizes[owner, 1].astype(np.float64)
    bw = np.maximum(w * rng.beta(1.2, 4.0, m), 2.0)
    bh = np.maximum(h * rng.beta(1.2, 4.0, m), 2.0)
    x = np.round(rng.uniform(0, w - bw), 2)
    y = np.round(rng.uniform(0, h - bh), 2)
    bw, bh = np.round(bw, 2), np.round(bh, 2)
    # one polygon per annotation: 4..30 points on the ellipse inscribed in the box
    points = rng.integers(4, 31, m)
    ends = np.cumsum(points)
    ann_of_point = np.repeat(np.arange(m), points)
    angle = 2 * np.pi * (np.arange(int(ends[-1])) - np.repeat(ends - points, points)) / points[ann_of_point]
    px = x[ann_of_point] + bw[ann_of_point] * (0.5 + 0.5 * np.cos(angle))
    py = y[ann_of_point] + bh[ann_of_point] * (0.5 + 0.5 * np.sin(angle))
    # coordinates as text through a table of every value with 2 decimals (fast, exact)
    table = np.array([f"{v / 100:.2f}" for v in range(int(sizes.max()) * 100 + 1)], dtype=object)
    coords = np.stack([px, py], 1).reshape(-1)
    coord_txt = table[np.clip(np.round(coords * 100).astype(np.int64), 0, len(table) - 1)]
    box_txt = table[np.round(np.stack([x, y, bw, bh], 1) * 100).astype(np.int64)]
    categories = np.array(COCO_CATEGORY_IDS)[rng.integers(0, len(COCO_CATEGORY_IDS), m)]
    area = np.round(bw * bh * np.pi / 4, 2)
    coord_ends = 2 * ends
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"info":{"description":"generated, COCO train2017 size"},"licenses":[],"images":[')
        f.write(
            ",".join(
                f'{{"license":1,"file_name":"{iid:012d}.jpg","height":{hh},"width":{ww},"id":{iid}}}'
                for iid, (hh, ww) in zip(image_ids.tolist(), sizes.tolist())
            )
        )
        f.write('],"annotations":[')
        start, parts, sep = 0, [], ""
        ids = image_ids[owner].tolist()
        for i, (end, iid, cat, ar) in enumerate(zip(coord_ends.tolist(), ids, categories.tolist(), area.tolist())):
            poly = ",".join(coord_txt[start:end])
            b = box_txt[i]
            parts.append(
                f'{{"segmentation":[[{poly}]],"area":{ar:.2f},"iscrowd":0,"image_id":{iid},'
                f'"bbox":[{b[0]},{b[1]},{b[2]},{b[3]}],"category_id":{cat},"id":{i + 1}}}'
            )
            start = end
            if len(parts) == 50_000 or i == m - 1:
                f.write(sep + ",".join(parts))
                parts, sep = [], ","
        f.write('],"categories":[')
        f.write(",".join(f'{{"supercategory":"s","id":{c},"name":"class{c}"}}' for c in COCO_CATEGORY_IDS))
        f.write("]}")
    return {"images": n, "annotations": m}


def cached_annotations(scale: float) -> tuple[str, dict]:
    folder = os.path.join(tempfile.gettempdir(), "detkit_bench_data")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"coco_like_scale{scale:g}.json")
    meta = path + ".meta.json"
    if not (os.path.exists(path) and os.path.exists(meta)):
        start = time.perf_counter()
        tmp = f"{path}.{os.getpid()}.tmp"
        counts = generate(tmp, scale)
        os.replace(tmp, path)
        with open(meta, "w") as f:
            json.dump(counts, f)
        print(f"generated {path} ({os.path.getsize(path) / 1e6:.0f} MB) in {time.perf_counter() - start:.1f} s")
    with open(meta) as f:
        return path, json.load(f)


def pss_kib(pid: int) -> int:
    """Proportional set size of a process in KiB (/proc/PID/smaps_rollup)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss line for pid {pid}")


def _count(batch) -> int:
    return len(batch)


def measure(impl: str, ann_file: str, workers: int, batch_size: int) -> dict:
    """Build `impl`'s data set (image read stubbed), then one full DataLoader pass; in this process."""
    import torch

    root = os.path.dirname(ann_file)
    if impl == "detkit":
        from detkit.data import coco

        coco.CocoDetection._read = lambda self, rec: np.zeros((1, 1, 3), dtype=np.uint8)

        def build():
            return coco.CocoDetection(root, ann_file)
    else:
        from PIL import Image
        from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2

        CocoDetection._load_image = lambda self, image_id: Image.new("RGB", (1, 1))

        def build():
            return wrap_dataset_for_transforms_v2(CocoDetection(root, ann_file))

    gc.collect()
    start, start_cpu = time.perf_counter(), time.process_time()  # imports done: read and index the json
    dataset = build()
    build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    if workers < 0:  # build time only
        return {"impl": impl, "images": len(dataset), "build_s": build_s, "build_cpu_s": build_cpu_s}
    gc.collect()
    parent_before = pss_kib(os.getpid())
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=_count, persistent_workers=workers > 0
    )
    iterator = iter(loader)
    seen = sum(iterator)
    if seen != len(dataset):
        raise RuntimeError(f"{impl}: the pass read {seen} of {len(dataset)} records")
    pids = [w.pid for w in getattr(iterator, "_workers", [])]
    parent_after = pss_kib(os.getpid())
    worker_pss = [pss_kib(pid) for pid in pids]
    total = parent_after + sum(worker_pss)
    return {
        "impl": impl,
        "images": len(dataset),
        "build_s": build_s,
        "build_cpu_s": build_cpu_s,
        "parent_pss_mib_before": parent_before / 1024,
        "parent_pss_mib_after": parent_after / 1024,
        "worker_pss_mib": [p / 1024 for p in worker_pss],
        "total_pss_mib": total / 1024,
        "total_over_parent_before": total / parent_before,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCO train2017's size")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--impl", nargs="+", default=["detkit", "torchvision"], choices=["detkit", "torchvision"])
    parser.add_argument("--repeats", type=int, default=1, help="extra alternating build-only runs (median time)")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one impl in this process
    parser.add_argument("--ann-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.ann_file, args.workers, args.batch_size)))
        return

    ann_file, counts = cached_annotations(args.scale)
    print(f"{ann_file}: {counts['images']} images, {counts['annotations']} polygon annotations")

    def child(impl: str, workers: int) -> dict:  # a fresh process each: readings do not mix
        cmd = [sys.executable, os.path.abspath(__file__), "--child", impl, "--ann-file", ann_file]
        cmd += ["--workers", str(workers), "--batch-size", str(args.batch_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"{impl} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    results = {impl: child(impl, args.workers) for impl in args.impl}
    builds = {impl: [r] for impl, r in results.items()}
    for _ in range(args.repeats):
        for impl in args.impl:
            builds[impl].append(child(impl, -1))
    for impl, runs in builds.items():  # medians over the runs
        for key in ("build_s", "build_cpu_s"):
            results[impl][key] = sorted(r[key] for r in runs)[len(runs) // 2]
    print(f"\n{args.workers} workers, one full pass, image reads stubbed; build: median of {args.repeats + 1}")
    print("| impl | build s (wall) | build s (CPU) | parent PSS MiB before | total PSS MiB after | total / parent |")
    print("|---|---|---|---|---|---|")
    for impl, r in results.items():
        print(
            f"| {impl} | {r['build_s']:.2f} | {r['build_cpu_s']:.2f} | {r['parent_pss_mib_before']:.0f} "
            f"| {r['total_pss_mib']:.0f} | {r['total_over_parent_before']:.2f} |"
        )
    report = {"scale": args.scale, **counts, "workers": args.workers, "results": results}
    if {"detkit", "torchvision"} <= set(results):
        dk, tv = results["detkit"], results["torchvision"]
        report["build_ratio"] = dk["build_s"] / tv["build_s"]
        report["build_cpu_ratio"] = dk["build_cpu_s"] / tv["build_cpu_s"]
        print(
            f"build time detkit / torchvision: {report['build_ratio']:.2f} (wall), "
            f"{report['build_cpu_ratio']:.2f} (CPU time, steadier on a shared machine)"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
