"""RoI pooling: detkit's CPU RoIAlign (threaded forward, matrix-product backward) and RoIPooler."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops import roi_pool as tv_roi_pool

from detkit.heads import RoIPooler, assign_fpn_levels, roi_align_cpu
from detkit.heads.roi_align_cpu import roi_align, roi_align_backward_cpu, roi_pool
from detkit.models import configure_kernels


def _rois(num, batch, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    wh = torch.rand(num, 2, generator=g) * size * 0.6 + 2
    xy = torch.rand(num, 2, generator=g) * size - wh / 3  # some boxes leave the map
    idx = torch.randint(0, batch, (num, 1), generator=g).float()
    return torch.cat([idx, xy, xy + wh], dim=1)


@pytest.fixture(autouse=True)
def matmul_backward(monkeypatch):
    """Tests of the matmul backward take it whatever the cost model says (tests of the model
    itself undo this)."""
    monkeypatch.setattr(roi_align_cpu, "matmul_backward_pays", lambda *args: True)


@pytest.fixture
def threads2():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0, -1])
@pytest.mark.parametrize("channels", [64, 37])  # 37: uneven channel slices
def test_cpu_roi_align_matches_torchvision(threads2, aligned, sampling_ratio, channels):
    x = torch.randn(2, channels, 24, 32, requires_grad=True)
    rois = _rois(600, 2, 120)
    grad = torch.randn(600, channels, 7, 7)
    ref = tv_roi_align(x, rois, (7, 7), 0.25, sampling_ratio, aligned)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    out = roi_align(x, rois, 7, 0.25, sampling_ratio, aligned)
    (out_grad,) = torch.autograd.grad(out, x, grad)
    assert out.grad_fn is not None and "CPURoIAlign" in type(out.grad_fn).__name__
    assert torch.equal(out, ref)  # forward: the same kernel on channel slices
    torch.testing.assert_close(out_grad, ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())


def test_cpu_kernels_option_picks_torchvision_kernel_in_function_pooler_and_model(threads2):
    """`cpu_kernels=False` runs torchvision's kernels (those CUDA runs) on the same inputs; the
    threaded forward gives the same values, its backward the same up to summation order."""
    x = torch.randn(2, 64, 24, 32, requires_grad=True)
    rois = _rois(600, 2, 120)
    grad = torch.randn(600, 64, 7, 7)
    ref = tv_roi_align(x, rois, (7, 7), 0.25, 2, False)
    (ref_grad,) = torch.autograd.grad(ref, x, grad)
    plain = roi_align(x, rois, 7, 0.25, 2, cpu_kernels=False)
    assert "CPURoIAlign" not in type(plain.grad_fn).__name__
    assert torch.equal(plain, ref) and torch.equal(torch.autograd.grad(plain, x, grad)[0], ref_grad)

    pooler = RoIPooler(["p2"], [4], sampling_ratio=2)
    assert pooler.cpu_kernels is True
    fast = pooler({"p2": x}, rois[:, 1:], rois[:, 0].long())
    assert "CPURoIAlign" in type(fast.grad_fn).__name__ and torch.equal(fast, ref)
    (fast_grad,) = torch.autograd.grad(fast, x, grad)
    torch.testing.assert_close(fast_grad, ref_grad, rtol=1e-5, atol=1e-5 * ref_grad.abs().max().item())
    configure_kernels(pooler, cpu_kernels=False)
    plain = pooler({"p2": x}, rois[:, 1:], rois[:, 0].long())
    assert "CPURoIAlign" not in type(plain.grad_fn).__name__ and torch.equal(plain, ref)
    assert torch.equal(torch.autograd.grad(plain, x, grad)[0], ref_grad)


def test_cpu_roi_align_gradcheck(threads2, monkeypatch):
    monkeypatch.setattr(roi_align_cpu, "_MIN_WORK", 1)
    x = torch.randn(1, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.5, 0.7, 5.2, 4.9], [0, 2.0, 1.0, 6.5, 5.5]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, 3, 1.0, 2, True), (x,))


def test_small_calls_use_torchvision_and_autocast_computes_in_float32(threads2):
    x = torch.randn(1, 8, 10, 10, requires_grad=True)
    rois = _rois(4, 1, 40)
    assert "CPURoIAlign" not in type(roi_align(x, rois, 7, 0.25, 2).grad_fn).__name__  # small
    big = torch.randn(1, 64, 10, 10, requires_grad=True)
    many = _rois(512, 1, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = roi_align(big.bfloat16(), many, 7, 0.25, 2)
        ref = tv_roi_align(big.bfloat16(), many, (7, 7), 0.25, 2)  # torchvision's autocast: float32 inside
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)
    torch.set_num_threads(1)  # one thread: no slicing, still the fast backward
    out = roi_align(big, many, 7, 0.25, 2)
    assert "CPURoIAlign" in type(out.grad_fn).__name__
    assert torch.equal(out, tv_roi_align(big, many, (7, 7), 0.25, 2))


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [1, 2, 0])
@pytest.mark.parametrize("stride,pooled", [(4, 7), (1, 3), (2, 14)])
def test_backward_equals_torchvision_kernel_in_float64(monkeypatch, aligned, sampling_ratio, stride, pooled):
    monkeypatch.setattr(roi_align_cpu, "_CHUNK_ELEMENTS", 2000)  # many chunks of mixed windows
    g = torch.Generator().manual_seed(stride * 100 + pooled)
    batch, channels, height, width = 3, 5, 11, 17
    rois = _rois(40, batch, max(height, width) * stride, seed=stride).double()
    rois[0, 3] = rois[0, 1]  # zero width
    rois[1, 1:] = torch.tensor([-50.0, -50.0, -20.0, -30.0], dtype=torch.float64)  # wholly outside
    grad = torch.randn(40, channels, pooled, pooled, generator=g, dtype=torch.float64)
    args = (1.0 / stride, sampling_ratio, aligned)
    ref = torch.ops.torchvision._roi_align_backward(
        grad, rois, 1.0 / stride, pooled, pooled, batch, channels, height, width, sampling_ratio, aligned
    )
    out = roi_align_backward_cpu(grad, rois, *args, (batch, channels, height, width))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_backward_with_rectangular_bins_and_elongated_rois():
    g = torch.Generator().manual_seed(5)
    batch, channels, height, width = 2, 3, 20, 40
    rois = _rois(30, batch, 120, seed=5).double()
    rois[:10, 3] = rois[:10, 1] + 150  # long and thin
    rois[:10, 4] = rois[:10, 2] + 4
    grad = torch.randn(30, channels, 5, 9, generator=g, dtype=torch.float64)
    for sampling_ratio in (2, 0):
        ref = torch.ops.torchvision._roi_align_backward(
            grad, rois, 0.25, 5, 9, batch, channels, height, width, sampling_ratio, False
        )
        out = roi_align_backward_cpu(grad, rois, 0.25, sampling_ratio, False, (batch, channels, height, width))
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_backward_of_no_rois_is_zero():
    out = roi_align_backward_cpu(torch.zeros(0, 4, 7, 7), torch.zeros(0, 5), 0.25, 2, False, (2, 4, 8, 9))
    assert out.shape == (2, 4, 8, 9) and not out.any()


def test_thread_pool_is_remade_in_a_forked_child(monkeypatch):
    # a forked child (DDP launcher, DataLoader worker) inherits the executor object but not
    # its threads: it must get a fresh one
    parent = roi_align_cpu._thread_pool(2)
    assert roi_align_cpu._thread_pool(2) is parent
    monkeypatch.setattr(roi_align_cpu.os, "getpid", lambda: -1)
    child = roi_align_cpu._thread_pool(2)
    assert child is not parent
    assert child.submit(lambda: 7).result(timeout=10) == 7
    monkeypatch.undo()
    assert roi_align_cpu._thread_pool(2) is not child  # back in the "parent": remade once more


def test_thread_pools_of_other_sizes_do_not_disturb_each_other():
    # a caller with another thread count must not shut down an executor that is in use
    two = roi_align_cpu._thread_pool(2)
    three = roi_align_cpu._thread_pool(3)
    assert three is not two and roi_align_cpu._thread_pool(2) is two
    assert list(two.map(lambda v: v + 1, [1, 2])) == [2, 3]


def test_pooler_matches_torchvision_multiscale(threads2):
    g = torch.Generator().manual_seed(1)
    feats = {f"p{k}": torch.randn(2, 32, 256 // 2**k, 320 // 2**k, generator=g) for k in (2, 3, 4, 5)}
    rois = _rois(300, 2, 250, seed=3)
    rois[:, 1:].clamp_(min=0, max=250)
    rois = rois[(rois[:, 3] > rois[:, 1] + 1) & (rois[:, 4] > rois[:, 2] + 1)]
    boxes, batch_idx = rois[:, 1:], rois[:, 0].long()
    out = RoIPooler(list(feats), [4, 8, 16, 32])(feats, boxes, batch_idx)
    tv = MultiScaleRoIAlign(list(feats), 7, 2)
    ref = tv(feats, [boxes[batch_idx == i] for i in range(2)], [(256, 320)] * 2)
    order = torch.cat([torch.nonzero(batch_idx == i).squeeze(1) for i in range(2)])
    torch.testing.assert_close(out[order], ref, rtol=0, atol=1e-6)


def test_fpn_levels_follow_the_paper():
    boxes = torch.tensor([[0, 0, 224, 224], [0, 0, 112, 112], [0, 0, 448, 448], [0, 0, 10, 10], [0, 0, 2000, 2000.0]])
    assert assign_fpn_levels(boxes, 2, 5).tolist() == [2, 1, 3, 0, 3]


def test_huge_grids_or_windows_use_torchvision_kernel(monkeypatch):
    grad = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    rois = torch.tensor([[0, 0, 0, 300.0, 300.0], [0, 5, 5, 40, 60]], dtype=torch.float64)
    shape = (1, 3, 320, 320)

    def reference(sampling_ratio):
        return torch.ops.torchvision._roi_align_backward(grad, rois, 1.0, 7, 7, *shape, sampling_ratio, True)

    # adaptive sampling: 300 px / 7 bins = 43 samples per bin, above the limit
    assert torch.equal(roi_align_backward_cpu(grad, rois, 1.0, 0, True, shape), reference(0))
    monkeypatch.setattr(roi_align_cpu, "_MAX_WINDOW_ELEMENTS", 100)
    assert torch.equal(roi_align_backward_cpu(grad, rois, 1.0, 2, True, shape), reference(2))


def _big_rois(num, size, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num, 2, generator=g) * size
    wh = torch.rand(num, 2, generator=g) * size / 3 + 8
    return torch.cat([torch.zeros(num, 1), xy, xy + wh], 1)


@pytest.mark.parametrize("pool_type", ["align", "pool"])
def test_bf16_autocast_keeps_roi_coordinates_exact(pool_type):
    # RoIs above 1024 px: bfloat16 rounds them by up to 4 px; pooling must see float32 RoIs
    g = torch.Generator().manual_seed(0)
    feats = {"p4": torch.randn(1, 16, 96, 128, generator=g)}
    rois = _big_rois(200, 1500, seed=1)
    pooler = RoIPooler(["p4"], [16], pool_type=pool_type)
    fp32 = pooler(feats, rois[:, 1:], rois[:, 0].long())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = {"p4": feats["p4"].bfloat16()}
        out = pooler(half, rois[:, 1:], rois[:, 0].long())
        if pool_type == "align":
            ref = tv_roi_align(half["p4"], rois, (7, 7), 0.0625, 2)  # float32 inside (torchvision's autocast)
        else:  # torchvision registers no CPU autocast for roi_pool: its rule done by hand
            ref = tv_roi_pool(half["p4"].float(), rois, (7, 7), 0.0625).bfloat16()
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(out, ref)
    assert (out.float() - fp32).abs().max() < 0.05  # only the features' own rounding


def test_bf16_multiscale_pooler_matches_torchvision_autocast():
    g = torch.Generator().manual_seed(2)
    feats = {f"p{k}": torch.randn(1, 8, 1344 // 2**k, 1344 // 2**k, generator=g).bfloat16() for k in (2, 3, 4, 5)}
    rois = _big_rois(300, 1300, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = RoIPooler(list(feats), [4, 8, 16, 32])(feats, rois[:, 1:], rois[:, 0].long())
        ref = MultiScaleRoIAlign(list(feats), 7, 2)(feats, [rois[:, 1:]], [(1344, 1344)])
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), rtol=0, atol=0)


@pytest.mark.parametrize("num", [4, 2000])  # torchvision's op and the threaded CPU path
def test_float64_features_give_float64_on_every_path(num):
    x = torch.randn(1, 64, 20, 20, dtype=torch.float64)
    rois = _rois(num, 1, 80)  # float32 RoIs
    out = roi_align(x, rois, 7, 0.25, 2)
    assert out.dtype == torch.float64
    assert torch.equal(out, tv_roi_align(x, rois.double(), (7, 7), 0.25, 2))
    pooled = roi_pool(x, rois, 7, 0.25)
    assert pooled.dtype == torch.float64 and torch.equal(pooled, tv_roi_pool(x, rois.double(), (7, 7), 0.25))


def test_list_of_per_image_boxes_is_accepted_like_torchvision():
    x = torch.randn(2, 4, 12, 12)
    boxes = [torch.tensor([[1.0, 2.0, 9.0, 10.0]]), torch.tensor([[0.0, 0.0, 4.0, 4.0], [3.0, 1.0, 11.0, 7.0]])]
    torch.testing.assert_close(roi_align(x, boxes, 3, 1.0, 2), tv_roi_align(x, boxes, (3, 3), 1.0, 2))
    torch.testing.assert_close(roi_pool(x, boxes, 3), tv_roi_pool(x, boxes, (3, 3)))
    with pytest.raises(ValueError, match=r"boxes\[1\] must be a Tensor\[R_i, 4\]"):
        roi_align(x, [boxes[0], torch.zeros(2, 5)], 3)
    with pytest.raises(ValueError, match=r"Tensor\[R, 5\]"):
        roi_align(x, torch.zeros(3, 4), 3)


class _Decided(Exception):
    pass


def _plan(monkeypatch, rois, stride, shape):
    """What the cost model decides for these RoIs (True: matmuls); stops before the work."""
    monkeypatch.undo()
    real = roi_align_cpu.matmul_backward_pays

    def spy(*args):
        raise _Decided(real(*args))

    monkeypatch.setattr(roi_align_cpu, "matmul_backward_pays", spy)
    grad = torch.zeros(rois.shape[0], shape[1], 7, 7)
    with pytest.raises(_Decided) as decided:
        roi_align_backward_cpu(grad, rois, 1.0 / stride, 2, False, shape)
    return decided.value.args[0]


def _sized_rois(num, lo, hi, image_hw, seed):
    g = torch.Generator().manual_seed(seed)
    wh = lo + torch.rand(num, 2, generator=g) * (hi - lo)
    xy = torch.rand(num, 2, generator=g) * (torch.tensor(image_hw[::-1]) - wh).clamp(min=1)
    return torch.cat([torch.zeros(num, 1), xy, xy + wh], 1)


@pytest.mark.parametrize(
    "stride,lo,hi,expect_matmul",
    [(4, 200, 500, False), (8, 300, 800, False), (8, 32, 128, True), (16, 64, 256, True)],
)
def test_backward_cost_model_picks_the_cheaper_path(monkeypatch, stride, lo, hi, expect_matmul):
    # the cases at 800 x 1216: large RoIs on fine maps went 0.39x / 0.52x with matmuls;
    # FPN-like RoIs 1.2-3.4x faster with them (benchmarks/bench_ops.py roi_align_backward_*)
    shape = (1, 256, 800 // stride, 1216 // stride)
    num = 128 if not expect_matmul else 512
    assert _plan(monkeypatch, _sized_rois(num, lo, hi, (800, 1216), seed=stride), stride, shape) is expect_matmul
