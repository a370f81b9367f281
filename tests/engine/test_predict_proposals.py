"""`detkit predict` with models that take external proposals (R-CNN, Fast R-CNN): selective search with the
settings of the model's training, or a `detkit predict --proposals CACHE`; the same detections as the Python API."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from detkit.cli import main
from detkit.data import read_image_rgb
from detkit.engine.module import DetectionModule
from detkit.evaluation.results import detections_to_coco_results
from detkit.io import build_model_from_checkpoint
from detkit.proposals.cache import compute_proposals
from detkit.utils.checkpoint import load_checkpoint

# not the library defaults (fast, 2000, resize_to None): the test sees that these are the ones used
TRAINING = {"mode": "fast", "max_proposals": 300, "min_size": None, "resize_to": 64, "seed": 0}
DATA_MAX_PROPOSALS = 60  # the datamodule's cap on what the cache serves: predict keeps the same top boxes


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three generated shapes images (PNG) of different sizes in a folder."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate([(96, 128), (120, 90), (100, 100)]):
        image = np.full((h, w, 3), 90, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(image, (8, 10), (8 + 30, 10 + 30), (40, 40, 220), -1)
        cv2.circle(image, (w - 25, h - 25), 15, (40, 200, 40), -1)
        cv2.fillPoly(image, [np.array([[10, h - 5], [40, h - 5], [25, h - 35]], np.int32)], (230, 40, 40))
        cv2.imwrite(str(root / f"img_{k}.png"), image)
    return root


def _files(folder) -> list[tuple[int, str]]:
    """(image id, path): ids 1..N in sorted file order, as `detkit predict` numbers them without annotations."""
    return [(k + 1, str(folder / name)) for k, name in enumerate(sorted(os.listdir(folder)))]


@pytest.fixture(scope="module")
def training_cache(images, tmp_path_factory):
    """A `detkit proposals` cache of the images, made with the TRAINING settings (image ids 1..N)."""
    path = tmp_path_factory.mktemp("cache") / "proposals_train.bin"
    compute_proposals(_files(images), path, workers=1, progress=False, **TRAINING)
    return path


def _checkpoint(path, model_name: str, train_proposals=None) -> str:
    """A checkpoint as `detkit fit` writes it, of a module whose datamodule read `train_proposals`."""
    torch.manual_seed(0)
    module = DetectionModule(model_name=model_name, num_classes=3)
    module.class_names = ["square", "disc", "triangle"]
    datamodule = SimpleNamespace(
        train_proposals=None if train_proposals is None else str(train_proposals),
        max_proposals=DATA_MAX_PROPOSALS,
        class_names=module.class_names,
        label_to_category_id={1: 1, 2: 2, 3: 3},
    )
    module._trainer = SimpleNamespace(datamodule=datamodule)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    torch.save(ckpt, path)
    return str(path)


def _predict(args: list[str], out) -> list[dict]:
    assert main(["predict", *args, "--output", str(out), "--no-draw"]) == 0
    with open(out / "detections.json") as f:
        return json.load(f)


def _python_api(checkpoint: str, images, proposals_path) -> list[dict]:
    """`model.predict(image, proposals=...)` of every image, as COCO results (ids 1..N)."""
    settings = dict(TRAINING, max_proposals=DATA_MAX_PROPOSALS)
    cache = compute_proposals(_files(images), proposals_path, workers=1, progress=False, **settings)
    model, info = build_model_from_checkpoint(checkpoint)
    label_map = info.label_map.label_to_category_id
    results = []
    for image_id, path in _files(images):
        image = torch.from_numpy(read_image_rgb(path)).permute(2, 0, 1).float().div(255)
        (det,) = model.predict([image], proposals=[torch.from_numpy(cache.get(image_id))])
        results += detections_to_coco_results([image_id], [det], label_to_category_id=label_map)
    return results


def _assert_same(a: list[dict], b: list[dict]) -> None:
    key = lambda r: (r["image_id"], r["category_id"], -r["score"], *r["bbox"])  # noqa: E731
    a, b = sorted(a, key=key), sorted(b, key=key)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert (x["image_id"], x["category_id"]) == (y["image_id"], y["category_id"])
        np.testing.assert_allclose(x["bbox"], y["bbox"], atol=1e-3)
        np.testing.assert_allclose(x["score"], y["score"], atol=1e-5)


@pytest.mark.parametrize("model_name", ["fast_rcnn_tiny", "rcnn_tiny"])
def test_predict_computes_proposals_with_the_training_settings(model_name, images, training_cache, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "m.ckpt", model_name, training_cache)
    recorded = load_checkpoint(ckpt)["detkit"]["proposals"]
    assert recorded == dict(TRAINING, max_proposals=DATA_MAX_PROPOSALS)  # capped by the datamodule
    workers = ["--proposal-workers", "2"] if model_name == "fast_rcnn_tiny" else ["--proposal-workers", "1"]
    got = _predict(["--checkpoint", ckpt, "--input", str(images), *workers], tmp_path / "out")
    assert "selective search" in capsys.readouterr().err  # the progress bar
    _assert_same(got, _python_api(ckpt, images, tmp_path / "api.bin"))

    # the training cache gives the same boxes (ids and file names match), at most max_proposals of them
    cached = _predict(["--checkpoint", ckpt, "--input", str(images), "--proposals", str(training_cache)],
                      tmp_path / "cached")  # fmt: skip
    _assert_same(cached, got)
    assert "warning" not in capsys.readouterr().err


def test_checkpoint_without_settings_uses_the_defaults_and_says_so(images, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "m.ckpt", "fast_rcnn_tiny")
    assert load_checkpoint(ckpt)["detkit"]["proposals"] is None
    got = _predict(["--checkpoint", ckpt, "--input", str(images / "img_1.png"), "--proposal-workers", "1"],
                   tmp_path / "out")  # fmt: skip
    err = capsys.readouterr().err
    assert "records no selective-search settings" in err
    assert "mode=fast, max_proposals=2000, min_size=None, resize_to=None, seed=0" in err
    assert len(got) > 0 and {r["image_id"] for r in got} == {1}


def test_a_cache_without_an_input_image_is_a_one_line_error(images, tmp_path, capsys):
    files = _files(images)
    partial = tmp_path / "partial.bin"
    compute_proposals(files[:2], partial, workers=1, progress=False, **TRAINING)
    ckpt = _checkpoint(tmp_path / "m.ckpt", "fast_rcnn_tiny", partial)
    args = ["predict", "--checkpoint", ckpt, "--input", str(images), "--output", str(tmp_path / "out")]
    assert main([*args, "--proposals", str(partial)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no proposals for input image img_2.png (1 of 3 input images missing" in err[0], err
    assert main([*args, "--proposals", str(tmp_path / "none.bin")]) != 0
    assert "proposal cache not found" in capsys.readouterr().err
    faster = _checkpoint(tmp_path / "faster.ckpt", "faster_rcnn_tiny")
    assert main([*args[:2], faster, *args[3:], "--proposals", str(partial)]) != 0
    assert "has an RPN and takes no external proposals" in capsys.readouterr().err
    # a cache made with other settings than the training proposals: used, with a warning naming them
    other = tmp_path / "other.bin"
    compute_proposals(files, other, workers=1, progress=False, **dict(TRAINING, resize_to=None))
    assert main([*args, "--proposals", str(other), "--no-draw"]) == 0
    assert "resize_to=None (model: 64)" in capsys.readouterr().err


@pytest.mark.slow  # an ONNX export (~15 s)
def test_onnx_fast_rcnn_predicts_with_the_recorded_settings(images, training_cache, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ckpt = _checkpoint(tmp_path / "m.ckpt", "fast_rcnn_tiny", training_cache)
    assert main(["export", "--checkpoint", ckpt, "--output", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    got = _predict(["--onnx", str(tmp_path / "m.onnx"), "--input", str(images), "--proposal-workers", "1"],
                   tmp_path / "out")  # fmt: skip
    assert "warning" not in capsys.readouterr().err  # the export carries the training settings
    _assert_same(got, _python_api(ckpt, images, tmp_path / "api.bin"))


def test_fit_records_the_settings_of_the_training_cache(tmp_path, monkeypatch, capsys):
    """A real `detkit fit` of Fast R-CNN on a proposal cache: the checkpoint records its settings, and
    `detkit predict --input` then gives the detections of a val cache made with the same settings."""
    import yaml

    from detkit.data import ensure_shapes

    root = tmp_path / "shapes"
    ensure_shapes(root, {"train": 8, "val": 3})
    caches = {}
    for split in ("train", "val"):
        caches[split] = str(tmp_path / f"proposals_{split}.bin")
        assert main(["proposals", "--annotations", str(root / split / "annotations.json"), "--image-root",
                     str(root / split / "images"), "--output", caches[split], "--workers", "1", "--quiet",
                     "--resize-to", "64", "--max-proposals", "300"]) == 0  # fmt: skip
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "configs", "fast_rcnn_tiny_shapes.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["init_args"].update(root=str(root), num_train=8, num_val=3, batch_size=4, max_proposals=50,
                                    train_proposals=caches["train"], val_proposals=caches["val"])  # fmt: skip
    cfg["trainer"].update(max_epochs=1, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    cfg["model"].update(warmup_steps=1, num_visualize=0)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", str(tmp_path / "cfg.yaml")]) == 0
    ckpt = str(tmp_path / "runs" / "fast_rcnn_tiny_shapes" / "version_0" / "checkpoints" / "last.ckpt")
    recorded = load_checkpoint(ckpt)["detkit"]["proposals"]
    assert recorded == {"mode": "fast", "max_proposals": 50, "min_size": None, "resize_to": 64, "seed": 0}
    capsys.readouterr()
    args = ["--checkpoint", ckpt, "--input", str(root / "val" / "images")]
    got = _predict([*args, "--proposal-workers", "1"], tmp_path / "out")
    _assert_same(got, _predict([*args, "--proposals", caches["val"]], tmp_path / "cached"))
    assert "warning" not in capsys.readouterr().err
