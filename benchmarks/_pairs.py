"""Shared set-up for the detkit-vs-torchvision benchmarks: same weights, same inputs.

Both models get the same random weights (torchvision's state dict loaded into detkit through
the checkpoint converter), FrozenBatchNorm2d as in fine-tuning from ImageNet/COCO weights,
and identical image lists and targets.
"""

from __future__ import annotations

import contextlib
import json
import time
from contextlib import nullcontext

import torch
from _roofline import count_flops, format_peaks, format_roofline, measure_peaks, roofline
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

from detkit.layers import convert_frozen_batchnorm
from detkit.models import build_model, configure_kernels
from detkit.models.weights import load_detector_weights

TORCHVISION_BUILDERS = {"faster_rcnn_r50_fpn": fasterrcnn_resnet50_fpn, "mask_rcnn_r50_fpn": maskrcnn_resnet50_fpn}


def build_pair(name: str, *, min_size: int, max_size: int, device: torch.device, num_classes: int = 90):
    """(detkit model, torchvision model) with identical weights on `device`."""
    if name not in TORCHVISION_BUILDERS:
        raise SystemExit(f"--model must be one of {sorted(TORCHVISION_BUILDERS)}, got {name!r}")
    torch.manual_seed(0)
    tv = TORCHVISION_BUILDERS[name](
        weights=None, weights_backbone=None, num_classes=num_classes + 1, min_size=min_size, max_size=max_size
    )
    tv = convert_frozen_batchnorm(tv)
    for p in tv.backbone.body.conv1.parameters():  # torchvision freezes stem + layer1 when fine-tuning
        p.requires_grad_(False)
    for p in tv.backbone.body.layer1.parameters():
        p.requires_grad_(False)
    dk = build_model(name, num_classes=num_classes, min_size=min_size, max_size=max_size, freeze_at=2)
    load_detector_weights(dk, tv.state_dict(), arch=name)
    return dk.to(device), tv.to(device)


def to_channels_last(*models) -> None:
    """Channels-last weights in place: convolutions then run NHWC (the batched images follow)."""
    for model in models:
        model.to(memory_format=torch.channels_last)


def make_detkit_plain(model) -> None:
    """detkit without its CPU shortcuts that change float rounding (channels-last batches, frozen
    BNs folded into the convolutions): the same arithmetic as torchvision, to compare the work.
    Its CPU kernels stay on (the threaded RoIAlign and the strided stem pool give torchvision's
    forward values)."""
    model.transform.memory_format = "contiguous"
    configure_kernels(model, fold_bn=False, cpu_kernels=True)


@contextlib.contextmanager
def plain_arithmetic(model):
    """detkit with torchvision's arithmetic for the block: NCHW batch, frozen BNs not folded;
    afterwards the batch layout as before and the default kernels."""
    layout = model.transform.memory_format
    make_detkit_plain(model)
    try:
        yield
    finally:
        model.transform.memory_format = layout
        configure_kernels(model)


