"""RoIAlign that uses the whole CPU: threaded forward, matrix-product backward.

`roi_align` is `torchvision.ops.roi_align` with two CPU changes for large float calls:

- forward: torchvision's kernel (one core) on channel slices in threads; RoIAlign treats
  every channel alone, so the output is bit-identical.
- backward: :func:`roi_align_backward_cpu` below instead of torchvision's kernel.

torchvision's CPU backward loops over RoI x channel x bin x sample in scalar code and
recomputes the bilinear weights for every channel. RoIAlign's weights are separable: the
gradient of RoI r is `Ay[r]^T @ grad_out[r, c] @ Ax[r]` on the window of feature rows and
columns the RoI touches, where `Ay[r]` (pooled_h x window rows) and `Ax[r]` (pooled_w x window
cols) hold the bilinear weights of the sampling points, validity and the 1 / samples average.
The windows of a chunk of RoIs are computed with two batched matmuls in channels-last
layout and added into the feature gradient with one `index_add_`.

Same result as `torch.ops.torchvision._roi_align_backward` up to float summation order. A cost
model (:func:`matmul_backward_pays`) sends calls where the matrices would cost more (large
RoIs on fine maps: big windows, few samples) to torchvision's kernel, so the backward is never
slower than the kernel it replaces.
Shape shorthand: R RoIs, C channels, P pooled bins per axis, K window length per axis.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor
from torchvision.ops import roi_align as tv_roi_align
from torchvision.ops import roi_pool as tv_roi_pool

# elements (RoIs x window rows x window cols x channels) per chunk: bounds the temporaries
_CHUNK_ELEMENTS = 1 << 23
# one RoI's window (side^2 x channels) above this, or adaptive grids above this many
# samples per bin, go to torchvision's kernel
_MAX_WINDOW_ELEMENTS = 1 << 26
_MAX_ADAPTIVE_SAMPLES = 32
# below this many output values (RoIs x channels x bins) torchvision's op is as fast
_MIN_WORK = 1 << 19
# Backward cost model, seconds per unit, fitted on one thread (both paths single-threaded;
# the matmul path only gains from more threads) over 14 cases from FPN-like RoIs to 800 px
# RoIs on stride-4 maps (benchmarks/bench_ops.py times both on its roi_align_backward rows):
#   matmul path  = MACs of the two products + window elements added + feature map elements
#   torchvision  = bilinear samples (RoIs x channels x bins x samples per bin) + map elements
_MM_PER_MAC, _MM_PER_WINDOW, _MM_PER_MAP, _MM_FIXED = 0.72e-9, 1.75e-9, 32e-9, 12e-3
_TV_PER_SAMPLE, _TV_PER_MAP, _TV_FIXED = 50e-9, 22.5e-9, -47e-3
# the matmul path is taken only when predicted this much faster (the fit's error margin)
_MM_MARGIN = 0.8
_pool_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}  # threads -> executor, for the process in _pools_pid
_pools_pid: int | None = None


def _thread_pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide executor with `workers` threads (one per size, never shut down while in
    use by another caller), made afresh in a forked child, which inherits none of the threads."""
    global _pools_pid
    with _pool_lock:
        if _pools_pid != os.getpid():
            _pools.clear()
            _pools_pid = os.getpid()
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="detkit-roi-align")
        return _pools[workers]


class _CPURoIAlign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rois, spatial_scale, output_size, sampling_ratio, aligned):
        ctx.save_for_backward(rois)
        ctx.args = (tuple(x.shape), spatial_scale, sampling_ratio, aligned)
        height, width = output_size

        def run(chunk):
            return torch.ops.torchvision.roi_align(chunk, rois, spatial_scale, height, width, sampling_ratio, aligned)

        parts = min(torch.get_num_threads(), x.shape[1])
        if parts < 2:
            return run(x)
        chunks = [c.contiguous() for c in x.tensor_split(parts, dim=1)]
        return torch.cat(list(_thread_pool(parts).map(run, chunks)), dim=1)

    @staticmethod
    def backward(ctx, grad_out):
        (rois,) = ctx.saved_tensors
        shape, spatial_scale, sampling_ratio, aligned = ctx.args
        grad_x = roi_align_backward_cpu(grad_out, rois, spatial_scale, sampling_ratio, aligned, shape)
        return grad_x, None, None, None, None, None


