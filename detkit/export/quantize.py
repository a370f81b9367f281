"""int8 static quantization of an exported ONNX detector with ONNX Runtime.

    from detkit.export.quantize import quantize_onnx
    quantize_onnx("model.onnx", "model_int8.onnx", calibration_images)  # float32 [3, H, W] arrays in 0..1

The convolutions and matrix products (Conv, Gemm, MatMul) get int8 weights (per output channel,
7-bit range) and uint8 activations in ONNX's QDQ form (QuantizeLinear / DequantizeLinear around each one,
which ONNX Runtime fuses into integer kernels). Activation ranges are calibrated (min / max) by
running the exported graph on the user's images: the graph itself normalises, resizes and pads,
so the calibration sees the tensors inference will see. The layers whose outputs are the
detector's decisions (`KEEP_FP32`: RPN objectness and box deltas, the box predictor's class
logits and box deltas, the mask logits) stay float32: they are a small share of the work.

Weights use 7 of the 8 bits (`reduce_range`): on x86 CPUs without VNNI (AVX2, AVX-512 before
Cascade Lake) ONNX Runtime's u8 x s8 kernel sums pairs of products in int16, which saturates
with full-range weights; measured on the shapes checkpoint, full-range weights lost 0.017 AP,
7-bit weights none (docs/export.md).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence

import numpy as np

from detkit.utils.optional import require

__all__ = ["KEEP_FP32", "QUANTIZED_OPS", "quantize_onnx", "quantized_nodes"]

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
"""The ONNX operators `quantize_onnx` gives int8 weights and uint8 activations."""
KEEP_FP32 = (
    "model.rpn.head.cls_logits",
    "model.rpn.head.bbox_pred",
    "model.roi_heads.box_predictor",
    "model.roi_heads.mask_head.mask_logits",
)
"""Module paths (prefixes of the exported weights' names) whose layers `quantize_onnx` leaves float32."""


def _weight_layers(graph, prefixes: Sequence[str]) -> list[str]:
    """Names of the Conv / Gemm / MatMul nodes whose weight initializer lies under one of `prefixes`."""
    initializers = {init.name for init in graph.initializer}
    names = []
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        weights = [name for name in node.input[1:] if name in initializers]
        if any(w.startswith(p + ".") for w in weights for p in prefixes):
            names.append(node.name)
    return names


def quantized_nodes(path: str | os.PathLike) -> dict[str, int]:
    """Count of the quantization nodes (QuantizeLinear, DequantizeLinear, QLinear*, *Integer) in an ONNX file."""
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(os.fspath(path)).graph.node:
        op = node.op_type
        if op in ("QuantizeLinear", "DequantizeLinear") or op.startswith("QLinear") or op.endswith("Integer"):
            counts[op] = counts.get(op, 0) + 1
    return counts


class _ImageReader:
    """An ONNX Runtime CalibrationDataReader: one image per call, as `images` float32 [1, 3, H, W]."""

    def __init__(self, images: Iterable[np.ndarray]):
        self.images = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.images, None)
        if image is None:
            return None
        return {"images": np.ascontiguousarray(image, dtype=np.float32)[None]}

    def rewind(self) -> None:  # a single pass (min / max calibration)
        raise RuntimeError("calibration images are read once")


def quantize_onnx(
    source: str | os.PathLike,
    output: str | os.PathLike,
    calibration_images: Sequence[np.ndarray],
    *,
    keep_fp32: Sequence[str] = KEEP_FP32,
    per_channel: bool = True,
    reduce_range: bool = True,
) -> str:
    """Write an int8 (QDQ) copy of the float32 export `source` to `output`; returns its path.

    `calibration_images`: float32 [3, H, W] arrays in 0..1 (any sizes; one call each), e.g. a
    few dozen images of the data the model will see, never the images it is evaluated on.
    `keep_fp32`: module paths whose Conv / Gemm layers stay float32. `per_channel`: one weight
    scale per output channel. `reduce_range`: 7-bit weights (see the module's docstring; False gives
    8-bit weights, exact only on CPUs with VNNI). The source's `detkit.*` metadata is kept; `detkit.quantization`
    ("int8") and `detkit.calibration_images` (their number) are added.
    """
    onnx = require("onnx", "export", "int8 quantization")
    require("onnxruntime", "export", "int8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration_images) == 0:
        raise ValueError("int8 quantization needs at least one calibration image")
    for i, image in enumerate(calibration_images):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"calibration image {i} must be float32 [3, H, W], got shape {image.shape}")
    source, output = os.fspath(source), os.fspath(output)
    meta = {p.key: p.value for p in onnx.load(source, load_external_data=False).metadata_props}
    with tempfile.TemporaryDirectory(prefix="detkit-quantize-") as tmp:
        # ONNX Runtime's graph optimisations first (constant folding, Conv + Mul / Add fusion), so
        # each convolution is one node that its quantized form replaces whole
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(source, prepared, skip_symbolic_shape=True)
        exclude = _weight_layers(onnx.load(prepared).graph, keep_fp32)
        quantize_static(
            prepared,
            os.path.join(tmp, "int8.onnx"),
            _ImageReader(calibration_images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS),
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        )
        model = onnx.load(os.path.join(tmp, "int8.onnx"))
    meta.update({"detkit.quantization": "int8", "detkit.calibration_images": str(len(calibration_images))})
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    onnx.save(model, output)
    return output
