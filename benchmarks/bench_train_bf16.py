"""detkit's training step in bf16 autocast (what `--trainer.precision bf16-mixed` runs) vs fp32, same model and inputs.

    python benchmarks/bench_train_bf16.py [--model faster_rcnn_r50_fpn] [--size 320] [--batch-size 2] [--iters 2]

One process, the two precisions alternating (a warm-up step each first); SGD step included.
Prints the median seconds per step of each, bf16's speed relative to fp32 (> 1: bf16 faster),
whether oneDNN runs bfloat16 natively on this CPU, and JSON. `bench_train.py --precision bf16`
compares detkit with torchvision at one precision; this compares the precisions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from _pairs import build_pair, make_inputs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="faster_rcnn_r50_fpn")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--iters", type=int, default=2)
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    model, _ = build_pair(args.model, min_size=args.size, max_size=args.size, device=cpu)
    model.train()
    images, targets = make_inputs(args.batch_size, args.size, args.size, device=cpu, with_masks="mask" in args.model)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(args.iters + 1):
        for name in times:
            seconds = step(name == "bf16")
            if i:
                times[name].append(seconds)
    fp32, bf16 = statistics.median(times["fp32"]), statistics.median(times["bf16"])
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    print(f"{args.model} {args.size}x{args.size} batch {args.batch_size}: fp32 {fp32:.2f} s/step, bf16 autocast "
          f"{bf16:.2f} s/step, bf16 speed {fp32 / bf16:.2f}x fp32; native bfloat16 on this CPU: {native}")  # fmt: skip
    print(json.dumps({"seconds": times, "bf16_vs_fp32": fp32 / bf16, "native_bf16": native}))


if __name__ == "__main__":
    main()
