"""`detkit predict --precision bf16`: the checkpoint's predict(precision="bf16"), refused where it does not apply."""

import json

import numpy as np
import torch
from PIL import Image
from tiny_checkpoints import save_tiny_mask_checkpoint

from detkit.cli import main
from detkit.data import read_image_rgb
from detkit.io.checkpoint import build_model_from_checkpoint


def _scores(folder) -> list[float]:
    return [d["score"] for d in json.loads((folder / "detections.json").read_text())]


def test_bf16_predict_files_are_the_models_bf16_detections(tmp_path, capsys):
    checkpoint = save_tiny_mask_checkpoint(tmp_path / "mask.ckpt")
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(tmp_path / "in/a.png")
    argv = ["predict", "--checkpoint", str(checkpoint), "--input", str(tmp_path / "in"), "--no-draw"]
    assert main([*argv, "--output", str(tmp_path / "fp32")]) == 0
    assert main([*argv, "--output", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert "note: this CPU has no native bfloat16 arithmetic" in capsys.readouterr().err

    model, _ = build_model_from_checkpoint(checkpoint)
    image = torch.from_numpy(read_image_rgb(tmp_path / "in/a.png")).permute(2, 0, 1).float().div(255)
    expected = model.predict([image], precision="bf16")[0]["scores"]
    bf16, fp32 = _scores(tmp_path / "bf16"), _scores(tmp_path / "fp32")
    assert len(bf16) == len(expected) > 0
    assert np.allclose(sorted(bf16), sorted(expected.tolist()), atol=1e-5)  # the json rounds nothing we compare
    assert sorted(bf16) != sorted(fp32)  # the option did change the arithmetic


def test_precision_is_refused_with_onnx_and_config(capsys):
    assert main(["predict", "--onnx", "m.onnx", "--input", "x", "--output", "o", "--precision", "bf16"]) == 2
    assert "--precision goes with --checkpoint" in capsys.readouterr().err
    assert main(["predict", "--config", "shapes_faster_rcnn_tiny", "--precision", "bf16"]) == 2
    assert "--precision: image-file options go with --checkpoint or --onnx" in capsys.readouterr().err