def rois_from_boxes(boxes: Tensor | list[Tensor] | tuple[Tensor, ...], op: str = "roi_align") -> Tensor:
    """RoIs as torchvision takes them: Tensor[R, 5] (batch index, x1, y1, x2, y2) as is, or a
    list of per-image Tensor[R_i, 4] packed into one Tensor[R, 5]. ValueError for other shapes."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(
                f"{op}: boxes must be a Tensor[R, 5] (batch index, x1, y1, x2, y2) or a list of "
                f"per-image Tensor[R_i, 4], got a tensor of shape {tuple(boxes.shape)}"
            )
        return boxes
    if not isinstance(boxes, (list, tuple)) or not all(isinstance(b, Tensor) for b in boxes):
        raise ValueError(f"{op}: boxes must be a Tensor[R, 5] or a list of per-image Tensor[R_i, 4]")
    for i, b in enumerate(boxes):
        if b.dim() != 2 or b.shape[1] != 4:
            raise ValueError(f"{op}: boxes[{i}] must be a Tensor[R_i, 4] (x1, y1, x2, y2), got {tuple(b.shape)}")
    if not boxes:
        return torch.zeros((0, 5))
    packed = torch.cat(list(boxes))
    idx = torch.repeat_interleave(
        torch.arange(len(boxes), device=packed.device, dtype=packed.dtype),
        torch.tensor([b.shape[0] for b in boxes], device=packed.device),
    )
    return torch.cat([idx[:, None], packed], dim=1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype RoI ops compute in: float32 for 16-bit features (RoI coordinates in 16 bits
    lose up to 4 px above 1024), else the features' own dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def roi_align(
    x: Tensor,
    rois: Tensor | list[Tensor],
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    cpu_kernels: bool = True,
) -> Tensor:
    """`torchvision.ops.roi_align` with `rois` Tensor[R, 5] (batch index, x1, y1, x2, y2) or a
    list of per-image Tensor[R_i, 4].

    The one place that picks the kernel: large float calls on the CPU with `cpu_kernels` take
    the threaded forward and the matrix-product backward described above; everything else
    (other devices, small calls, TorchScript, torch.compile, `cpu_kernels=False`) is
    torchvision's op, the kernels CUDA runs.

    dtype rule: the output has the dtype of `x`. The RoIs are used in the dtype the op computes
    in: float32 for float16/bfloat16 features (as torchvision's autocast path: the features are
    widened, the result narrowed back), the features' dtype otherwise (float64 features take
    float64 RoIs). Autocast does not change this.

    Same results as torchvision (the gradient up to float summation order).
    """
    rois = rois_from_boxes(rois)
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    out_dtype = x.dtype
    work = compute_dtype(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(work)
        rois = rois.to(device=x.device, dtype=work)
        if (
            x.device.type != "cpu"
            or not cpu_kernels
            or x.dim() != 4
            or x.dtype not in (torch.float32, torch.float64)
            or rois.shape[0] * x.shape[1] * size[0] * size[1] < _MIN_WORK
            or torch.jit.is_scripting()
            or torch.compiler.is_compiling()
        ):
            out = tv_roi_align(x, rois, size, spatial_scale, sampling_ratio, aligned)
        else:
            out = _CPURoIAlign.apply(x, rois, float(spatial_scale), size, int(sampling_ratio), bool(aligned))
    return out.to(out_dtype)


def roi_pool(
    x: Tensor, rois: Tensor | list[Tensor], output_size: int | tuple[int, int], spatial_scale: float = 1.0
) -> Tensor:
    """`torchvision.ops.roi_pool` with the dtype rule of :func:`roi_align` (exact RoI coordinates
    under 16-bit features and autocast; output in the dtype of `x`)."""
    rois = rois_from_boxes(rois, "roi_pool")
    size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    work = compute_dtype(x.dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = tv_roi_pool(x.to(work), rois.to(device=x.device, dtype=work), size, spatial_scale)
    return out.to(x.dtype)


def _axis_weights(start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int):
    """Bilinear taps of one axis.

    Args:
        start, bin_size: Tensor[R] RoI start and bin length on this axis, in feature pixels.
        grid: Tensor[R] int64 samples per bin on this axis (0 = none).
        pooled: bins on this axis; size: feature map length on this axis.

    Returns:
        taps Tensor[R, P, 2S] int64 pixel indices, weights Tensor[R, P, 2S], with S the
        largest grid: weight 0 for padded or out-of-map samples.
    """
    num = start.shape[0]
    samples = max(int(grid.max()), 1) if num else 1
    dtype = start.dtype
    grid_f = grid.clamp(min=1).to(dtype)[:, None, None]
    bins = torch.arange(pooled, dtype=dtype)[None, :, None]
    offsets = torch.arange(samples, dtype=dtype)[None, None, :] + 0.5
    # the evaluation order of torchvision's kernel: start + p * bin + (i + .5) * bin / grid
    pos = start[:, None, None] + bins * bin_size[:, None, None] + offsets * bin_size[:, None, None] / grid_f
    used = torch.arange(samples)[None, None, :] < grid[:, None, None]
    valid = used & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0.0)
    low = pos.floor().to(torch.int64)
    at_end = low >= size - 1
    low = torch.where(at_end, size - 1, low)
    high = torch.where(at_end, size - 1, low + 1)
    pos = torch.where(at_end, low.to(dtype), pos)
    frac = pos - low.to(dtype)
    share = valid.to(dtype) / grid_f
    taps = torch.stack([low, high], dim=-1).reshape(num, pooled, 2 * samples)
    weights = torch.stack([(1.0 - frac) * share, frac * share], dim=-1).reshape(num, pooled, 2 * samples)
    return taps, weights


def _windows(taps: Tensor, weights: Tensor):
    """First pixel Tensor[R] and length Tensor[R] of the span of each RoI's weighted taps."""
    used = weights != 0
    big = torch.iinfo(torch.int64).max
    first = torch.where(used, taps, big).flatten(1).amin(1)
    last = torch.where(used, taps, -1).flatten(1).amax(1)
    empty = last < 0
    first = torch.where(empty, 0, first)
    length = torch.where(empty, 1, last - first + 1)
    return first, length


