"""Out of (GPU) memory in `detkit predict --checkpoint`: a clear message, not a traceback.

There is no GPU here: the detector's predict raises `torch.OutOfMemoryError` (the class
`torch.cuda.OutOfMemoryError` is an alias of) on the CPU.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

import detkit.io.checkpoint as checkpoint_io
from detkit.cli import main
from detkit.io.checkpoint import CheckpointInfo


class OutOfMemoryDetector(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def predict(self, images, precision="fp32"):
        self.calls += 1
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB"
        )


def test_predict_out_of_memory_suggests_smaller_batch(tmp_path, monkeypatch, capsys):
    images = tmp_path / "in"
    images.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), np.full((64, 64, 3), 100, np.uint8))
    model = OutOfMemoryDetector()
    info = CheckpointInfo(model_name="faster_rcnn_tiny", num_classes=3)
    monkeypatch.setattr(checkpoint_io, "build_model_from_checkpoint", lambda path, map_location="cpu": (model, info))
    args = ["predict", "--checkpoint", str(tmp_path / "x.ckpt"), "--input", str(images)]
    try:
        code = main([*args, "--output", str(tmp_path / "out"), "--batch-size", "2", "--device", "cpu"])
    except torch.OutOfMemoryError:
        pytest.fail("torch.OutOfMemoryError escaped `detkit predict` as a traceback")
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and model.calls >= 1
    assert len(err) == 1 and err[0].startswith("detkit predict: error:"), err
    assert "out of memory" in err[0].lower() and "--batch-size" in err[0]
