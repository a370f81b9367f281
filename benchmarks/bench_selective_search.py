"""detkit offline selective search (`compute_proposals`) vs plain single-process OpenCV.

Same images from disk (the synthetic shapes val split, or inline drawn scenes when
`detkit.data.shapes` is unavailable), same process, both start from the PNG files:

- OpenCV: a loop of imread + createSelectiveSearchSegmentation +
  switchToSelectiveSearchFast + process on the full image, OpenCV's default threads.
- detkit: `compute_proposals(workers=W, resize_to=R)` into a fresh cache file per run,
  for each R in --resize-to (includes pool start-up, decoding, post-processing, writes).

Wall times are the best (min) of --repeats interleaved runs, the usual estimate on a shared
machine; medians are in the JSON. Recall (R@0.5, R@0.7, AR@1000 against the gt boxes)
is computed after timing. "best" is the fastest detkit setting whose R@0.5 and R@0.7 are
within --tolerance of OpenCV's. Prints a table and one JSON line.

"cpu ms/img" is the CPU time per image of each pipeline run in one process: it shows
the resize lever without the noise of other load. A control run measures how much
parallelism the machine gives right now: the plain OpenCV loop split over W warmed-up
processes vs the same loop in one process (ideal: W x). On a shared machine it can be
far below W, which caps any multi-process speedup.

    python benchmarks/bench_selective_search.py [--num-images 200] [--image-size 128]
        [--workers 2] [--resize-to none,112,96] [--repeats 3]

The defaults are the whole default shapes val split (200 images of 128 px), so pool
start-up is amortised as in real use; with 50 images it is a visible share of the run.

Top-level imports stay light on purpose: the pool's forkserver re-imports this module,
so torch (for the recall) is imported only after timing.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time

import cv2
import numpy as np

from detkit.proposals import compute_proposals
from detkit.proposals.cache import _proposals_for_file


def _inline_scenes(root: str, num_images: int, size: int, seed: int = 0):
    """Gradient background + 1-4 filled rectangles/ellipses + noise; [(id, path)], {id: gt}."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    items, gts = [], {}
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)[None, :, None]
    for i in range(num_images):
        c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = (c0 + (c1 - c0) * ramp).repeat(size, axis=0)
        boxes = []
        for _ in range(int(rng.integers(1, 5))):
            w, h = rng.integers(size // 8, size // 2, 2)
            x, y = rng.integers(0, size - w), rng.integers(0, size - h)
            colour = rng.uniform(0, 255, 3)
            if rng.random() < 0.5:
                img[y : y + h, x : x + w] = colour
            else:
                mask = np.zeros((size, size), np.uint8)
                cv2.ellipse(mask, (int(x + w // 2), int(y + h // 2)), (int(w // 2), int(h // 2)), 0, 0, 360, 1, -1)
                img[mask.astype(bool)] = colour
            boxes.append([x, y, x + w, y + h])
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        path = os.path.join(root, f"{i:06d}.png")
        cv2.imwrite(path, img)
        items.append((i + 1, path))
        gts[i + 1] = np.array(boxes, np.float32)
    return items, gts


def load_images(num_images: int, image_size: int, data_root: str):
    try:
        from detkit.data.shapes import ensure_shapes
    except ImportError:
        items, gts = _inline_scenes(os.path.join(data_root, "inline"), num_images, image_size)
        return items, gts, "inline scenes"
    # images are seeded per (seed, split, index): these are the first N of the standard val
    ann_file = ensure_shapes(data_root, {"val": num_images}, image_size=image_size)["val"]
    with open(ann_file, encoding="utf-8") as f:
        coco = json.load(f)
    image_dir = os.path.join(os.path.dirname(ann_file), "images")
    items = [(im["id"], os.path.join(image_dir, im["file_name"])) for im in coco["images"]]
    gts = {i: [] for i, _ in items}
    for ann in coco["annotations"]:
        x, y, w, h = ann["bbox"]
        gts[ann["image_id"]].append([x, y, x + w, y + h])
    return items, {i: np.array(b, np.float32).reshape(-1, 4) for i, b in gts.items()}, "shapes val"


def run_opencv(items):
    """Plain OpenCV loop; returns (seconds, {id: XYXY boxes})."""
    raw = {}
    start = time.perf_counter()
    for image_id, path in items:
        ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        ss.setBaseImage(cv2.imread(path))
        ss.switchToSelectiveSearchFast()
        raw[image_id] = ss.process()
    seconds = time.perf_counter() - start
    boxes = {}
    for image_id, r in raw.items():
        r = np.asarray(r, np.float32).reshape(-1, 4)
        boxes[image_id] = np.concatenate([r[:, :2], r[:, :2] + r[:, 2:]], axis=1)
    return seconds, boxes


def _control_loop(paths, start_at: float, queue) -> None:
    cv2.setNumThreads(1)
    run_opencv([(0, paths[0])])  # warm-up: OpenCV builds its Lab tables on first use
    time.sleep(max(0.0, start_at - time.time()))
    start = time.perf_counter()
    run_opencv(list(enumerate(paths)))
    queue.put(time.perf_counter() - start)


def parallel_headroom(items, workers: int) -> float:
    """Wall time of the OpenCV loop in 1 process / in `workers` processes, all warm."""
    ctx = multiprocessing.get_context(
        "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    )
    paths = [p for _, p in items]
    times = {}
    for n in (1, workers):
        queue = ctx.Queue()
        start_at = time.time() + 2.0
        procs = [ctx.Process(target=_control_loop, args=(paths[i::n], start_at, queue)) for i in range(n)]
        for p in procs:
            p.start()
        times[n] = max(queue.get() for _ in procs)
        for p in procs:
            p.join()
    return times[1] / times[workers]


def cpu_ms_per_image(items, resize_to=None, opencv=False) -> float:
    """CPU time per image in this process (robust to other load, unlike wall time)."""
    start = time.process_time()
    if opencv:
        run_opencv(items)
    else:
        for _, path in items:
            _proposals_for_file(path, mode="fast", resize_to=resize_to)
    return 1000 * (time.process_time() - start) / len(items)


def run_detkit(items, workers: int, resize_to, tmp: str):
    path = os.path.join(tmp, f"cache_{resize_to}.bin")
    if os.path.exists(path):
        os.remove(path)
    start = time.perf_counter()
    cache = compute_proposals(items, path, mode="fast", workers=workers, resize_to=resize_to, progress=False)
    seconds = time.perf_counter() - start
    return seconds, {i: cache.get(i) for i, _ in items}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--image-size", type=int, default=128, help="side of the shapes images")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--resize-to", default="none,112,96", help="comma list; 'none' = full size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.01, help="allowed drop of R@0.5 / R@0.7")
    p.add_argument("--data-root", default=os.path.join(tempfile.gettempdir(), "detkit_bench_ss"))
    args = p.parse_args(argv)
    settings = [None if s.strip().lower() == "none" else int(s) for s in args.resize_to.split(",")]

    items, gts, source = load_images(
        args.num_images, args.image_size, os.path.join(args.data_root, f"size{args.image_size}")
    )
    # the pool's server process is started once per Python process; start it outside the clock
    t0 = time.perf_counter()
    if "forkserver" in multiprocessing.get_all_start_methods():
        from multiprocessing import forkserver

        forkserver.ensure_running()
    server_s = time.perf_counter() - t0

    headroom = parallel_headroom(items, args.workers)

    timings = {"opencv": [], **{f"detkit r={r}": [] for r in settings}}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):  # interleaved, so load changes hit all rows alike
            s, outputs["opencv"] = run_opencv(items)
            timings["opencv"].append(s)
            for r in settings:
                s, outputs[f"detkit r={r}"] = run_detkit(items, args.workers, r, tmp)
                timings[f"detkit r={r}"].append(s)

    cpu_ms = {"opencv": cpu_ms_per_image(items, opencv=True)}
    for r in settings:
        cpu_ms[f"detkit r={r}"] = cpu_ms_per_image(items, resize_to=r)

    from detkit.evaluation.proposal_recall import proposal_recall  # torch: after timing

    ids = [i for i, _ in items]
    gt_list = [gts[i] for i in ids]
    rows = {}
    for name, boxes in outputs.items():
        rec = proposal_recall([boxes[i] for i in ids], gt_list, top_ks=(1000,))
        seconds = min(timings[name])
        n_props = sum(len(boxes[i]) for i in ids)
        rows[name] = {
            "seconds": seconds,
            "seconds_median": statistics.median(timings[name]),
            "images_per_s": len(ids) / seconds,
            "proposals_per_s": n_props / seconds,
            "proposals_per_image": n_props / len(ids),
            "cpu_ms_per_image": cpu_ms[name],
            "R@0.5": rec["R@0.5/1000"],
            "R@0.7": rec["R@0.7/1000"],
            "AR@1000": rec["AR@1000"],
        }
    base = rows["opencv"]
    for row in rows.values():
        row["speedup"] = base["seconds"] / row["seconds"]
    ok = [
        name
        for name in rows
        if name != "opencv"
        and rows[name]["R@0.5"] >= base["R@0.5"] - args.tolerance
        and rows[name]["R@0.7"] >= base["R@0.7"] - args.tolerance
    ]
    best = max(ok, key=lambda n: rows[n]["speedup"]) if ok else None

    print(
        f"{len(ids)} {source} images {args.image_size}px, {sum(len(g) for g in gt_list)} gt boxes, "
        f"{os.cpu_count()} cpus, detkit workers={args.workers}, best of {args.repeats} "
        f"(forkserver start {server_s:.2f} s, once, not counted)"
    )
    print(
        f"control: plain OpenCV in {args.workers} processes ran {headroom:.2f}x the speed of 1 "
        f"process (ideal {args.workers}x; lower means other load on the cpus)"
    )
    print(
        f"{'method':<18}{'s':>7}{'img/s':>8}{'props/s':>10}{'props/img':>10}{'cpu ms/img':>11}"
        f"{'R@0.5':>7}{'R@0.7':>7}{'AR@1k':>7}{'speedup':>8}"
    )
    for name, r in rows.items():
        mark = " <- best" if name == best else ""
        print(
            f"{name:<18}{r['seconds']:>7.2f}{r['images_per_s']:>8.1f}{r['proposals_per_s']:>10.0f}"
            f"{r['proposals_per_image']:>10.1f}{r['cpu_ms_per_image']:>11.1f}{r['R@0.5']:>7.3f}{r['R@0.7']:>7.3f}{r['AR@1000']:>7.3f}"
            f"{r['speedup']:>7.2f}x{mark}"
        )
    report = {
        "benchmark": "selective_search",
        "source": source,
        "num_images": len(ids),
        "image_size": args.image_size,
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "forkserver_start_s": server_s,
        "parallel_headroom": headroom,
        "rows": rows,
        "best": best,
        "best_speedup": rows[best]["speedup"] if best else None,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
