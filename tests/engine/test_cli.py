"""The `detkit` command: LightningCLI subcommands, predict on image files, evaluate / proposals dispatch."""

import contextlib
import io
import json
import os
import shlex
import shutil

import cv2
import pytest
import yaml

from detkit import __version__
from detkit.cli import main
from detkit.utils.checkpoint import load_checkpoint

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def _shapes_config(tmp_path):
    with open(os.path.join(CONFIGS, "shapes_faster_rcnn_tiny.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["init_args"].update(root=str(tmp_path / "shapes"), num_train=8, num_val=4, batch_size=4)
    cfg["model"]["model_kwargs"] = {"rpn_post_nms_top_n_test": 50, "roi_batch_size_per_image": 32}
    cfg["model"]["warmup_steps"] = 2
    cfg["trainer"].update(max_epochs=1, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    path = tmp_path / "shapes.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One `detkit fit` run (in-process) on 8 images: its folder, config and checkpoints."""
    tmp = tmp_path_factory.mktemp("fit")
    cwd = os.getcwd()
    os.chdir(tmp)
    stderr = io.StringIO()
    try:
        config = _shapes_config(tmp)
        with contextlib.redirect_stderr(stderr):
            assert main(["fit", "--config", config]) == 0
    finally:
        os.chdir(cwd)
    run = tmp / "runs" / "shapes_faster_rcnn_tiny" / "version_0"
    last = str(run / "checkpoints" / "last.ckpt")
    return {"tmp": tmp, "config": config, "run": run, "last": last, "stderr": stderr.getvalue()}


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"detkit {__version__}"


def test_usage_and_unknown_command(capsys):
    assert main(["--help"]) == 0
    assert "evaluate" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_fit_writes_checkpoints_config_and_curves(trained):
    run = trained["run"]
    ckpts = sorted(os.listdir(run / "checkpoints"))
    assert "last.ckpt" in ckpts and any(c.startswith("best-epoch000-AP") for c in ckpts)
    assert (run / "config.yaml").is_file() and (run / "loss_curve.png").is_file()
    assert (run / "eval" / "epoch_000" / "metrics.json").is_file()
    with open(run / "config.yaml") as f:
        saved = yaml.safe_load(f)
    assert saved["model"]["model_name"] == "faster_rcnn_tiny" and saved["seed_everything"] == 0
    with open(run / "hparams.yaml") as f:
        assert yaml.safe_load(f)["num_classes"] == 3  # linked from the data module
    ckpt = load_checkpoint(trained["last"])  # weights_only=True works on our checkpoints
    assert ckpt["detkit"]["class_names"] == ["circle", "rectangle", "triangle"]
    assert ckpt["detkit"]["model_name"] == "faster_rcnn_tiny"
    assert any(k.startswith("model.backbone.") for k in ckpt["state_dict"])


def test_fit_ends_with_a_summary_whose_next_commands_run(trained, monkeypatch, capsys):
    summary = trained["stderr"][trained["stderr"].index("detkit fit: done in") :].splitlines()
    assert summary[1].startswith("Last validation (epoch 000): box AP ") and "(AP50 " in summary[1]
    best = next(line.split()[1] for line in summary if line.startswith("  checkpoint  "))
    assert best.startswith("runs/shapes_faster_rcnn_tiny/version_0/checkpoints/best-epoch000-AP")
    assert "  metrics     runs/shapes_faster_rcnn_tiny/version_0/eval/epoch_000/metrics.json" in summary
    commands = [shlex.split(line) for line in summary[summary.index("Next:") + 1 :]]
    assert [words[:2] for words in commands] == [["detkit", "predict"], ["detkit", "evaluate"], ["detkit", "analyze"]]
    monkeypatch.chdir(trained["tmp"])  # the paths are relative to where fit ran
    images = trained["tmp"] / "shapes" / "val" / "images"
    predict = [str(images) if word == "YOUR_IMAGES/" else word for word in commands[0][1:]]
    assert main([*predict, "--no-draw"]) == 0
    assert main(commands[1][1:]) == 0
    assert "Average Precision" in capsys.readouterr().out


def test_validate_and_lightning_predict_with_checkpoint(trained, monkeypatch, capsys):
    monkeypatch.chdir(trained["tmp"])
    assert main(["validate", "--config", trained["config"], "--ckpt_path", trained["last"]]) == 0
    assert "val epoch 0" in capsys.readouterr().out
    assert main(["predict", "--config", trained["config"], "--ckpt_path", trained["last"]]) == 0
    version = sorted(os.listdir(trained["tmp"] / "runs" / "shapes_faster_rcnn_tiny"))[-1]
    with open(trained["tmp"] / "runs" / "shapes_faster_rcnn_tiny" / version / "predictions.json") as f:
        results = json.load(f)
    assert {r["image_id"] for r in results} <= {1, 2, 3, 4} and all(
        set(r) >= {"bbox", "score", "category_id"} for r in results
    )


def test_predict_on_image_files(trained, tmp_path, capsys):
    images = tmp_path / "in"
    images.mkdir()
    src = trained["tmp"] / "shapes" / "val" / "images"
    shutil.copy(src / "000000.png", images / "a.png")
    shutil.copy(src / "000001.png", images / "b.png")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--checkpoint",
            trained["last"],
            "--input",
            str(images),
            "--output",
            str(out),
            "--score-threshold",
            "0.0",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    with open(out / "detections.json") as f:
        results = json.load(f)  # a COCO results list
    with open(out / "images.json") as f:
        meta = json.load(f)
    assert [(e["id"], e["file_name"], e["width"]) for e in meta["images"]] == [(1, "a.png", 128), (2, "b.png", 128)]
    assert meta["categories"] == [
        {"id": 1, "name": "circle"},
        {"id": 2, "name": "rectangle"},
        {"id": 3, "name": "triangle"},
    ]
    assert meta["skipped"] == [] and results
    for r in results:
        assert r["image_id"] in (1, 2) and r["category_id"] in (1, 2, 3) and 0 <= r["score"] <= 1
        x, y, w, h = r["bbox"]
        assert 0 <= x <= x + w <= 128 and 0 <= y <= y + h <= 128
    for entry in meta["images"]:
        drawing = cv2.imread(str(out / entry["drawing"]))
        assert drawing is not None and drawing.shape == (512, 512, 3)  # 128 px enlarged x4 for legibility
    assert sorted(os.listdir(out)) == ["a.png", "b.png", "detections.json", "images.json"]
    # a high threshold keeps a subset
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                trained["last"],
                "--input",
                str(images / "a.png"),
                "--output",
                str(tmp_path / "out2"),
                "--score-threshold",
                "1.01",
            ]
        )
        == 0
    )
    with open(tmp_path / "out2" / "detections.json") as f:
        assert json.load(f) == []


