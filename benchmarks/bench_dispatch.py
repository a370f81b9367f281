"""Operations dispatched and host-synchronising operations per training step and per predict call.

    python benchmarks/bench_dispatch.py                       # Faster + Mask R-CNN R50-FPN, batch 8, 320x320
    python benchmarks/bench_dispatch.py --model faster_rcnn_r50_fpn --mode train --top 20
    python benchmarks/bench_dispatch.py --model faster_rcnn_r50_fpn --mode train --size 800x1216 --batch-size 2 8

On a GPU every dispatched operator is at least one kernel launch, and every operator that
needs a value on the host (a size, a scalar) stalls the host until the GPU has caught up.
Both are counted here on the CPU with a `TorchDispatchMode`, for detkit and torchvision with
the same weights and inputs, on the code path that runs on CUDA:

- `configure_kernels(model, cpu_kernels=False)` (unless `--cpu-kernels`) turns off detkit's
  CPU-only kernels (the threaded RoIAlign, the strided stem pool, channels-last batches), so
  detkit runs the kernels it runs on a GPU;
  this includes the RPN's NMS, one `nms` call per image instead of the CPU's one `batched_nms`;
- `torchvision.ops.batched_nms` picks its per-class loop or one offset NMS by the number of
  boxes with a device-dependent threshold (torchvision 0.29: above 4,000 box coordinates on the
  CPU, 100,000 = 25,000 boxes on CUDA); the CUDA threshold is used for both libraries;
- the SGD step is torch.optim's multi-tensor (foreach) update, its default for CUDA tensors.

"non-view ops" leave out the ops that only make a view (`view`, `select`, `detach`, ...: no
kernel on a GPU). Host-synchronising on CUDA ("syncs"): `.item()` / `int()` / `bool()` (`_local_scalar_dense`),
`.tolist()`, `nonzero`, indexing with a boolean mask, `masked_select`, `bincount`, `unique`,
`repeat_interleave` without `output_size`, `masked_fill` with a tensor value, `nms` (its mask
is read on the host) and tensors made from Python data (`torch.tensor([...])`, an upload that
waits for the stream; 0-dim ones are not counted: `x[i] = value` makes its scalar that way).
The emulation cannot tell a tensor the CUDA code keeps on the host from one on the GPU, so an
op on a host tensor counts as if it were on the GPU. Counts are of one call after a warm-up
call; they depend on the data where the number of boxes picks a path (per-image loops count
once per image).

Proposals (`--proposals`): with random weights many RPN proposals are dropped as tiny before
NMS, so the count would depend on how many survive by chance; a trained RPN keeps nearly all
of its pre-NMS top-k (~8,700 per 800x1216 image). "surviving" (the default) zeroes the RPN's
box-delta layer (weights and bias) in both models: every proposal is its anchor, clipped to the
image, none is too small, and with the score threshold 0 every pre-NMS candidate reaches NMS,
as with a trained RPN. "random" keeps the random deltas.
Prints a table per model and mode, the detkit / torchvision ratios, and JSON at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections import Counter

import torch
import torchvision.ops.boxes as tv_boxes
from torch.utils._python_dispatch import TorchDispatchMode

_SYNC_OPS = {
    "aten._local_scalar_dense": "item",
    "aten.nonzero": "nonzero",
    "aten.masked_select": "masked_select",
    "aten.bincount": "bincount",
    "aten._unique": "unique",
    "aten._unique2": "unique",
    "aten.unique_dim": "unique",
    "aten.unique_consecutive": "unique",
    "aten.equal": "equal",
    "aten.is_nonzero": "item",
    "aten.lift_fresh": "host_tensor",
    "torchvision.nms": "nms",
}
_INDEX_OPS = {"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"}
# the number of boxes above which torchvision's batched_nms loops over classes, on CUDA
_CUDA_BATCHED_NMS_LOOP_NUMEL = 100_000


def sync_kind(name: str, args, kwargs) -> str | None:
    """Why the op `name` ("aten.nonzero") with these arguments waits for the GPU, or None."""
    if name == "aten.lift_fresh" and args[0].dim() == 0:
        return None  # `x[i] = value` makes its scalar on the device (no upload); `torch.tensor(1)` uncounted
    if name in _SYNC_OPS:
        return _SYNC_OPS[name]
    if name in _INDEX_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ()):
            return "bool_index"
    if name == "aten.repeat_interleave" and kwargs.get("output_size") is None and len(args) < 3:
        return "repeat_interleave"
    if name in ("aten.masked_fill", "aten.masked_fill_") and isinstance(args[2], torch.Tensor):
        return "item"
    return None


class DispatchCounter(TorchDispatchMode):
    """Counts every operator dispatched inside the block (forward and backward) and the
    host-synchronising ones (see `sync_kind`); `.tolist()` calls are counted too."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.syncs: Counter = Counter()
        self.views = 0  # ops that only make a view (no kernel on a GPU)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        self.ops[name] += 1
        self.views += bool(func.is_view)
        kind = sync_kind(name, args, kwargs)
        if kind is not None:
            self.syncs[kind] += 1
        return func(*args, **kwargs)

    @property
    def num_ops(self) -> int:
        return sum(self.ops.values())

    @property
    def num_syncs(self) -> int:
        return sum(self.syncs.values())


