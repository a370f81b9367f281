"""`detkit predict` on image files: what it needs installed, what it leaves behind when it fails,
and `model.predict`'s input check."""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detkit.cli import main

TESTS = Path(__file__).resolve().parents[1]


def _fake_onnx(path) -> None:
    """The hand-made ONNX file of tests/export/test_runner.py (constant detections, the export's interface)."""
    pytest.importorskip("onnxruntime")
    spec = importlib.util.spec_from_file_location("_runner_tests", TESTS / "export" / "test_runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module._fake_export(path, "category_ids")


def _images(folder, names) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(folder / name)


BLOCKER = """
import sys
BLOCKED = {blocked!r}
class Blocker:  # as if these packages were not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Blocker())
from detkit.cli import main
code = main({argv!r})
print("IMPORTED", sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED))
sys.exit(code)
"""


def _run_blocked(blocked, argv, cwd):
    script = BLOCKER.format(blocked=list(blocked), argv=[str(a) for a in argv])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, cwd=cwd)


def test_predict_onnx_needs_no_lightning_coco_tools_or_opencv(tmp_path):
    """`detkit-rcnn[export]` alone: ONNX Runtime, torch, Pillow; no Lightning, pycocotools, faster-coco-eval, OpenCV."""
    _fake_onnx(tmp_path / "m.onnx")
    _images(tmp_path / "in", ["a.png", "b.jpg"])
    blocked = ("lightning", "lightning_fabric", "pytorch_lightning", "pycocotools", "faster_coco_eval", "cv2")
    argv = ["predict", "--onnx", tmp_path / "m.onnx", "--input", tmp_path / "in", "--output", tmp_path / "out"]
    run = _run_blocked(blocked, argv, tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]  # was: "pycocotools is not installed"
    assert "IMPORTED []" in run.stdout
    assert "no drawings:" in run.stderr and "pip install 'detkit-rcnn[train]'" in run.stderr
    meta = json.loads((tmp_path / "out" / "images.json").read_text())
    assert meta["image_ids"] == "sequential" and "annotations" not in meta
    assert [(e["id"], e["file_name"], e["width"], e["height"]) for e in meta["images"]] == [
        (1, "a.png", 20, 16),
        (2, "b.jpg", 20, 16),
    ]
    assert {d["image_id"] for d in json.loads((tmp_path / "out" / "detections.json").read_text())} == {1, 2}


def test_mask_model_without_pycocotools_is_one_line_naming_the_extra(tmp_path):
    from tiny_checkpoints import save_tiny_mask_checkpoint

    save_tiny_mask_checkpoint(tmp_path / "mask.ckpt")
    _images(tmp_path / "in", ["a.png"])
    argv = ["predict", "--checkpoint", tmp_path / "mask.ckpt", "--input", tmp_path / "in", "--output", tmp_path / "o"]
    run = _run_blocked(("pycocotools",), [*argv, "--no-draw"], tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "detkit predict: error: pycocotools is not installed (writing mask detections as COCO RLEs needs it): "
        "pip install 'detkit-rcnn[eval]'"
    ]
    assert not (tmp_path / "o").exists()


def test_strict_failure_leaves_no_output(tmp_path, capsys):
    _fake_onnx(tmp_path / "m.onnx")
    _images(tmp_path / "in", ["a.png"])
    (tmp_path / "in" / "b.jpg").write_bytes(b"\xff\xd8 truncated")  # sorted after a.png: a.png is drawn first
    args = ["predict", "--onnx", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "in"), "--strict"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("detkit predict: error: cannot read image") and "b.jpg" in err[-1]
    assert not (tmp_path / "out").exists()  # was: a folder with a.png's drawing
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("x")
    assert main([*args, "--output", str(tmp_path / "mine")]) == 2
    assert os.listdir(tmp_path / "mine") == ["keep.txt"]  # a folder it did not make keeps what was there


def test_only_unreadable_inputs_exit_non_zero(tmp_path, capsys):
    _fake_onnx(tmp_path / "m.onnx")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"not a png")
    (tmp_path / "in" / "b.jpg").write_bytes(b"")
    args = ["predict", "--onnx", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "in")]
    assert main([*args, "--output", str(tmp_path / "out")]) == 2  # was 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "detkit predict: error: none of the 2 input file(s) could be read (first: a.png: not a decodable image "
        "(corrupt, truncated or unknown format)); nothing written"
    ]
    assert not (tmp_path / "out").exists()


def test_model_predict_refuses_what_is_not_a_list_of_images():
    import torch

    from detkit.models import build_model

    model = build_model("faster_rcnn_tiny", num_classes=2)
    for bad in (None, 5, "image.png"):
        with pytest.raises(TypeError, match=r"images must be a list of Tensor\[3, H, W\]"):
            model.predict(bad)  # None was a TypeError from len()
    assert len(model.predict([torch.rand(3, 32, 32)])) == 1


def test_predict_checkpoint_imports_no_lightning(tmp_path):
    """Inference needs no training framework (DESIGN rule 17): a training checkpoint predicts with Lightning absent."""
    import torch

    from detkit.io import checkpoint_info
    from detkit.models import build_model

    model = build_model("faster_rcnn_tiny", num_classes=2)
    checkpoint = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {"model_name": "faster_rcnn_tiny", "num_classes": 2, "model_kwargs": {}},
    }
    checkpoint_info(checkpoint)  # a well-formed detkit checkpoint
    torch.save(checkpoint, tmp_path / "m.ckpt")
    _images(tmp_path / "in", ["a.png"])
    argv = ["predict", "--checkpoint", tmp_path / "m.ckpt", "--input", tmp_path / "in", "--output", tmp_path / "out"]
    run = _run_blocked(("lightning", "lightning_fabric", "pytorch_lightning"), [*argv, "--no-draw"], tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "IMPORTED []" in run.stdout
    assert (tmp_path / "out" / "detections.json").is_file()


def test_predict_onnx_runs_torch_on_one_thread_and_restores_it(tmp_path, monkeypatch):
    import torch

    from detkit.export.runner import OnnxPredictor

    _fake_onnx(tmp_path / "m.onnx")
    _images(tmp_path / "in", ["a.png"])
    seen = []
    predict = OnnxPredictor.predict
    monkeypatch.setattr(OnnxPredictor, "predict", lambda self, *a, **k: seen.append(torch.get_num_threads())
                        or predict(self, *a, **k))  # fmt: skip
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["predict", "--onnx", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "in"),
                     "--output", str(tmp_path / "out"), "--no-draw"]) == 0  # fmt: skip
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
