"""detkit predict vs torchvision, op by op in CPU time: steady numbers on a busy shared machine.

    python benchmarks/compare_ops_cpu.py                       # Faster R-CNN R50-FPN, 320x320, 1 thread
    python benchmarks/compare_ops_cpu.py --height 800 --width 1216 --iters 4

Wall times on a machine shared with other jobs mostly measure the waiting; the CPU time of
the one computing thread (`--threads 1`, the default) measures the work. Calls alternate
detkit and torchvision; totals are the minimum and median CPU ms per call, and the op table
(a `TorchDispatchMode` timing every aten op of a second set of calls) shows where the two
differ. Ratio > 1: detkit cheaper.

`detkit-plain` is detkit with torchvision's arithmetic (NCHW batch, frozen BNs not folded:
`--detkit-plain` of bench_infer): the same work, so its ratio shows what the code around the
convolutions costs; `detkit` is the default (channels-last batch, folded BNs on the CPU).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import time

import torch
from _pairs import build_pair, make_inputs, plain_arithmetic
from torch.utils._python_dispatch import TorchDispatchMode


class _OpTimer(TorchDispatchMode):
    def __init__(self, totals: dict):
        super().__init__()
        self.totals = totals

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.thread_time()
        out = func(*args, **(kwargs or {}))
        entry = self.totals[func.overloadpacket.__name__]
        entry[0] += time.thread_time() - start
        entry[1] += 1
        return out


def predict_plain(model, images):
    with plain_arithmetic(model):
        return model.predict(images)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="faster_rcnn_r50_fpn", choices=["faster_rcnn_r50_fpn", "mask_rcnn_r50_fpn"])
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--top", type=int, default=20, help="ops listed, largest detkit - torchvision difference first")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = min(args.height, args.width)
    dk, tv = build_pair(args.model, min_size=size, max_size=max(args.height, args.width), device=torch.device("cpu"))
    with torch.no_grad():  # trained-like: one class dominates, ~100 detections per image (as bench_infer)
        for model in (dk, tv):
            model.roi_heads.box_predictor.cls_score.bias[1] += 4.0
    dk.eval()
    tv.eval()
    images, _ = make_inputs(1, args.height, args.width, device="cpu", with_masks=False)
    calls = {
        "detkit": lambda: dk.predict(images),
        "detkit-plain": lambda: predict_plain(dk, images),
        "torchvision": lambda: tv(images),
    }
    clock = time.thread_time if args.threads == 1 else time.perf_counter
    seconds = {name: [] for name in calls}
    ops = {name: collections.defaultdict(lambda: [0.0, 0]) for name in ("detkit", "torchvision")}
    with torch.no_grad():
        reference = tv(images)[0]["scores"].sort().values
        for name, call in calls.items():
            scores = call()[0]["scores"].sort().values
            diff = float((scores - reference).abs().max()) if scores.shape == reference.shape else float("nan")
            print(f"{name}: {len(scores)} detections, max |score - torchvision's| {diff:.2g}")
            call()
        for _ in range(args.iters):
            for name, call in calls.items():
                start = clock()
                call()
                seconds[name].append(clock() - start)
        for _ in range(args.iters):
            for name in ops:
                with _OpTimer(ops[name]):
                    calls[name]()
    unit = "CPU" if args.threads == 1 else "wall"
    tv_min, tv_med = min(seconds["torchvision"]), statistics.median(seconds["torchvision"])
    print(f"\n{args.model}, {args.height}x{args.width}, batch 1, {args.threads} thread(s), {unit} ms per predict call")
    for name, ts in seconds.items():
        ratio_min, ratio_med = tv_min / min(ts), tv_med / statistics.median(ts)
        print(f"{name:<32} min {min(ts) * 1e3:8.1f}  median {statistics.median(ts) * 1e3:8.1f}"
              f"  torchvision / this: {ratio_min:.3f} (min), {ratio_med:.3f} (median)")  # fmt: skip
    if args.threads == 1:
        print(f"\n{'aten op':<32}{'detkit ms':>10}{'calls':>7}{'torchvision ms':>16}{'calls':>7}")
        keys = sorted(set(ops["detkit"]) | set(ops["torchvision"]),
                      key=lambda k: -abs(ops["detkit"][k][0] - ops["torchvision"][k][0]))  # fmt: skip
        for key in keys[: args.top]:
            (a, na), (b, nb) = ops["detkit"][key], ops["torchvision"][key]
            print(f"{key[:31]:<32}{a / args.iters * 1e3:>10.2f}{na / args.iters:>7.0f}"
                  f"{b / args.iters * 1e3:>16.2f}{nb / args.iters:>7.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