def _cuda_batched_nms(boxes, scores, idxs, iou_threshold):
    """torchvision's batched_nms choosing its strategy as it does for CUDA tensors."""
    if boxes.numel() > _CUDA_BATCHED_NMS_LOOP_NUMEL:
        return tv_boxes._batched_nms_vanilla(boxes, scores, idxs, iou_threshold)
    return tv_boxes._batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)


@contextlib.contextmanager
def cuda_code_path():
    """Within the block: torchvision's batched_nms takes its CUDA strategy wherever it was imported."""
    original = tv_boxes.batched_nms
    patched = [
        (module, name)
        for module in list(sys.modules.values())
        for name in ("batched_nms",)
        if getattr(module, "__dict__", {}).get(name) is original  # not getattr: no module __getattr__ hooks
    ]
    for module, name in patched:
        setattr(module, name, _cuda_batched_nms)
    try:
        yield
    finally:
        for module, name in patched:
            setattr(module, name, original)


@contextlib.contextmanager
def count_dispatch():
    """`with count_dispatch() as c:` counts ops and syncs in the block (c.ops, c.syncs)."""
    counter = DispatchCounter()
    tolist = torch.Tensor.tolist

    def counted_tolist(self):
        counter.syncs["tolist"] += 1
        return tolist(self)

    torch.Tensor.tolist = counted_tolist
    try:
        with cuda_code_path(), counter:
            yield counter
    finally:
        torch.Tensor.tolist = tolist


def count_call(fn, *, warmup: int = 1) -> DispatchCounter:
    """Counts of one call of `fn` after `warmup` uncounted calls."""
    for _ in range(warmup):
        fn()
    with count_dispatch() as counter:
        fn()
    return counter


def _summary(counter: DispatchCounter, top: int) -> dict:
    return {
        "ops": counter.num_ops,
        "non_view_ops": counter.num_ops - counter.views,
        "syncs": counter.num_syncs,
        "sync_kinds": dict(counter.syncs.most_common()),
        "top_ops": dict(counter.ops.most_common(top)),
    }


def keep_all_proposals(*models) -> None:
    """Zero the RPN box-delta layer of each model (detkit's and torchvision's share the names):
    proposals are the clipped anchors, so none is filtered as tiny before NMS."""
    with torch.no_grad():
        for model in models:
            model.rpn.head.bbox_pred.weight.zero_()
            model.rpn.head.bbox_pred.bias.zero_()


def _size(text: str) -> tuple[int, int]:
    h, w = text.lower().split("x")
    return int(h), int(w)


