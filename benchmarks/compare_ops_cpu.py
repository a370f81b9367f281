"""detkit predict vs torchvision, op by op in CPU time: steady numbers on a busy shared machine.

    python benchmarks/compare_ops_cpu.py                       # Faster R-CNN R50-FPN, 320x320, 1 thread
    python benchmarks/compare_ops_cpu.py --what-if fold-bn --iters 10

Wall times on a machine shared with other jobs mostly measure the waiting; the CPU time of
the one computing thread (`--threads 1`, the default) measures the work. Calls alternate
detkit and torchvision; totals are the minimum and median CPU ms per call, and the op table
(a `TorchDispatchMode` timing every aten op of a second set of calls) shows where the two
differ. Ratio > 1: detkit cheaper.

`--what-if` also times detkit copies changed as a possible next step would change them
(prototypes here, not detkit code), with the largest score difference to torchvision:
  fold-bn    the frozen batch norms folded into the preceding convolutions (scores move ~1e-4)
(The former `stem-pool` prototype is detkit code now: `detkit.layers.pool.MaxPool2d`.)
"""

from __future__ import annotations

import argparse
import collections
import copy
import statistics
import time

import torch
from _pairs import build_pair, make_inputs
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from detkit.layers.norm import LeanFrozenBatchNorm2d


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


def fold_bn(model: nn.Module) -> nn.Module:
    """A copy whose conv + frozen BN pairs are one convolution with a bias."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            norm = getattr(module, "norm", None)
            if isinstance(norm, LeanFrozenBatchNorm2d) and isinstance(getattr(module, "conv", None), nn.Conv2d):
                scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
                module.conv.weight.mul_(scale.view(-1, 1, 1, 1))
                module.conv.bias = nn.Parameter(norm.bias - norm.running_mean * scale)
                module.norm = nn.Identity()
    return model


WHAT_IF = {"fold-bn": fold_bn}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="faster_rcnn_r50_fpn", choices=["faster_rcnn_r50_fpn", "mask_rcnn_r50_fpn"])
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--top", type=int, default=20, help="ops listed, largest detkit - torchvision difference first")
    parser.add_argument("--what-if", default="", help=f"comma-separated prototypes of {sorted(WHAT_IF)}, in turn")
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
    calls = {"detkit": lambda: dk.predict(images), "torchvision": lambda: tv(images)}
    changed, names = dk, []
    for name in filter(None, args.what_if.split(",")):
        changed, names = WHAT_IF[name](changed), [*names, name]
        calls["detkit+" + "+".join(names)] = lambda m=changed: m.predict(images)
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