def test_predict_errors_are_one_line(tmp_path, trained, capsys):
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "none.ckpt"),
                "--input",
                str(tmp_path),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("detkit predict: error:") and len(err.splitlines()) == 1
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                trained["last"],
                "--input",
                str(tmp_path / "missing"),
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "input not found" in capsys.readouterr().err


def test_fit_with_missing_data_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with open(os.path.join(CONFIGS, "faster_rcnn_r18_fpn_1x_coco.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["model"]["model_kwargs"] = {}
    (tmp_path / "coco.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(tmp_path / "coco.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "detkit fit: error: annotation file not found: data/coco/annotations/instances_train2017.json"


def test_evaluate_dispatch(trained, tmp_path, capsys):
    gt_path = trained["tmp"] / "shapes" / "val" / "annotations.json"
    with open(gt_path) as f:
        gt = json.load(f)
    perfect = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    preds = tmp_path / "preds.json"
    preds.write_text(json.dumps(perfect))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--annotations", str(gt_path), "--predictions", str(preds), "--output", str(out)]) == 0
    with open(out) as f:
        assert json.load(f)["stats"]["AP"] == pytest.approx(1.0)
    assert main(["evaluate", "--annotations", str(tmp_path / "no.json"), "--predictions", str(preds)]) == 2


def test_proposals_dispatch(tmp_path, capsys):
    code = main(
        [
            "proposals",
            "--annotations",
            str(tmp_path / "missing.json"),
            "--image-root",
            str(tmp_path),
            "--output",
            str(tmp_path / "c.bin"),
        ]
    )
    assert code == 2
    assert "annotations file not found" in capsys.readouterr().err
    assert main(["proposals", "--help"]) == 0
    assert "--max-proposals" in capsys.readouterr().out


def test_predict_files_with_a_mask_model(tmp_path, capsys):
    import numpy as np
    from pycocotools import mask as mask_utils
    from tiny_checkpoints import save_tiny_mask_checkpoint

    save_tiny_mask_checkpoint(tmp_path / "mask.ckpt")
    cv2.imwrite(str(tmp_path / "img.jpg"), np.random.default_rng(0).integers(0, 255, (96, 80, 3), dtype=np.uint8))
    args = ["predict", "--checkpoint", str(tmp_path / "mask.ckpt"), "--input", str(tmp_path / "img.jpg")]
    assert main([*args, "--output", str(tmp_path / "out"), "--score-threshold", "0"]) == 0
    with open(tmp_path / "out" / "detections.json") as f:
        results = json.load(f)
    with open(tmp_path / "out" / "images.json") as f:
        (entry,) = json.load(f)["images"]
    assert (entry["width"], entry["height"]) == (80, 96) and entry["drawing"] == "img.png"
    assert len(results) > 0 and all("segmentation" in r for r in results)  # an untrained head still scores > 0
    assert mask_utils.decode(results[0]["segmentation"]).shape == (96, 80)
    assert {r["category_id"] for r in results} <= {1, 2}


def test_out_of_memory_in_fit_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import torch

    from detkit.engine.module import DetectionModule

    def oom(self, batch, batch_idx):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(DetectionModule, "training_step", oom)
    assert main(["fit", "--config", _shapes_config(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("detkit fit: error: CUDA out of memory. Tried to allocate 2.00 GiB; use a smaller")
    assert "--data.batch_size" in err[-1] and "Traceback" not in "\n".join(err)


def test_checkpoint_and_config_mistakes_are_one_line_errors(trained, tmp_path, monkeypatch, capsys):
    import torch

    from detkit.engine.module import DetectionModule

    monkeypatch.chdir(trained["tmp"])
    config = trained["config"]
    ckpt = load_checkpoint(trained["last"])
    other = DetectionModule(model_name="faster_rcnn_tiny", num_classes=5)
    ckpt["state_dict"] = other.state_dict()
    ckpt["detkit"]["num_classes"] = 5
    torch.save(ckpt, tmp_path / "five.ckpt")
    cases = [
        (["validate", "--ckpt_path", str(tmp_path / "five.ckpt")], "the checkpoint (model_name=faster_rcnn_tiny, "
         "num_classes=5) does not fit model_name=faster_rcnn_tiny, num_classes=3"),
        (["fit", "--ckpt_path", str(tmp_path / "five.ckpt")], "does not fit"),
        (["fit", "--ckpt_path", trained["last"], "--trainer.max_epochs", "0"], "--trainer.max_epochs is 0"),
        (["fit", "--model.model_kwargs", '{"roi_batch_size_per_imag": 3}'], "roi_batch_size_per_imag"),
    ]  # fmt: skip
    for args, expected in cases:
        assert main([args[0], "--config", config, *args[1:]]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert expected in err[-1] and err[-1].startswith(f"detkit {args[0]}: error:"), err[-1]
        assert not any("Traceback" in line for line in err)


def test_predict_skips_unreadable_files_unless_strict(trained, tmp_path, capsys):
    images = tmp_path / "in"
    (images / "sub").mkdir(parents=True)
    shutil.copy(trained["tmp"] / "shapes" / "val" / "images" / "000000.png", images / "sub" / "a.png")
    (images / "b.jpg").write_bytes(b"\xff\xd8 truncated")
    args = ["predict", "--checkpoint", trained["last"], "--input", str(images), "--no-draw"]
    assert main([*args, "--output", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable file(s): b.jpg (truncated JPEG" in err
    with open(tmp_path / "out" / "images.json") as f:
        meta = json.load(f)
    assert [e["file_name"] for e in meta["images"]] == ["sub/a.png"] and meta["skipped"][0]["file_name"] == "b.jpg"
    with open(tmp_path / "out" / "detections.json") as f:
        assert {r["image_id"] for r in json.load(f)} == {2}  # ids 1..N in sorted file order: b.jpg 1, sub/a.png 2
    assert main([*args, "--output", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detkit predict: error: cannot read image") and "b.jpg" in err[0]
    assert not (tmp_path / "strict" / "detections.json").exists()


def test_predict_help_shows_both_forms(trained, capsys):
    assert main(["predict", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--checkpoint" in out and "--annotations" in out and "detkit predict --config CONFIG.yaml --ckpt_path" in out
    assert main(["predict", "--config", trained["config"], "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--ckpt_path" in out and "detkit predict --checkpoint CKPT --input DIR|FILE" in out


def test_predict_is_one_program_whose_model_source_picks_the_mode(tmp_path, capsys, monkeypatch):
    """One parser: --checkpoint / --onnx predict image files, --config runs LightningCLI; options of
    one mode given to the other are refused in one line, before anything is loaded."""
    import detkit.cli.lightning as lightning_cli

    cases = [
        ([], "give the model: --checkpoint CKPT or --onnx MODEL.onnx"),
        (["--checkpoint", "x.ckpt"], "--input and --output are required"),
        (["--checkpoint", "x.ckpt", "--onnx", "m.onnx", "--input", "a"], "not allowed with argument"),
        (["--onnx", "m.onnx", "--input", "a", "--output", "o", "--trainer.max_epochs", "1"], "LightningCLI options"),
        (["--checkpoint", "x.ckpt", "--input", "a", "--output", "o", "--ckpt_path", "y"], "--ckpt_path goes with"),
        (["--config", "shapes_faster_rcnn_tiny", "--input", "a", "--no-draw"], "--input, --no-draw: image-file"),
    ]
    for args, expected in cases:
        assert main(["predict", *args]) == 2, args
        assert expected in capsys.readouterr().err, args
    seen = []
    monkeypatch.setattr(lightning_cli, "run", lambda command, argv: seen.append((command, argv)) or 0)
    args = ["-c", "shapes_faster_rcnn_tiny", "--ckpt_path", "x.ckpt", "--trainer.limit_predict_batches", "1"]
    assert main(["predict", *args]) == 0
    assert seen == [("predict", args)]  # handed to LightningCLI as given
    assert main(["predict", "--help"]) == 0
    out = capsys.readouterr().out
    assert "model (exactly one)" in out and "image files (with --checkpoint or --onnx)" in out


def test_ckpt_path_hyper_parameters_fill_defaults_and_given_values_win(tmp_path, monkeypatch, capsys):
    """`--ckpt_path`: the checkpoint's model settings fill in what the config leaves at its defaults,
    a value given on the command line wins (and is said to); the path itself reaches the Trainer."""
    import functools

    import torch
    from lightning.pytorch import Trainer

    from detkit.cli.lightning import cli_main
    from detkit.engine.module import DetectionModule

    monkeypatch.chdir(tmp_path)
    module = DetectionModule(num_classes=3, num_visualize=5, lr=0.03, visualize_score_threshold=0.25)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "epoch": 0}
    torch.save(ckpt, tmp_path / "m.ckpt")
    called = {}

    @functools.wraps(Trainer.validate)  # LightningCLI reads the arguments from its signature
    def validate(self, **kwargs):
        called.update(kwargs)

    monkeypatch.setattr(Trainer, "validate", validate)
    args = ["validate", "--config", _shapes_config(tmp_path), "--ckpt_path", str(tmp_path / "m.ckpt")]
    cli = cli_main([*args, "--model.lr", "0.5"])
    hp = cli.model.hparams
    assert (hp.num_visualize, hp.visualize_score_threshold, hp.lr, hp.num_classes) == (5, 0.25, 0.5, 3)
    err = capsys.readouterr().err
    assert err.startswith("detkit validate: using the given ") and "model.lr=0.5 (checkpoint: 0.03)" in err
    assert called["ckpt_path"] == str(tmp_path / "m.ckpt") and cli.config.validate.ckpt_path == called["ckpt_path"]