def _window_matrix(taps: Tensor, weights: Tensor, first: Tensor, length: int) -> Tensor:
    """Tensor[R, P, K]: the weights of each bin on the window's pixels (taps summed)."""
    local = (taps - first[:, None, None]).clamp(0, length - 1)
    out = weights.new_zeros((taps.shape[0], taps.shape[1], length))
    return out.scatter_add_(2, local, weights)


def matmul_backward_pays(
    len_y: Tensor,
    len_x: Tensor,
    grid_h: Tensor,
    grid_w: Tensor,
    pooled_h: int,
    pooled_w: int,
    input_shape: tuple[int, int, int, int],
) -> bool:
    """Cost model: True when the matmul backward is predicted faster than torchvision's kernel.

    len_y, len_x Tensor[R]: window rows / cols of each RoI; grid_h, grid_w Tensor[R]: samples
    per bin. Large RoIs on fine maps have big windows (many matmul MACs and added elements)
    but few samples per bin, where torchvision's scalar loop wins.
    """
    batch, channels, height, width = input_shape
    ly, lx = len_y.double(), len_x.double()
    macs = channels * float((lx * pooled_w * pooled_h + ly * pooled_h * lx).sum())
    window = channels * float((ly * lx).sum())
    samples = channels * pooled_h * pooled_w * float((grid_h.clamp(min=1) * grid_w.clamp(min=1)).double().sum())
    feature_map = batch * channels * height * width
    matmul = _MM_PER_MAC * macs + _MM_PER_WINDOW * window + _MM_PER_MAP * feature_map + _MM_FIXED
    kernel = _TV_PER_SAMPLE * samples + _TV_PER_MAP * feature_map + _TV_FIXED
    return matmul < _MM_MARGIN * kernel


