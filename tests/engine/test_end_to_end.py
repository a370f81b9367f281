"""`detkit fit` -> `validate` -> `predict --input` -> `evaluate`, as subprocesses (the installed console script)."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")
DETKIT = [sys.executable, "-c", "import sys; from detkit.cli import main; sys.exit(main())"]


def _run(args, cwd):
    proc = subprocess.run(DETKIT + args, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"detkit {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_fit_validate_predict_evaluate(tmp_path):
    root = tmp_path / "shapes"
    overrides = [
        "--config",
        os.path.join(CONFIGS, "shapes_faster_rcnn_tiny.yaml"),
        "--data.root",
        str(root),
        "--data.num_train",
        "64",
        "--data.num_val",
        "16",
        "--data.batch_size",
        "8",
        "--model.model_kwargs",
        '{"roi_batch_size_per_image": 32}',
        "--model.warmup_steps",
        "5",
    ]
    fit = _run(
        [
            "fit",
            *overrides,
            "--trainer.max_steps",
            "24",
            "--trainer.max_epochs",
            "-1",
            "--trainer.enable_progress_bar",
            "false",
        ],
        tmp_path,
    )
    assert "val epoch 2" in fit.stdout  # 8 steps per epoch: validation after each of the 3 epochs

    run = tmp_path / "runs" / "shapes_faster_rcnn_tiny" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and (run / "config.yaml").is_file() and (run / "loss_curve.png").is_file()
    with open(run / "eval" / "epoch_002" / "metrics.json") as f:
        fit_ap = json.load(f)["bbox"]["stats"]["AP"]

    _run(["validate", *overrides, "--ckpt_path", str(last)], tmp_path)
    eval_dir = tmp_path / "runs" / "shapes_faster_rcnn_tiny" / "version_1" / "eval" / "validate_epoch_002"
    with open(eval_dir / "metrics.json") as f:
        val = json.load(f)["bbox"]["stats"]
    assert val["AP"] == pytest.approx(fit_ap, abs=1e-6)  # same weights, same data: same metrics
    assert 0.0 <= val["AP"] <= val["AP50"] <= 1.0

    images = tmp_path / "images"
    images.mkdir()
    for name in ("000000.png", "000001.png"):
        shutil.copy(root / "val" / "images" / name, images / name)
    _run(["predict", "--checkpoint", str(last), "--input", str(images), "--output", str(tmp_path / "pred")], tmp_path)
    with open(tmp_path / "pred" / "images.json") as f:
        assert [e["file_name"] for e in json.load(f)["images"]] == ["000000.png", "000001.png"]
    with open(tmp_path / "pred" / "detections.json") as f:
        assert {r["image_id"] for r in json.load(f)} <= {1, 2}  # a COCO results list
    assert (tmp_path / "pred" / "000000.png").is_file()

    out = tmp_path / "metrics.json"
    ev = _run(
        [
            "evaluate",
            "--annotations",
            str(root / "val" / "annotations.json"),
            "--predictions",
            str(eval_dir / "predictions.json"),
            "--output",
            str(out),
        ],
        tmp_path,
    )
    assert "Average Precision" in ev.stdout
    with open(out) as f:
        assert json.load(f)["stats"]["AP"] == pytest.approx(val["AP"], abs=1e-6)
    with open(run / "config.yaml") as f:
        assert yaml.safe_load(f)["data"]["init_args"]["num_train"] == 64
