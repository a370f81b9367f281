"""Keypoint R-CNN exports like the other heads: the ONNX file and the .pt2 program give eager detkit's
detections and keypoints (`keypoints`, `keypoints_scores` outputs) on the parity images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from export_parity import assert_same_detections, detector, eager_predict, packed_to_list  # noqa: E402
from test_export import parity_images  # noqa: E402

from detkit.export import OnnxDetector, export_onnx, export_program  # noqa: E402
from detkit.export.graph import heatmaps_to_keypoints_batched  # noqa: E402
from detkit.heads import heatmaps_to_keypoints  # noqa: E402


def test_batched_decoding_equals_the_per_detection_resize():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(30, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 0.3 + torch.rand(30, 2, generator=g) * 150], 1)
    maps = torch.randn(30, 4, 56, 56, generator=g)
    kps, scores = heatmaps_to_keypoints_batched(maps, boxes)
    expected_kps, expected_scores = heatmaps_to_keypoints(maps, boxes)
    assert torch.equal(kps, expected_kps)
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-4)
    kps, scores = heatmaps_to_keypoints_batched(maps[:0], boxes[:0])
    assert kps.shape == (0, 4, 3) and scores.shape == (0, 4)


@pytest.mark.slow
def test_keypoint_rcnn_tiny_exports_and_matches_eager(tmp_path):
    model = detector("keypoint_rcnn_tiny")
    program = export_program(model)
    path = export_onnx(model, tmp_path / "model.onnx", program=program)
    session = OnnxDetector(path)
    assert session.output_names[-2:] == ["keypoints", "keypoints_scores"] and session.has_keypoints
    module = program.module()
    total = 0
    for images in parity_images():  # keypoints compared by `assert_same_detections`
        where = f"{len(images)} x {images[0].shape[1:]}"
        ref = eager_predict(model, images)
        got_ort = session.predict(images, batch_size=len(images))
        with torch.no_grad():
            got_pt2 = packed_to_list(module(torch.from_numpy(np.stack(images))), len(images), session.output_names)
        for i in range(len(images)):
            total += len(ref[i]["labels"])
            assert_same_detections(ref[i], got_ort[i], f"ONNX Runtime, {where}, image {i}")
            assert_same_detections(ref[i], got_pt2[i], f".pt2 program, {where}, image {i}")
    assert total > 0, "the check needs detections"
