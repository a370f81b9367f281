"""Cascade R-CNN exports like the other heads: the ONNX file and the .pt2 program give eager detkit's
detections (every stage, boxes clipped between stages, averaged scores) on the parity images."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_export import check_parity, parity_images  # noqa: E402

from detkit.export import export_onnx, export_program  # noqa: E402
from detkit.models import build_model  # noqa: E402


@pytest.mark.slow
def test_cascade_rcnn_tiny_exports_and_matches_eager(tmp_path):
    torch.manual_seed(0)
    model = build_model("cascade_rcnn_tiny", num_classes=3).eval()
    with torch.no_grad():  # spread the scores (untrained heads tie) and move the boxes between stages
        for predictor in model.roi_heads.box_predictor:
            for p in (*predictor.cls_score.parameters(), *predictor.bbox_pred.parameters()):
                p.normal_(0, 0.5)
        for p in model.rpn.head.cls_logits.parameters():
            p.normal_(0, 0.5)
    program = export_program(model)
    path = export_onnx(model, tmp_path / "model.onnx", program=program)
    check_parity(model, path, program, parity_images())
