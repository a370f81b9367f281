"""The one dtype rule of detkit's box math: float64 in -> float64 out, anything else -> float32,
on every code path (small and large inputs, autocast)."""

import pytest
import torch

from detkit.heads import paste_masks
from detkit.heads.roi_align_cpu import roi_align
from detkit.matching import BoxCoder
from detkit.structures import batched_box_iou, box_iou, box_math_dtype


def _boxes(n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 100
    return torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 50], 1).to(dtype)


@pytest.mark.parametrize(
    "dtypes,expected",
    [
        ((torch.float64,), torch.float64),
        ((torch.float32, torch.float64), torch.float64),
        ((torch.float32,), torch.float32),
        ((torch.bfloat16,), torch.float32),
        ((torch.float16, torch.float32), torch.float32),
        ((torch.int64,), torch.float32),
    ],
)
def test_box_math_dtype(dtypes, expected):
    assert box_math_dtype(*(torch.zeros(1, dtype=d) for d in dtypes)) == expected


@pytest.mark.parametrize("dtype,expected", [(torch.float64, torch.float64), (torch.bfloat16, torch.float32)])
def test_iou_and_box_coder_follow_the_rule(dtype, expected):
    a, b = _boxes(7, dtype), _boxes(9, dtype, seed=1)
    assert box_iou(a, b).dtype == expected
    assert batched_box_iou(a[None], b[None]).dtype == expected
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = coder.encode(a, b[:7])
    assert deltas.dtype == expected
    assert coder.decode(deltas, b[:7]).dtype == expected
    assert coder.decode(deltas.repeat(1, 3), b[:7]).dtype == expected  # per-class path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert box_iou(a, b).dtype == expected and coder.decode(deltas, b[:7]).dtype == expected


def test_float64_box_coding_is_exact_to_float64_precision():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    ref = _boxes(50, torch.float64) * 100 + 1e5  # far from the origin: float32 keeps ~1e-2 px
    gt = ref + torch.rand(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    back = coder.decode(coder.encode(gt, ref), ref)
    assert (back - gt).abs().max() < 1e-6


def test_mixed_float32_and_float64_promote():
    a32, b64 = _boxes(5, torch.float32), _boxes(6, torch.float64)
    assert box_iou(a32, b64).dtype == torch.float64
    assert BoxCoder().encode(a32, b64[:5]).dtype == torch.float64


@pytest.mark.parametrize("dtype,expected", [(torch.float64, torch.float64), (torch.float32, torch.float32)])
def test_paste_masks_probabilities_keep_the_rule(dtype, expected):
    probs = torch.rand(3, 28, 28, dtype=dtype)
    boxes = _boxes(3, torch.float32)
    assert paste_masks(probs, boxes, (120, 160), threshold=None).dtype == expected
    assert paste_masks(probs, boxes, (120, 160)).dtype == torch.uint8  # thresholded: 0/1 masks
    assert paste_masks(probs[:0], boxes[:0], (120, 160), threshold=None).dtype == expected  # empty path


@pytest.mark.parametrize("num", [3, 3000])  # torchvision's op / the threaded CPU path
def test_roi_align_output_dtype_is_the_features_dtype(num):
    x = torch.randn(1, 64, 16, 16, dtype=torch.float64)
    rois = torch.cat([torch.zeros(num, 1), _boxes(num, torch.float32) / 10], 1)
    assert roi_align(x, rois, 7, 1.0, 2).dtype == torch.float64
    assert roi_align(x.bfloat16(), rois, 7, 1.0, 2).dtype == torch.bfloat16
