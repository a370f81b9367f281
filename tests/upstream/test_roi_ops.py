"""RoIAlign, RoIPool and multi-level RoIAlign against reference implementations.

Mirrors torchvision `test/test_ops.py` (`RoIOpTester.test_forward` / `test_backward` /
`test_autocast` / `_helper_boxes_shape` / `test_jit_boxes_list`, `TestRoIPool`, `TestRoIAlign`
incl. `test_autocast_cpu`, `TestMultiScaleRoIAlign`) and detectron2
`tests/layers/test_roi_align.py` (`test_forward_output`, `test_resize`, `test_empty_box`,
`test_empty_batch`). The reference implementations below are written for these tests.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import MultiScaleRoIAlign

from detkit.heads import RoIPooler, roi_align_cpu
from detkit.heads.roi_align_cpu import roi_align, roi_pool


def _bilinear(img, y, x):
    """img Tensor[C, H, W] at (y, x) as RoIAlign samples: 0 outside [-1, H] x [-1, W], edges clamped."""
    h, w = img.shape[-2:]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return torch.zeros(img.shape[0], dtype=img.dtype)
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * img[:, y0, x0]
        + (1 - ly) * lx * img[:, y0, x1]
        + ly * (1 - lx) * img[:, y1, x0]
        + ly * lx * img[:, y1, x1]
    )


def reference_roi_align(x, rois, ph, pw, scale, sampling_ratio, aligned):
    out = torch.zeros(rois.shape[0], x.shape[1], ph, pw, dtype=x.dtype)
    off = 0.5 if aligned else 0.0
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        x1, y1, x2, y2 = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / ph)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / pw)
        count = max(gh * gw, 1)
        for i in range(ph):
            for j in range(pw):
                acc = torch.zeros(x.shape[1], dtype=x.dtype)
                for iy in range(gh):
                    yy = y1 + i * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        xx = x1 + j * bw + (ix + 0.5) * bw / gw
                        acc += _bilinear(x[int(b)], yy, xx)
                out[r, :, i, j] = acc / count
    return out


def reference_roi_pool(x, rois, ph, pw, scale):
    out = torch.zeros(rois.shape[0], x.shape[1], ph, pw, dtype=x.dtype)
    h, w = x.shape[-2:]
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        # C's round(): halves away from zero (Python's round() goes to even)
        x1, y1, x2, y2 = (int(math.copysign(math.floor(abs(v * scale) + 0.5), v)) for v in (x1, y1, x2, y2))
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        for i in range(ph):
            for j in range(pw):
                ys = min(max(math.floor(i * rh / ph) + y1, 0), h)
                ye = min(max(math.ceil((i + 1) * rh / ph) + y1, 0), h)
                xs = min(max(math.floor(j * rw / pw) + x1, 0), w)
                xe = min(max(math.ceil((j + 1) * rw / pw) + x1, 0), w)
                if ye > ys and xe > xs:
                    out[r, :, i, j] = x[int(b), :, ys:ye, xs:xe].amax(dim=(-2, -1))
    return out


def _inputs(dtype, contiguous=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, 3, 10, 12, generator=g, dtype=torch.float64).to(dtype)
    if not contiguous:
        x = x.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    rois = torch.tensor(
        [
            [0, 0, 0, 9, 9],  # covers the map
            [0, 0, 5, 4, 9],
            [0, 5, 5, 9, 9],
            [1, 0, 0, 9, 9],
            [1, -3.5, 2.25, 14.5, 20.0],  # leaves the map
            [0, 3.3, 1.7, 3.6, 2.1],  # under 1 px
        ],
        dtype=dtype,
    )
    return x, rois


@pytest.fixture(params=[False, True], ids=["torchvision_path", "threaded_path"])
def cpu_path(request, monkeypatch):
    if request.param:  # every call through detkit's threaded forward + matmul backward
        monkeypatch.setattr(roi_align_cpu, "_MIN_WORK", 1)
        monkeypatch.setattr(roi_align_cpu, "matmul_backward_pays", lambda *args: True)
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
def test_roi_align_forward_matches_reference(cpu_path, dtype, contiguous, aligned, sampling_ratio):
    x, rois = _inputs(dtype, contiguous)
    out = roi_align(x, rois, (5, 4), 0.5, sampling_ratio, aligned)
    ref = reference_roi_align(x.double(), rois.double(), 5, 4, 0.5, sampling_ratio, aligned)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_roi_align_backward_gradcheck(cpu_path):
    x, rois = _inputs(torch.float64)
    x = x[:, :1, :7, :8].clone().requires_grad_(True)
    for aligned in (False, True):
        assert torch.autograd.gradcheck(lambda t, a=aligned: roi_align(t, rois, 3, 0.5, 2, a), (x,))


def test_roi_align_boxes_as_list_equal_packed():
    x, rois = _inputs(torch.float32)
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    order = torch.argsort(rois[:, 0], stable=True)
    torch.testing.assert_close(roi_align(x, boxes, 3, 0.5, 2), roi_align(x, rois[order], 3, 0.5, 2))


@pytest.mark.parametrize(
    "boxes",
    [
        torch.zeros(3, 4),  # packed RoIs need the batch index column
        torch.zeros(2, 3, 5),
        [torch.zeros(3, 5)],  # per-image boxes are XYXY only
        [torch.zeros(3)],
        "boxes",
    ],
)
def test_boxes_shape_errors(boxes):
    x = torch.rand(1, 2, 8, 8)
    with pytest.raises(ValueError, match="roi_align: boxes"):
        roi_align(x, boxes, 3)
    with pytest.raises(ValueError, match="roi_pool: boxes"):
        roi_pool(x, boxes, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_pool_matches_reference(dtype):
    x, rois = _inputs(dtype)
    out = roi_pool(x, rois, (4, 3), 0.5)
    assert out.dtype == dtype
    torch.testing.assert_close(out, reference_roi_pool(x, rois, 4, 3, 0.5), rtol=0, atol=0)


def test_roi_pool_gradcheck():
    x, rois = _inputs(torch.float64)
    x = x + torch.arange(x.numel(), dtype=x.dtype).view_as(x) * 1e-3  # distinct maxima
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: roi_pool(t, rois, 3, 0.5), (x,))


@pytest.mark.parametrize("op", ["align", "pool"])
def test_autocast_cpu_close_to_float32(op):
    x, rois = _inputs(torch.float32)
    fn = (lambda t: roi_align(t, rois, 5, 0.5, 2, True)) if op == "align" else (lambda t: roi_pool(t, rois, 5, 0.5))
    ref = fn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=1e-2)


def test_multiscale_pooler_matches_torchvision():
    g = torch.Generator().manual_seed(3)
    feats = {"a": torch.rand(1, 4, 32, 32, generator=g), "b": torch.rand(1, 4, 16, 16, generator=g)}
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [4.0, 4.0, 100.0, 110.0], [10.0, 3.0, 200.0, 240.0]])
    tv = MultiScaleRoIAlign(["a", "b"], 7, 2, canonical_scale=224, canonical_level=4)
    ref = tv(feats, [boxes], [(128, 128)])
    out = RoIPooler(["a", "b"], [4, 8], output_size=7, sampling_ratio=2)(feats, boxes, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


# --------------------------------------------------------------------- detectron2 cases
def _one_roi(img, box, size, sampling_ratio=0, aligned=True):
    x = torch.as_tensor(img, dtype=torch.float32)[None, None]
    rois = torch.tensor([[0.0, *box]])
    return roi_align(x, rois, size, 1.0, sampling_ratio, aligned)[0, 0]


def test_forward_output_with_and_without_half_pixel_offset():
    img = torch.arange(25.0).view(5, 5)
    legacy = _one_roi(img, [1, 1, 3, 3], 4, aligned=False)
    aligned = _one_roi(img, [1, 1, 3, 3], 4, aligned=True)
    # without the offset the RoI samples from pixel 1 on; with it the 2x2 pixels 6, 7, 11, 12 are upsampled
    expected_legacy = torch.tensor([[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]])
    expected_aligned = expected_legacy - 3.0
    torch.testing.assert_close(legacy, expected_legacy)
    torch.testing.assert_close(aligned, expected_aligned)


def test_resize_consistency():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(30, 30, generator=g) * 100
    half = F.interpolate(img[None, None], scale_factor=0.5, mode="bilinear", align_corners=False)[0, 0]
    out = _one_roi(img, [10, 10, 20, 20], 5)
    out_half = _one_roi(half, [5, 5, 10, 10], 5)
    assert (out - out_half).abs().max() < 1e-4


def test_empty_box_gives_zeros_and_zero_gradient():
    img = torch.rand(1, 1, 5, 5, requires_grad=True)
    out = roi_align(img, torch.tensor([[0.0, 3, 4, 5, 4]]), 7, 1.0, 0, True)
    assert out.shape == (1, 1, 7, 7) and (out == 0).all()
    out.sum().backward()
    assert (img.grad == 0).all()


def test_empty_batch():
    out = roi_align(torch.zeros(0, 3, 10, 10), torch.zeros(0, 5), 7, 1.0, 0, True)
    assert out.shape == (0, 3, 7, 7)
    empty_idx = torch.zeros(0, dtype=torch.long)
    pooled = RoIPooler(["p"], [4])({"p": torch.zeros(2, 3, 10, 10)}, torch.zeros(0, 4), empty_idx)
    assert pooled.shape == (0, 3, 7, 7)
