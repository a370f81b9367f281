"""Where the time of one training (or predict) step goes: top ops and Python vs kernels.

    python benchmarks/profile_step.py                                  # detkit and torchvision R50-FPN
    python benchmarks/profile_step.py --model faster_rcnn_tiny --height 128 --width 128
    python benchmarks/profile_step.py --device cuda --batch-size 8 --height 800 --width 1216 --precision bf16

Runs `--warmup` steps, then profiles `--steps` steps with torch.profiler and prints, per
implementation: wall ms per step, the share of that wall time spent inside operators
(the sum of every op's self time; "kernels" on the CPU, host-side dispatch on CUDA, where
the CUDA kernel time is listed too) and the rest ("Python": framework code, the model's
own loops, allocator), then the top ops by self time. Models without a torchvision
counterpart (`faster_rcnn_tiny`, `mask_rcnn_tiny`) profile detkit alone. JSON at the end.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _pairs import TORCHVISION_BUILDERS, build_pair, make_inputs, predict_step, sync, to_channels_last, train_step
from torch.profiler import ProfilerActivity, profile

from detkit.models import build_model


def build_models(name: str, size: int, max_size: int, device: torch.device) -> dict:
    if name in TORCHVISION_BUILDERS:
        dk, tv = build_pair(name, min_size=size, max_size=max_size, device=device)
        return {"detkit": dk, "torchvision": tv}
    torch.manual_seed(0)
    model = build_model(name, num_classes=90, min_size=size, max_size=max_size)
    return {"detkit": model.to(device)}


def make_step(model, images, targets, mode: str, device, precision: str):
    if mode == "predict":
        model.eval()
        return predict_step(model, images, device, precision)
    model.train()
    return train_step(model, images, targets, device, precision)


def profile_steps(step, *, steps: int, warmup: int, device: torch.device, top: int) -> dict:
    for _ in range(warmup):
        step()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        wall_us = (time.perf_counter() - start) * 1e6
    events = prof.key_averages()
    in_ops_us = sum(e.self_cpu_time_total for e in events)
    use_cuda = device.type == "cuda"
    key = "self_device_time_total" if use_cuda else "self_cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, key, 0.0), reverse=True)[:top]
    total_key = sum(getattr(e, key, 0.0) for e in events) or 1.0
    return {
        "wall_ms_per_step": wall_us / steps / 1000,
        "in_ops_ms_per_step": in_ops_us / steps / 1000,
        "in_ops_share": in_ops_us / wall_us,
        "python_share": max(0.0, 1 - in_ops_us / wall_us),
        "top_ops": [
            {
                "op": e.key,
                "ms_per_step": getattr(e, key, 0.0) / steps / 1000,
                "share": getattr(e, key, 0.0) / total_key,
                "calls_per_step": e.count / steps,
            }
            for e in rows
        ],
        "time_column": "self CUDA" if use_cuda else "self CPU",
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    choices = sorted(TORCHVISION_BUILDERS) + ["faster_rcnn_tiny", "mask_rcnn_tiny"]
    parser.add_argument("--model", default="faster_rcnn_r50_fpn", choices=choices)
    parser.add_argument("--mode", default="train", choices=["train", "predict"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--top", type=int, default=12, help="ops listed per implementation")
    parser.add_argument("--channels-last", action="store_true", help="channels-last (NHWC) weights")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    models = build_models(args.model, min(args.height, args.width), max(args.height, args.width), device)
    if args.channels_last:
        to_channels_last(*models.values())
    images, targets = make_inputs(
        args.batch_size, args.height, args.width, device=device, with_masks=args.model.startswith("mask")
    )
    report = {
        "model": args.model,
        "mode": args.mode,
        "device": str(device),
        "batch_size": args.batch_size,
        "precision": args.precision,
        "image_size": [args.height, args.width],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "channels_last": args.channels_last,
    }
    for name, model in models.items():
        step = make_step(model, images, targets, args.mode, device, args.precision)
        result = profile_steps(step, steps=args.steps, warmup=args.warmup, device=device, top=args.top)
        report[name] = result
        print(
            f"\n{name}: {args.model} {args.mode}, batch {args.batch_size}, {args.precision}, "
            f"{args.height}x{args.width}, {device}, {torch.get_num_threads()} threads"
        )
        print(
            f"wall {result['wall_ms_per_step']:.1f} ms/step; inside ops {result['in_ops_share']:.0%}, "
            f"outside ops (Python, framework) {result['python_share']:.0%}"
        )
        print(f"| op | {result['time_column']} ms/step | share | calls/step |\n|---|---|---|---|")
        for row in result["top_ops"]:
            print(f"| {row['op']} | {row['ms_per_step']:.1f} | {row['share']:.1%} | {row['calls_per_step']:.0f} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