def make_inputs(batch_size: int, height: int, width: int, *, device, with_masks: bool, seed: int = 0):
    """Random images and 1-8 random boxes per image (masks = filled boxes)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(batch_size):
        images.append(torch.rand(3, height, width, generator=g).to(device))
        k = int(torch.randint(1, 9, (1,), generator=g))
        xy = torch.rand(k, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
        wh = (torch.rand(k, 2, generator=g) * 0.3 + 0.05) * torch.tensor([width, height])
        boxes = torch.cat([xy, xy + wh], 1)
        target = {"boxes": boxes.to(device), "labels": torch.randint(1, 91, (k,), generator=g).to(device)}
        if with_masks:
            masks = torch.zeros((k, height, width), dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
                masks[i, y1:y2, x1:x2] = 1
            target["masks"] = masks.to(device)
        targets.append(target)
    return images, targets


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise SystemExit(f"--precision must be fp32 or bf16, got {precision!r}")


def train_step(model, images, targets, device: torch.device, precision: str, *, foreach: bool | None = None):
    """A callable running one SGD step (forward with losses, backward, update) of `model`;
    `foreach` as torch.optim.SGD takes it (None: torch's default for the device)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-4, momentum=0.9, foreach=foreach)

    def step():
        with autocast(device, precision):
            losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def predict_step(predict, images, device: torch.device, precision: str):
    """A callable running `predict(images)` without gradients at `precision`."""

    def step():
        with torch.no_grad(), autocast(device, precision):
            predict(images)

    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_alternating(steps: dict, *, iters: int, warmup: int, device: torch.device) -> dict:
    """Run each callable in `steps` `warmup` times, then alternate them `iters` times.

    Returns name -> {"seconds": median seconds per call, "peak_mem_gib": peak CUDA memory or None}.
    """
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in steps}
    peaks = {name: 0 for name in steps}
    for _ in range(iters):
        for name, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = {
            "seconds": ts[len(ts) // 2],
            "peak_mem_gib": peaks[name] / 2**30 if device.type == "cuda" else None,
        }
    return out


def measure_roofline(steps: dict, precisions: dict, device: torch.device) -> dict:
    """FLOPs of one call of each step (counted once) and the machine's peak per precision, measured
    in this process: {"flops": name -> FLOPs, "precisions": name -> precision, "peaks": precision -> GFLOP/s}."""
    flops = {name: count_flops(fn) for name, fn in steps.items()}
    peaks = measure_peaks(device, sorted(set(precisions.values()) | {"fp32"}))
    return {"flops": flops, "precisions": dict(precisions), "peaks": peaks}


def report(
    kind: str, args, result: dict, batch_size: int, checks: dict | None = None, limits: dict | None = None
) -> None:
    """Print the img/s table, the ratio to torchvision of every detkit row and, with `limits`
    (from `measure_roofline`), each row's FLOPs, achieved GFLOP/s and fraction of peak; then the JSON."""
    dk, tv = result["detkit"], result["torchvision"]
    rows = []
    for name, r in result.items():
        r["img_per_s"] = batch_size / r["seconds"]
        mem = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f}"
        rows.append(f"| {name} | {r['img_per_s']:.2f} | {r['seconds'] * 1000:.1f} | {mem} |")
        if limits is not None:
            precision = limits["precisions"][name]
            r["precision"] = precision
            r["roofline"] = roofline(limits["flops"][name], r["seconds"], limits["peaks"][precision])
    ratio = dk["img_per_s"] / tv["img_per_s"]
    layout = ", channels-last" if getattr(args, "channels_last", False) else ""
    layout += ", detkit plain" if getattr(args, "detkit_plain", False) else ""
    print(
        f"\n{kind}: {args.model}, batch {batch_size}, {args.precision}{layout}, "
        f"{args.height}x{args.width}, {args.device}"
    )
    print("| impl | img/s | ms/iter | peak GiB |\n|---|---|---|---|")
    print("\n".join(rows))
    print(f"detkit / torchvision img/s ratio: {ratio:.2f}")
    for name, r in result.items():
        if name not in ("detkit", "torchvision"):
            print(f"{name} / torchvision img/s ratio: {r['img_per_s'] / tv['img_per_s']:.2f}")
    if limits is not None:
        print(format_peaks(limits["peaks"]))
        for name, r in result.items():
            precision = limits["precisions"][name]
            print(format_roofline(name, limits["flops"][name], r["seconds"], limits["peaks"][precision], precision))
    payload = {
        "kind": kind,
        "model": args.model,
        "batch_size": batch_size,
        "precision": args.precision,
        "channels_last": getattr(args, "channels_last", False),
        "detkit_plain": getattr(args, "detkit_plain", False),
        "image_size": [args.height, args.width],
        "device": str(args.device),
        "torch": torch.__version__,
        **result,
        "ratio": ratio,
        "peaks": None if limits is None else limits["peaks"],
        "checks": checks or {},
    }
    print(json.dumps(payload))


def add_common_args(parser, *, batch_size: int) -> None:
    parser.add_argument("--model", default="faster_rcnn_r50_fpn", choices=sorted(TORCHVISION_BUILDERS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true", help="both models with channels-last (NHWC) weights")
    parser.add_argument(
        "--detkit-plain",
        action="store_true",
        help="detkit with NCHW batches and unfolded frozen BNs (torchvision's arithmetic; the default folds "
        "and runs channels-last on the CPU)",
    )
