"""OnnxDetector / OnnxPredictor on a small hand-made ONNX file with the export's interface (no export needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from detkit.export import OnnxDetector  # noqa: E402
from detkit.export.runner import OnnxPredictor  # noqa: E402


def _fake_export(path, labels_meta: str) -> None:
    """A graph with input `images` whose outputs are constants: 3 detections, two in image 0, one in image 1."""
    consts = {
        "boxes": np.array([[1, 2, 10, 12], [3, 3, 5, 9], [0, 0, 4, 4]], dtype=np.float32),
        "scores": np.array([0.9, 0.4, 0.8], dtype=np.float32),
        "labels": np.array([11, 7, 9], dtype=np.int64),
        "batch_idx": np.array([0, 0, 1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(value, name + "_value"))
        for name, value in consts.items()
    ]
    nodes.append(helper.make_node("Shape", ["images"], ["unused"]))
    graph = helper.make_graph(
        nodes,
        "fake",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT if n in ("boxes", "scores") else TensorProto.INT64, None)
            for n in consts
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta = {
        "detkit.num_classes": "3",
        "detkit.labels": labels_meta,
        "detkit.class_names": json.dumps(["a", "b", "c"]),
        "detkit.label_to_category_id": json.dumps({"1": 7, "2": 9, "3": 11}),
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def test_predictor_maps_category_id_labels_back_and_splits_per_image(tmp_path):
    import torch

    _fake_export(tmp_path / "m.onnx", "category_ids")
    predictor = OnnxPredictor(tmp_path / "m.onnx")
    assert predictor.class_names == ["a", "b", "c"] and predictor.num_classes == 3
    assert predictor.label_to_category_id == {1: 7, 2: 9, 3: 11}
    out = predictor.predict([torch.rand(3, 8, 8), torch.rand(3, 8, 8)])
    assert out[0]["labels"].tolist() == [3, 1] and out[1]["labels"].tolist() == [2]
    assert out[0]["boxes"].shape == (2, 4) and out[1]["scores"].tolist() == pytest.approx([0.8])


def test_detector_keeps_labels_and_rejects_bad_files(tmp_path):
    _fake_export(tmp_path / "m.onnx", "labels 1..num_classes")
    dets = OnnxDetector(tmp_path / "m.onnx").predict([np.zeros((3, 4, 4), np.float32)] * 2)
    assert dets[0]["labels"].tolist() == [11, 7]
    with pytest.raises(ValueError, match=r"images\[0\] must be float32 \[3, H, W\]"):
        OnnxDetector(tmp_path / "m.onnx").predict([np.zeros((4, 4), np.float32)])
    with pytest.raises(FileNotFoundError, match="ONNX file not found"):
        OnnxDetector(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="ONNX Runtime cannot load it"):
        OnnxDetector(tmp_path / "bad.onnx")


def test_sessions_do_not_spin_unless_asked(tmp_path):
    _fake_export(tmp_path / "m.onnx", "labels 1..num_classes")
    options = OnnxDetector(tmp_path / "m.onnx").session.get_session_options()
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        assert options.get_session_config_entry(key) == "0"
    spinning = OnnxDetector(tmp_path / "m.onnx", config={"session.intra_op.allow_spinning": "1"})
    assert spinning.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "1"
