"""detkit.layers.pool: the strided-maxima 3x3 / stride-2 / padding-1 max pool against F.max_pool2d."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detkit.layers import MaxPool2d, max_pool2d_3x3s2, strided_max_pool_3x3s2
from detkit.layers import pool as pool_module
from detkit.models import configure_kernels

SHAPES = [(1, 64, 400, 608), (2, 3, 7, 9), (1, 1, 1, 1), (1, 8, 2, 3), (1, 2, 5, 1), (1, 4, 1, 6), (3, 6, 10)]


def reference(x):
    return F.max_pool2d(x, 3, stride=2, padding=1)


def assert_same(out, ref):
    """Same shape, dtype and values; NaN where the reference has NaN; -0.0 == 0.0."""
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, rtol=0, atol=0, equal_nan=True)


DTYPES = [torch.float32, torch.bfloat16, torch.float64, torch.float16]


@pytest.mark.parametrize("shape, dtype", [(s, d) for s in SHAPES for d in DTYPES if d == torch.float32 or s[-1] < 100])
def test_strided_max_pool_equals_max_pool2d(shape, dtype):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape))).to(dtype)
    assert_same(strided_max_pool_3x3s2(x), reference(x))
    assert_same(max_pool2d_3x3s2(x), reference(x))


def test_channels_last_inf_and_nan():
    x = torch.randn(2, 5, 13, 12, generator=torch.Generator().manual_seed(0))
    x[0, 0, 3, 4] = float("nan")  # propagates in both, to the 2 windows that hold it
    x[0, 1, 0, 0] = float("inf")
    x[1, :2, :4, :] = float("-inf")  # a window of only -inf gives -inf: padding is never chosen
    x[1, 3] = float("-inf")
    ref = reference(x)
    assert ref.isnan().sum() == 2 and ref[1, 3].eq(float("-inf")).all()
    assert_same(strided_max_pool_3x3s2(x), ref)
    cl = x.contiguous(memory_format=torch.channels_last)
    for out in (strided_max_pool_3x3s2(cl), max_pool2d_3x3s2(cl)):
        assert_same(out, ref)
        assert out.is_contiguous(memory_format=torch.channels_last)
    # non-contiguous input (a slice): correct through either path
    assert_same(max_pool2d_3x3s2(x[:, :, :, 1:]), reference(x[:, :, :, 1:]))


def _spy(monkeypatch):
    """Row passes of the strided path, whole or in chunks: one per pool call of a small input."""
    calls = []
    real = pool_module._max3_stride2

    def spy(x, dim, out=None):
        if dim == x.dim() - 2:
            calls.append(x)
        return real(x, dim, out)

    monkeypatch.setattr(pool_module, "_max3_stride2", spy)
    return calls


@pytest.mark.parametrize("threads", [1, 2, 8])
def test_fast_path_only_without_gradient_and_with_cpu_kernels(monkeypatch, threads):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    x = torch.randn(1, 4, 9, 8)
    calls = _spy(monkeypatch)
    assert_same(max_pool2d_3x3s2(x), reference(x))
    assert len(calls) == 1
    w = x.clone().requires_grad_()
    out = max_pool2d_3x3s2(w)  # gradient needed: F.max_pool2d, whose backward picks one of tied inputs
    assert len(calls) == 1 and out.grad_fn is not None and "MaxPool2D" in type(out.grad_fn).__name__
    with torch.no_grad():
        max_pool2d_3x3s2(w)
    assert len(calls) == 2
    max_pool2d_3x3s2(x.contiguous(memory_format=torch.channels_last))  # aten's channels-last kernel
    assert len(calls) == 2
    assert_same(max_pool2d_3x3s2(x, cpu_kernels=False), reference(x))  # aten's kernel, as on CUDA
    assert len(calls) == 2


def test_module_option_and_configure_kernels_pick_the_kernel(monkeypatch):
    calls = _spy(monkeypatch)
    x = torch.randn(2, 5, 13, 11)
    pool = MaxPool2d(3, stride=2, padding=1, cpu_kernels=False)
    assert_same(pool(x), reference(x))
    assert not calls
    configure_kernels(pool)  # the default: strided maxima, the same values
    assert pool.cpu_kernels is True
    assert_same(pool(x), reference(x))
    assert len(calls) == 1
    configure_kernels(pool, cpu_kernels=False)
    assert_same(pool(x), reference(x))
    assert len(calls) == 1


@pytest.mark.parametrize("shape", [(2, 8, 100, 120), (1, 64, 160, 160), (3, 5, 7), (1, 3, 1, 1)])
def test_chunked_path_equals_max_pool2d(monkeypatch, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    chunks = []
    real = pool_module._max3_stride2
    monkeypatch.setattr(pool_module, "_max3_stride2", lambda t, d, out=None: chunks.append(d) or real(t, d, out))
    assert_same(pool_module._strided_max_pool_in_chunks(x), reference(x))
    planes = x.numel() // (x.shape[-2] * x.shape[-1])
    per_chunk = max(1, pool_module._PARALLEL_GRAIN // ((x.shape[-2] + 1) // 2 * x.shape[-1]))
    assert len(chunks) == 2 * -(-planes // per_chunk)  # a row and a column pass per chunk
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    chunks.clear()
    assert_same(max_pool2d_3x3s2(x), reference(x))
    assert len(chunks) == 2 * -(-planes // per_chunk)


def test_tied_gradient_matches_max_pool2d():
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)  # every window a tie
    max_pool2d_3x3s2(x).sum().backward()
    y = x.detach().clone().requires_grad_()
    reference(y).sum().backward()
    assert torch.equal(x.grad, y.grad)


def test_module_drop_in_for_nn_max_pool2d(monkeypatch):
    calls = _spy(monkeypatch)
    x = torch.randn(1, 3, 11, 10)
    for kwargs in ({"stride": 2, "padding": 1}, {"stride": (2, 2), "padding": (1, 1)}):
        pool = MaxPool2d(3, **kwargs)
        assert isinstance(pool, nn.MaxPool2d) and not pool.state_dict()
        assert_same(pool(x), reference(x))
    assert len(calls) == 2
    for kwargs in ({"stride": 2}, {"stride": 2, "padding": 1, "ceil_mode": True}, {"stride": 1, "padding": 1}):
        assert_same(MaxPool2d(3, **kwargs)(x), nn.MaxPool2d(3, **kwargs)(x))
    assert len(calls) == 2


def test_resnet_and_alexnet_use_it_with_unchanged_keys():
    from detkit.backbones.alexnet import AlexNet
    from detkit.backbones.resnet import ResNet

    resnet = ResNet("basic", (1, 1, 1, 1))
    assert isinstance(resnet.stem.pool, MaxPool2d)
    assert not any(k.startswith("stem.pool") for k in resnet.state_dict())
    assert isinstance(AlexNet().c3.pool1, MaxPool2d)


def test_empty_input_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        strided_max_pool_3x3s2(torch.zeros(1, 2, 0, 4))


def test_export_keeps_aten_max_pool(monkeypatch):
    calls = _spy(monkeypatch)
    module = nn.Sequential(nn.Conv2d(3, 4, 3), MaxPool2d(3, stride=2, padding=1)).eval()
    with torch.no_grad():
        program = torch.export.export(module, (torch.randn(1, 3, 17, 20),))
    assert "max_pool2d" in str(program.graph) and not calls
