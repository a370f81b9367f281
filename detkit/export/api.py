"""`export_program` (torch.export, saved as .pt2) and `export_onnx` (ONNX through torch's dynamo exporter).

Both trace `ExportableDetector`: input `images` float32 [N, 3, H, W] in 0..1 with dynamic N, H
and W (plus `proposals` [P, 4] and `proposal_batch_idx` [P] for Fast R-CNN, dynamic P); packed
outputs `boxes`, `scores`, `labels`, `batch_idx` (+ `mask_probs` for Mask R-CNN).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from detkit.export.graph import ExportableDetector, check_exportable

__all__ = ["DEFAULT_OPSET", "export_onnx", "export_program", "exportable", "model_metadata"]

DEFAULT_OPSET = 18
"""The ONNX opset `export_onnx` writes unless told otherwise."""
MAX_BATCH = 256
MAX_SIDE = 8192


def exportable(
    model: nn.Module, *, max_detections: int | None = None, category_ids: Sequence[int] | None = None
) -> ExportableDetector:
    """The eval-mode detector wrapped for tracing (see `detkit.export.graph.ExportableDetector`)."""
    if isinstance(model, ExportableDetector):
        return model
    check_exportable(model)
    model.eval()
    return ExportableDetector(model, max_detections=max_detections, category_ids=category_ids).eval()


def _example_inputs(wrapped: ExportableDetector) -> tuple[tuple, dict]:
    """Example inputs (two images, sizes that differ from each other and from any constant) and dynamic shapes."""
    d = wrapped.model.transform.size_divisible
    h, w = 5 * d + 3, 7 * d + 5
    images = torch.rand(2, 3, h, w)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    height = torch.export.Dim("height", min=2, max=MAX_SIDE)
    width = torch.export.Dim("width", min=2, max=MAX_SIDE)
    dynamic = {"images": {0: batch, 2: height, 3: width}}
    if wrapped.has_rpn:
        return (images,), dynamic
    # Fast R-CNN: a few proposals per image in input pixels
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(8, 2, generator=g) * torch.tensor([w / 2, h / 2])
    wh = 8 + torch.rand(8, 2, generator=g) * torch.tensor([w / 2, h / 2])
    proposals = torch.cat([xy, xy + wh], 1)
    proposal_batch_idx = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    num = torch.export.Dim("proposals", min=0, max=1 << 20)
    dynamic.update({"proposals": {0: num}, "proposal_batch_idx": {0: num}})
    return (images, proposals, proposal_batch_idx), dynamic


def _trace(wrapped: ExportableDetector) -> torch.export.ExportedProgram:
    args, dynamic = _example_inputs(wrapped)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint.*", category=FutureWarning)
        with torch.no_grad():
            return torch.export.export(wrapped, args, dynamic_shapes=dynamic, strict=False)


def export_program(
    model: nn.Module,
    path: str | os.PathLike | None = None,
    *,
    max_detections: int | None = None,
    category_ids: Sequence[int] | None = None,
) -> torch.export.ExportedProgram:
    """`torch.export` the detector's whole inference path; saved with `torch.export.save` when `path` is given.

    Run it with `torch.export.load(path).module()(images)` -> (boxes, scores, labels, batch_idx[, mask_probs]).
    `category_ids` (one per class): `labels` become `category_ids[label - 1]`.
    """
    wrapped = exportable(model, max_detections=max_detections, category_ids=category_ids)
    program = _trace(wrapped)
    if path is not None:
        torch.export.save(program, os.fspath(path))
    return program


def model_metadata(wrapped: ExportableDetector, extra: dict | None = None) -> dict[str, str]:
    """String metadata stored in the ONNX file (read back by `OnnxDetector`)."""
    model = wrapped.model
    heads = model.roi_heads
    meta = {
        "detkit.format": "detkit-packed-detections-v1",
        "detkit.inputs": json.dumps(wrapped.input_names),
        "detkit.outputs": json.dumps(wrapped.output_names),
        "detkit.num_classes": str(model.num_classes),
        "detkit.labels": "category_ids" if wrapped.category_ids is not None else "labels 1..num_classes",
        "detkit.max_detections": str(wrapped.max_detections),
        "detkit.score_threshold": str(heads.score_threshold),
        "detkit.mask_threshold": str(heads.mask_threshold) if wrapped.has_masks else "",
    }
    for key, value in (extra or {}).items():
        meta[f"detkit.{key}"] = value if isinstance(value, str) else json.dumps(value)
    return meta


def _onnx_translations() -> dict:
    """ONNX translations replacing two of the exporter's defaults.

    - the resize arithmetic (`sym_float`, `/` on sizes) in float64: the defaults cast sizes to
      float32, so floor(h * min_size / short_side) came out one pixel off the eager transform's
      Python (float64) arithmetic for ~5% of sizes;
    - `torchvision::roi_pool` as `MaxRoiPool`: onnxscript's translation takes another signature.
    """
    import operator

    from onnxscript import DOUBLE, INT64
    from onnxscript import opset18 as op

    def sym_float(x):
        return op.Cast(x, to=DOUBLE.dtype)

    def truediv(a, b):
        return op.Div(op.Cast(a, to=DOUBLE.dtype), op.Cast(b, to=DOUBLE.dtype))

    def roi_pool(x, rois, spatial_scale: float, pooled_height: int, pooled_width: int):
        out = op.MaxRoiPool(x, rois, pooled_shape=[pooled_height, pooled_width], spatial_scale=spatial_scale)
        return out, op.Cast(out, to=INT64.dtype)  # (output, argmax): only the output is used

    return {
        torch.sym_float: sym_float,
        operator.truediv: truediv,
        torch.ops.torchvision.roi_pool.default: roi_pool,
    }


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    max_detections: int | None = None,
    category_ids: Sequence[int] | None = None,
    metadata: dict | None = None,
    program: torch.export.ExportedProgram | None = None,
) -> str:
    """Export the detector to one ONNX file (weights inside) and return its path.

    Inputs `images` float32 [N, 3, H, W] (0..1 RGB, dynamic N, H, W) and, for Fast R-CNN,
    `proposals` float32 [P, 4] XYXY input pixels with `proposal_batch_idx` int64 [P]. Outputs
    `boxes` [D, 4], `scores` [D], `labels` int64 [D], `batch_idx` int64 [D] (+ `mask_probs`
    [D, 28, 28]). `metadata` (e.g. class names) is stored as `detkit.*` metadata properties.
    `program`: an ExportedProgram of the same wrapped model from `export_program` (skips tracing again).
    """
    import onnx

    if opset < 16:
        raise ValueError(f"opset must be >= 16 (RoiAlign with half_pixel needs 16), got {opset}")
    wrapped = exportable(model, max_detections=max_detections, category_ids=category_ids)
    if program is None:
        program = _trace(wrapped)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_unbacked_symint.*", category=FutureWarning)
        onnx_program = torch.onnx.export(
            program,
            input_names=wrapped.input_names,
            output_names=wrapped.output_names,
            opset_version=opset,
            dynamo=True,
            optimize=True,
            custom_translation_table=_onnx_translations(),
            external_data=False,
            verbose=False,
        )
    proto = onnx_program.model_proto
    for key, value in model_metadata(wrapped, metadata).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    onnx.save(proto, path)
    return path
