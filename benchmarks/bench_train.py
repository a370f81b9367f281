"""Training-step throughput: detkit vs torchvision, same weights, inputs and precision.

    python benchmarks/bench_train.py --device cpu --batch-size 2 --height 320 --width 320
    python benchmarks/bench_train.py --device cuda --batch-size 8 --height 800 --width 1216 --precision bf16

One step = forward (losses), backward, SGD step. Prints a table, the img/s ratio, each side's
FLOPs per step (forward + backward, counted once), achieved GFLOP/s and fraction of the peak of
--precision (square matrix products measured in the same process), and JSON.
"""

from __future__ import annotations

import argparse

import torch
from _pairs import (
    add_common_args,
    build_pair,
    make_detkit_plain,
    make_inputs,
    measure_roofline,
    report,
    time_alternating,
    to_channels_last,
    train_step,
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, batch_size=2)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    args.device = device
    size = min(args.height, args.width)
    dk, tv = build_pair(args.model, min_size=size, max_size=max(args.height, args.width), device=device)
    if args.channels_last:
        to_channels_last(dk, tv)
    if args.detkit_plain:
        make_detkit_plain(dk)
    images, targets = make_inputs(
        args.batch_size, args.height, args.width, device=device, with_masks=args.model.startswith("mask")
    )
    dk.train()
    tv.train()

    # loss definitions match: same weights, inputs -> losses of the same size (sampling differs)
    with torch.no_grad():
        torch.manual_seed(0)
        dk_losses = {k: round(float(v), 4) for k, v in dk(images, targets).items()}
        torch.manual_seed(0)
        tv_losses = {k: round(float(v), 4) for k, v in tv(images, targets).items()}
    print("step-0 losses detkit:", dk_losses)
    print("step-0 losses torchvision:", tv_losses)
    pairs = (("detkit", dk), ("torchvision", tv))
    steps = {name: train_step(model, images, targets, device, args.precision) for name, model in pairs}
    result = time_alternating(steps, iters=args.iters, warmup=args.warmup, device=device)
    limits = measure_roofline(steps, {name: args.precision for name in steps}, device)
    report("train", args, result, args.batch_size, limits=limits)


if __name__ == "__main__":
    main()
