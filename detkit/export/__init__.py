"""Export detkit detectors to ONNX and torch.export, and run the ONNX file with ONNX Runtime.

    from detkit.export import export_onnx, export_program, OnnxDetector
    export_onnx(model, "model.onnx")            # images [N, 3, H, W] -> boxes, scores, labels, batch_idx
    program = export_program(model, "model.pt2")
    detections = OnnxDetector("model.onnx").predict(images)
    quantize_onnx("model.onnx", "model_int8.onnx", calibration_images)  # int8, ONNX Runtime

See docs/export.md for the input / output contract. `onnx` / `onnxruntime` / `onnxscript` are
the optional `export` extra; this module imports them only when used.
"""

from detkit.export.api import DEFAULT_OPSET, export_onnx, export_program, exportable, model_metadata
from detkit.export.graph import ExportableDetector, check_exportable
from detkit.export.masks import paste_masks_numpy
from detkit.export.quantize import KEEP_FP32, QUANTIZED_OPS, quantize_onnx, quantized_nodes
from detkit.export.runner import OnnxDetector, split_packed

__all__ = [
    "DEFAULT_OPSET",
    "KEEP_FP32",
    "ExportableDetector",
    "OnnxDetector",
    "QUANTIZED_OPS",
    "check_exportable",
    "export_onnx",
    "export_program",
    "exportable",
    "model_metadata",
    "paste_masks_numpy",
    "quantize_onnx",
    "quantized_nodes",
    "split_packed",
]