def roi_align_backward_cpu(
    grad_out: Tensor,
    rois: Tensor,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    input_shape: tuple[int, int, int, int],
) -> Tensor:
    """Gradient of RoIAlign w.r.t. its input: grad_out Tensor[R, C, Ph, Pw] -> Tensor[B, C, H, W]."""
    batch, channels, height, width = input_shape
    num, _, pooled_h, pooled_w = grad_out.shape
    dtype = grad_out.dtype
    if num == 0:
        return grad_out.new_zeros(input_shape)

    rois = rois.to(dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_w, bin_h = roi_w / pooled_w, roi_h / pooled_h
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full((num,), sampling_ratio, dtype=torch.int64)
    else:
        grid_h = torch.ceil(roi_h / pooled_h).to(torch.int64)
        grid_w = torch.ceil(roi_w / pooled_w).to(torch.int64)

    def torchvision_kernel():
        return torch.ops.torchvision._roi_align_backward(
            grad_out, rois, spatial_scale, pooled_h, pooled_w, batch, channels, height, width,
            sampling_ratio, aligned,
        )  # fmt: skip

    # huge sample grids or windows: the matrices would not pay (or fit); torchvision's kernel
    if sampling_ratio <= 0 and max(int(grid_h.max()), int(grid_w.max())) > _MAX_ADAPTIVE_SAMPLES:
        return torchvision_kernel()
    taps_y, w_y = _axis_weights(y1, bin_h, grid_h, pooled_h, height)
    taps_x, w_x = _axis_weights(x1, bin_w, grid_w, pooled_w, width)
    first_y, len_y = _windows(taps_y, w_y)
    first_x, len_x = _windows(taps_x, w_x)
    longest = torch.maximum(len_y, len_x)
    if int(longest.max()) ** 2 * channels > _MAX_WINDOW_ELEMENTS:
        return torchvision_kernel()
    if not matmul_backward_pays(len_y, len_x, grid_h, grid_w, pooled_h, pooled_w, input_shape):
        return torchvision_kernel()
    image = rois[:, 0].to(torch.int64)
    grad_cl = grad_out.new_zeros((batch * height * width, channels))

    # sort by window size so that each chunk pads its windows to similar lengths
    order = torch.argsort(longest, stable=True)
    sizes = longest[order].tolist()
    # grad_out as [R, Pw, Ph * C]: the x-direction product runs over Pw first
    g = grad_out.permute(0, 3, 2, 1)
    start = 0
    while start < num:
        # grow the chunk while its largest window keeps the temporaries within budget
        stop = start + 1
        while stop < num and (stop + 1 - start) * sizes[stop] ** 2 * channels <= _CHUNK_ELEMENTS:
            stop += 1
        idx = order[start:stop]
        n = idx.numel()
        side_y, side_x = int(len_y[idx].max()), int(len_x[idx].max())
        ay = _window_matrix(taps_y[idx], w_y[idx], first_y[idx], side_y)  # [n, Ph, Ky]
        ax = _window_matrix(taps_x[idx], w_x[idx], first_x[idx], side_x)  # [n, Pw, Kx]
        g_chunk = g[idx].reshape(n, pooled_w, pooled_h * channels)
        # T[r, kx, ph, c] = sum_pw Ax[r, pw, kx] g[r, c, ph, pw]
        t = torch.bmm(ax.transpose(1, 2), g_chunk).view(n, side_x, pooled_h, channels)
        # G[r, ky, kx, c] = sum_ph Ay[r, ph, ky] T[r, kx, ph, c]
        t = t.permute(0, 2, 1, 3).reshape(n, pooled_h, side_x * channels)
        window = torch.bmm(ay.transpose(1, 2), t)  # [n, Ky, Kx * C]
        rows = (first_y[idx, None] + torch.arange(side_y)).clamp(max=height - 1)  # [n, Ky]
        cols = (first_x[idx, None] + torch.arange(side_x)).clamp(max=width - 1)  # [n, Kx]
        flat = (image[idx, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
        grad_cl.index_add_(0, flat.reshape(-1), window.reshape(-1, channels))
        start = stop
    return grad_cl.view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