def _count_mode(name, mode, dk, tv, images, targets, device, args) -> dict:
    from _pairs import predict_step, train_step

    if mode == "train":
        dk.train()
        tv.train()
        steps = {  # the multi-tensor SGD update: torch.optim's default for CUDA parameters
            "detkit": train_step(dk, images, targets, device, "fp32", foreach=True),
            "torchvision": train_step(tv, images, targets, device, "fp32", foreach=True),
        }
    else:
        with torch.no_grad():  # trained-like: about 100 detections per image, as bench_infer
            for model in (dk, tv):
                model.roi_heads.box_predictor.cls_score.bias[1] = 4.0
        dk.eval()
        tv.eval()
        steps = {
            "detkit": predict_step(dk.predict, images, device, "fp32"),
            "torchvision": predict_step(tv, images, device, "fp32"),
        }
    torch.manual_seed(0)
    counts = {impl: _summary(count_call(fn, warmup=args.warmup), args.top) for impl, fn in steps.items()}
    dk_c, tv_c = counts["detkit"], counts["torchvision"]
    return {
        "model": name,
        "mode": mode,
        **counts,
        "ops_ratio": dk_c["ops"] / tv_c["ops"],
        "non_view_ops_ratio": dk_c["non_view_ops"] / tv_c["non_view_ops"],
        "syncs_ratio": dk_c["syncs"] / max(tv_c["syncs"], 1),
    }


def _print_row(row: dict, top: int) -> None:
    counts = {impl: row[impl] for impl in ("detkit", "torchvision")}
    h, w = row["image_size"]
    print(f"\n{row['model']} {row['mode']}, batch {row['batch_size']}, {h}x{w}")
    print("| impl | ops | non-view ops | syncs | syncs by kind |\n|---|---|---|---|---|")
    for impl, c in counts.items():
        kinds = ", ".join(f"{k} {v}" for k, v in c["sync_kinds"].items())
        print(f"| {impl} | {c['ops']} | {c['non_view_ops']} | {c['syncs']} | {kinds} |")
    print(
        f"detkit / torchvision: ops {row['ops_ratio']:.3f}x (non-view {row['non_view_ops_ratio']:.3f}x), "
        f"syncs {row['syncs_ratio']:.2f}x",
        flush=True,
    )
    if top:
        for impl, c in counts.items():
            print(f"top ops {impl}: " + ", ".join(f"{k} {v}" for k, v in c["top_ops"].items()))


def main(argv=None) -> None:
    from _pairs import TORCHVISION_BUILDERS, build_pair, make_inputs

    from detkit.models import configure_kernels

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models = sorted(TORCHVISION_BUILDERS)
    parser.add_argument("--model", nargs="+", default=models, choices=models)
    parser.add_argument("--mode", nargs="+", default=["train", "predict"], choices=["train", "predict"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[8])
    parser.add_argument("--size", type=_size, nargs="+", default=[(320, 320)], help="HxW, e.g. 800x1216")
    parser.add_argument("--proposals", choices=["surviving", "random"], default="surviving", help="see above")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted calls before the counted one")
    parser.add_argument("--top", type=int, default=0, help="also list the N most dispatched ops")
    parser.add_argument("--cpu-kernels", action="store_true", help="keep detkit's CPU-only kernels on")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    report = {
        "torch": torch.__version__,
        "cpu_kernels": args.cpu_kernels,
        "proposals": args.proposals,
        "results": [],
    }
    print(
        f"fp32, cpu_kernels={args.cpu_kernels}, proposals={args.proposals}; "
        f"counts of one call after {args.warmup} warm-up call(s)"
    )
    for height, width in args.size:
        for name in args.model:
            dk, tv = build_pair(name, min_size=min(height, width), max_size=max(height, width), device=device)
            configure_kernels(dk, cpu_kernels=args.cpu_kernels)
            if args.proposals == "surviving":
                keep_all_proposals(dk, tv)
            for batch_size in args.batch_size:
                images, targets = make_inputs(
                    batch_size, height, width, device=device, with_masks=name.startswith("mask")
                )
                for mode in args.mode:
                    row = _count_mode(name, mode, dk, tv, images, targets, device, args)
                    row.update(batch_size=batch_size, image_size=[height, width])
                    report["results"].append(row)
                    _print_row(row, args.top)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
