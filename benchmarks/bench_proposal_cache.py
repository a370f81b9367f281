"""Proposal cache: SQLite (`detkit.proposals.cache`) vs detkit's former binary format, same data.

Writes a cache of --num-images images x --boxes boxes (random float32 XYXY) with each
implementation, then times random reads (`get` of a shuffled id sequence, the access
pattern of a shuffled DataLoader) on a reader opened read-only, as `WithProposals` opens it.
Reads are interleaved between the two implementations, --repeats times; the best run of each
counts (the usual estimate on a shared machine). Also reported: write throughput (`put` of
every image into a new file, the way `compute_proposals` writes) and the time to open a reader.

The former implementation is not in the tree: give the path of a copy of its module, e.g.

    git show 37fa2b6:detkit/proposals/cache.py > /tmp/old_proposal_cache.py
    python benchmarks/bench_proposal_cache.py --old-cache-module /tmp/old_proposal_cache.py

Without --old-cache-module only SQLite is measured. Prints a table and one JSON line;
"ratio" is SQLite's reads per second over the old format's (> 1: SQLite is faster).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from detkit.proposals.cache import ProposalCache

PARAMS = {"method": "benchmark"}


def load_module(path: str):
    """The module at `path`, imported under a private name (its own imports resolve as usual)."""
    spec = importlib.util.spec_from_file_location("old_proposal_cache", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def make_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 500, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, 300, (n, 2))], axis=1).astype(np.float32)


def write_cache(cache_class, path: Path, images: list[list], boxes: list[np.ndarray]) -> float:
    """Seconds to create `path` and put every image's boxes (connection/file closed at the end)."""
    start = time.perf_counter()
    cache = cache_class(path, PARAMS, images=images)
    for (image_id, *_), b in zip(images, boxes):
        cache.put(image_id, b)
    cache.close()
    return time.perf_counter() - start


def time_reads(cache, order: list[int]) -> float:
    start = time.perf_counter()
    for image_id in order:
        cache.get(image_id)
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-images", type=int, default=5000)
    p.add_argument("--boxes", type=int, default=2000, help="boxes per image")
    p.add_argument("--reads", type=int, default=20000, help="random reads per timed run")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--old-cache-module", default=None, help="path of the former cache.py (see the docstring)")
    p.add_argument("--dir", default=None, help="where the cache files go (default: a temporary folder)")
    args = p.parse_args(argv)

    implementations = {"sqlite": ProposalCache}
    if args.old_cache_module:
        implementations["old binary"] = load_module(args.old_cache_module).ProposalCache

    rng = np.random.default_rng(0)
    images = [[i, f"{i:012d}.jpg", 100_000 + i] for i in range(1, args.num_images + 1)]
    boxes = [make_boxes(rng, args.boxes) for _ in images]
    order = rng.choice([r[0] for r in images], size=args.reads).tolist()
    megabytes = sum(b.nbytes for b in boxes) / 1e6

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-proposal-cache-") as tmp:
        writes, opens, readers = {}, {}, {}
        for name, cache_class in implementations.items():
            path = Path(tmp) / f"{name.replace(' ', '_')}.bin"
            writes[name] = write_cache(cache_class, path, images, boxes)
            start = time.perf_counter()
            readers[name] = cache_class(path, readonly=True)
            opens[name] = time.perf_counter() - start
            expected = {i: boxes[i - 1] for i in order[:50]}
            assert all(np.array_equal(readers[name].get(i), b) for i, b in expected.items()), name
            time_reads(readers[name], order[: min(len(order), 2000)])  # warm-up
        runs = {name: [] for name in implementations}
        for _ in range(args.repeats):
            for name, reader in readers.items():
                runs[name].append(time_reads(reader, order))
        sizes = {name: os.path.getsize(Path(tmp) / f"{name.replace(' ', '_')}.bin") for name in implementations}
        for reader in readers.values():
            reader.close()

    result = {
        "num_images": args.num_images,
        "boxes": args.boxes,
        "reads": args.reads,
        "repeats": args.repeats,
        "box_megabytes": round(megabytes, 1),
    }
    print(f"{args.num_images} images x {args.boxes} boxes ({megabytes:.0f} MB of boxes), {args.reads} random reads")
    print(
        f"{'format':<12} {'reads/s':>9} {'MB/s read':>10} {'write s':>8} {'img/s written':>14} {'open ms':>8} {'MB':>6}"
    )
    for name in implementations:
        best = min(runs[name])
        per_s = args.reads / best
        row = {
            "reads_per_s": round(per_s),
            "read_runs_s": [round(t, 3) for t in runs[name]],
            "write_s": round(writes[name], 2),
            "images_written_per_s": round(args.num_images / writes[name]),
            "open_reader_ms": round(opens[name] * 1e3, 1),
            "file_megabytes": round(sizes[name] / 1e6, 1),
        }
        result[name] = row
        print(
            f"{name:<12} {per_s:>9.0f} {per_s * megabytes / args.num_images:>10.0f} {writes[name]:>8.2f} "
            f"{args.num_images / writes[name]:>14.0f} {opens[name] * 1e3:>8.1f} {sizes[name] / 1e6:>6.0f}"
        )
    if "old binary" in implementations:
        result["ratio"] = round(result["sqlite"]["reads_per_s"] / result["old binary"]["reads_per_s"], 3)
        print(f"ratio (sqlite reads/s over old binary reads/s): {result['ratio']:.3f}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
