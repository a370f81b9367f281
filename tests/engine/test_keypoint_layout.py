"""A keypoint detector's checkpoint records its data's keypoint names and skeleton, and `detkit predict`
draws the skeleton from it, from the checkpoint and from an ONNX export of it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import detkit.visualize
from detkit.cli import main
from detkit.engine.module import DetectionModule
from detkit.io.checkpoint import checkpoint_info
from detkit.utils.checkpoint import load_checkpoint

NAMES = ["top", "right", "bottom", "left"]
SKELETON = [(0, 1), (1, 2), (2, 3), (3, 0)]


def _save(module: DetectionModule, path) -> dict:
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return checkpoint


def _keypoint_checkpoint(path) -> None:
    """An untrained keypoint_rcnn_tiny saved while its (fake) data module holds keypoint data."""
    torch.manual_seed(0)
    module = DetectionModule(model_name="keypoint_rcnn_tiny", num_classes=2, model_kwargs={"num_keypoints": 4})
    module.class_names = ["square", "circle"]
    dataset = SimpleNamespace(keypoint_names=NAMES, skeleton=SKELETON)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_dataset=dataset, val_dataset=None))
    _save(module, path)


def test_checkpoint_records_keypoint_names_and_skeleton(tmp_path):
    path = tmp_path / "kp.ckpt"
    _keypoint_checkpoint(path)
    info = checkpoint_info(load_checkpoint(path))
    assert info.keypoint_names == NAMES and info.skeleton == SKELETON
    # a resumed / reloaded module keeps them without data
    module = DetectionModule(model_name="keypoint_rcnn_tiny", num_classes=2, model_kwargs={"num_keypoints": 4})
    module.on_load_checkpoint(load_checkpoint(path))
    again = checkpoint_info(_save(module, tmp_path / "again.ckpt"))
    assert again.keypoint_names == NAMES and again.skeleton == SKELETON


def test_other_detectors_record_no_keypoints(tmp_path):
    module = DetectionModule(model_name="faster_rcnn_tiny", num_classes=2)
    dataset = SimpleNamespace(keypoint_names=NAMES, skeleton=SKELETON)
    module._trainer = SimpleNamespace(datamodule=SimpleNamespace(train_dataset=dataset, val_dataset=None))
    info = checkpoint_info(_save(module, tmp_path / "faster.ckpt"))
    assert info.keypoint_names is None and info.skeleton is None


def _recorded_skeletons(monkeypatch) -> list:
    seen = []
    draw = detkit.visualize.draw_detections

    def recording(*args, **kwargs):
        seen.append(kwargs.get("skeleton"))
        return draw(*args, **kwargs)

    monkeypatch.setattr(detkit.visualize, "draw_detections", recording)
    return seen


def _image(folder) -> None:
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(folder / "a.png")


def test_predict_checkpoint_draws_the_recorded_skeleton(tmp_path, monkeypatch):
    path = tmp_path / "kp.ckpt"
    _keypoint_checkpoint(path)
    _image(tmp_path / "in")
    seen = _recorded_skeletons(monkeypatch)
    assert main(["predict", "--checkpoint", str(path), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out")]) == 0  # fmt: skip
    assert seen == [SKELETON] and (tmp_path / "out" / "a.png").is_file()


@pytest.mark.slow
def test_onnx_export_carries_the_skeleton_to_predict(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "kp.ckpt"
    _keypoint_checkpoint(path)
    onnx = tmp_path / "kp.onnx"
    assert main(["export", "--checkpoint", str(path), "--output", str(onnx)]) == 0
    _image(tmp_path / "in")
    seen = _recorded_skeletons(monkeypatch)
    assert main(["predict", "--onnx", str(onnx), "--input", str(tmp_path / "in"),
                 "--output", str(tmp_path / "out")]) == 0  # fmt: skip
    assert seen == [SKELETON]
