"""benchmarks/_roofline.py: FLOP counts against hand-computed values, the peak's shape and the formatter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import _roofline  # noqa: E402

sys.path.pop(0)


def test_count_flops_of_a_product_and_a_convolution():
    a, b = torch.zeros(3, 4), torch.zeros(4, 5)
    assert _roofline.count_flops(torch.mm, a, b) == 2 * 3 * 4 * 5  # a multiply-add counts 2
    conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False)
    # every output (1 x 3 x 4 x 4) is a 2 x 3 x 3 dot product
    assert _roofline.count_flops(conv, torch.zeros(1, 2, 4, 4)) == 2 * (3 * 4 * 4) * (2 * 3 * 3)


def test_count_flops_of_a_training_step_counts_backward():
    w = torch.zeros(4, 5, requires_grad=True)
    x = torch.zeros(3, 4)

    def step():
        (x @ w).sum().backward()

    # forward 3x4 @ 4x5; backward only the weight's gradient x^T (4x3) @ grad (3x5)
    assert _roofline.count_flops(step) == 2 * (2 * 3 * 4 * 5)


def test_measure_peak_and_format():
    peak = _roofline.measure_peak("cpu", "fp32", max_size=256, min_seconds=0.0)
    assert peak > 0
    r = _roofline.roofline(4e9, 2.0, 4.0)
    assert r == {"gflops_per_call": 4.0, "gflop_per_s": 2.0, "fraction_of_peak": 0.5}
    line = _roofline.format_roofline("detkit", 4e9, 2.0, 4.0, "fp32")
    assert line == "detkit: 4.0 GFLOPs per call, 2.0 GFLOP/s achieved, 0.50 of the fp32 peak"
    assert _roofline.format_roofline("x", 4e9, 2.0, None, "int8").endswith("n/a of the int8 peak")
    assert _roofline.format_peaks({"fp32": 10.0, "int8": None}) == (
        "peak GFLOP/s (square matrix products, this process): fp32 10.0, int8 n/a"
    )
    with pytest.raises(ValueError, match="precision must be one of"):
        _roofline.measure_peak("cpu", "fp16")
