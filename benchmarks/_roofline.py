"""How close a benchmark runs to the machine's limit: FLOPs of one call, achieved GFLOP/s, and the
peak of large matrix products measured in the same process (same threads, same load).

    flops = count_flops(model.predict, images)           # counted once, not timed
    peak = measure_peak(device, "fp32")                   # GFLOP/s, or None where it does not apply
    print(format_roofline("detkit", flops, seconds, peak, "fp32"))

FLOPs follow torch.utils.flop_counter: a multiply-add counts 2, only matrix products and
convolutions (and attention) are counted, element-wise work is not. The peak is the best rate of
square matrix products of the precision, so the fraction of peak says how much of the time goes
to the products at their best speed.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

PRECISIONS = ("fp32", "bf16", "int8")
_FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of one call `fn(*args, **kwargs)` (run once under FlopCounterMode; for a training step
    the callable's backward is counted too)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _operands(n: int, precision: str, device: torch.device) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    if precision == "int8":
        a = torch.randint(-128, 128, (n, n), generator=g, dtype=torch.int8)
        b = torch.randint(-128, 128, (n, n), generator=g, dtype=torch.int8)
        return a.to(device), b.to(device)
    dtype = _FLOAT_DTYPES[precision]
    return tuple(torch.randn(n, n, generator=g).to(device=device, dtype=dtype) for _ in range(2))


def _products(precision: str) -> tuple:
    """The product kernels a model's layers reach: torch.mm, and F.linear (a @ b.T), which takes
    oneDNN where torch.mm does not (bf16 on CPUs without native bf16); int8: torch._int_mm."""
    if precision == "int8":
        return (torch._int_mm,)
    return (torch.mm, F.linear)


def _seconds_per_product(a: Tensor, b: Tensor, product, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    product(a, b)
    _sync(device)
    return time.perf_counter() - start


def measure_peak(
    device, precision: str, *, max_size: int = 2048, call_seconds: float = 0.25, min_seconds: float = 1.0
) -> float | None:
    """Best GFLOP/s (GOP/s for int8) of square `precision` matrix products on `device`.

    For each product kernel (`_products`) the size doubles from 256 up to `max_size` while one
    product takes under `call_seconds` (a kernel without fast code stays small instead of taking
    minutes); at that size the best of the products run for `min_seconds` counts; the fastest
    kernel gives the peak. int8 uses torch._int_mm (int32 results); None where it is unavailable
    on the device."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8" and not hasattr(torch, "_int_mm"):
        return None
    rates = []
    for product in _products(precision):
        n = 256
        try:
            a, b = _operands(n, precision, device)
            product(a, b)  # warm-up: kernel selection, allocations
            seconds = _seconds_per_product(a, b, product, device)
            while n < max_size and seconds < call_seconds:
                n *= 2
                a, b = _operands(n, precision, device)
                product(a, b)
                seconds = _seconds_per_product(a, b, product, device)
        except RuntimeError:  # e.g. no int8 product kernel for this device
            continue
        best, spent = seconds, seconds
        while spent < min_seconds:
            seconds = _seconds_per_product(a, b, product, device)
            best, spent = min(best, seconds), spent + seconds
        rates.append(2 * n**3 / best / 1e9)
    return max(rates) if rates else None


def measure_peaks(device, precisions=PRECISIONS) -> dict:
    """precision -> measure_peak(device, precision) (None where it does not apply)."""
    return {p: measure_peak(device, p) for p in precisions}


def roofline(flops: int, seconds: float, peak_gflops: float | None) -> dict:
    """GFLOPs per call, achieved GFLOP/s and the fraction of `peak_gflops` (None without a peak)."""
    achieved = flops / seconds / 1e9
    return {
        "gflops_per_call": flops / 1e9,
        "gflop_per_s": achieved,
        "fraction_of_peak": achieved / peak_gflops if peak_gflops else None,
    }


def format_peaks(peaks: dict) -> str:
    """'peak (square matrix products): fp32 123.4 GFLOP/s, bf16 ..., int8 n/a'."""
    parts = [f"{p} {'n/a' if v is None else f'{v:.1f}'}" for p, v in peaks.items()]
    return "peak GFLOP/s (square matrix products, this process): " + ", ".join(parts)


def format_roofline(name: str, flops: int, seconds: float, peak_gflops: float | None, precision: str) -> str:
    """One line: GFLOPs per call, achieved GFLOP/s, fraction of the `precision` peak."""
    r = roofline(flops, seconds, peak_gflops)
    fraction = "n/a" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.2f}"
    return (
        f"{name}: {r['gflops_per_call']:.1f} GFLOPs per call, {r['gflop_per_s']:.1f} GFLOP/s achieved, "
        f"{fraction} of the {precision} peak"
    )
