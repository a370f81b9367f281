"""The documented own-data workflow (docs/custom_data.md): fit -> validate -> predict -> evaluate.

A generated COCO data set unlike the shapes set: category ids 12 / 3 / 7 listed out of order,
image ids far from 0..N-1 (above 2**31), file names in sub-folders, PNG and JPEG files, an
image without objects and a 2000x1500 image. Checks that every path gives the data set's ids
and the same detections (the model's transform owns the image scale), and that the AP of
`predict --input` -> `evaluate` equals validation's.
"""

from __future__ import annotations

import json
import os
import warnings

import cv2
import numpy as np
import pytest
import yaml

from detkit.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CATEGORIES = [{"id": 12, "name": "triangle"}, {"id": 3, "name": "square"}, {"id": 7, "name": "disc"}]
COLOURS = {3: (220, 40, 40), 7: (40, 200, 40), 12: (40, 40, 230)}  # RGB per category
FIRST_ID = 2**31 + 1000  # image ids above int32


def _draw(image: np.ndarray, cat: int, x: int, y: int, s: int) -> list[float]:
    colour = COLOURS[cat][::-1]  # OpenCV draws BGR
    if cat == 3:
        cv2.rectangle(image, (x, y), (x + s - 1, y + s - 1), colour, -1)
    elif cat == 7:
        cv2.circle(image, (x + s // 2, y + s // 2), s // 2, colour, -1)
    else:
        cv2.fillPoly(image, [np.array([[x, y + s - 1], [x + s - 1, y + s - 1], [x + s // 2, y]], np.int32)], colour)
    return [float(x), float(y), float(s), float(s)]


def _make_split(root, split: str, num: int, rng, big: bool = False) -> tuple[str, dict]:
    """Images under root/images/<split>/<sub>/ and a COCO json (file_name relative to root/images)."""
    data = {"images": [], "annotations": [], "categories": CATEGORIES}
    specs = [(96, 128, 1)] * num + ([(1500, 2000, 12)] if big else []) + [(96, 128, 0)]  # last: no objects
    for k, (h, w, scale) in enumerate(specs):
        image_id = FIRST_ID + 7919 * k + (0 if split == "train" else 3)
        image = np.full((h, w, 3), 90, np.uint8) + rng.integers(0, 20, (h, w, 3), dtype=np.uint8)
        cats = [] if scale == 0 else list(rng.choice([3, 7, 12], size=2, replace=False))
        for j, cat in enumerate(cats):
            s = int(rng.integers(24, 40)) * scale
            x = j * w // 2 + int(rng.integers(0, w // 2 - s))
            y = int(rng.integers(0, h - s))
            box = _draw(image, int(cat), x, y, s)
            data["annotations"].append(
                {"id": image_id * 10 + j, "image_id": image_id, "category_id": int(cat), "bbox": box,
                 "area": box[2] * box[3], "iscrowd": 0}
            )  # fmt: skip
        ext = ".jpg" if k % 4 == 3 else ".png"
        name = f"{split}/{'big' if scale > 1 else f'part{k % 2}'}/img_{k:03d}{ext}"
        os.makedirs(os.path.dirname(os.path.join(root, "images", name)), exist_ok=True)
        cv2.imwrite(os.path.join(root, "images", name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        data["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
    data["images"].reverse()  # not in id order either
    path = os.path.join(root, "annotations", f"{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)
    return path, data


def _by_image(results: list[dict]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = {}
    for r in results:
        out.setdefault(r["image_id"], []).append((r["category_id"], *(round(v, 2) for v in r["bbox"]), r["score"]))
    return {k: sorted(v) for k, v in out.items()}


def _assert_same_detections(a: list[dict], b: list[dict]) -> None:
    da, db = _by_image(a), _by_image(b)
    assert da.keys() == db.keys()
    for image_id in da:
        assert len(da[image_id]) == len(db[image_id]), image_id
        np.testing.assert_allclose(np.array(da[image_id]), np.array(db[image_id]), atol=0.02, err_msg=str(image_id))


def test_documented_workflow_on_a_custom_coco_data_set(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    data_root = tmp_path / "data" / "my_data"
    train_json, _ = _make_split(str(data_root), "train", 24, rng)
    val_json, val = _make_split(str(data_root), "val", 5, rng, big=True)

    # the config to copy, with the four data paths set (and a short schedule for the test)
    with open(os.path.join(ROOT, "configs", "custom_coco_example.yaml")) as f:
        cfg = yaml.safe_load(f)
    images = str(data_root / "images")
    cfg["data"]["init_args"].update(
        train_images=images, train_annotations=train_json, val_images=images, val_annotations=val_json,
        batch_size=8, num_workers=0, val_batch_size=1,
    )  # fmt: skip
    cfg["model"].update(lr=0.003, warmup_steps=5, lr_milestones=[0.9], num_visualize=3)
    cfg["trainer"].update(max_epochs=-1, max_steps=30, val_check_interval=30, check_val_every_n_epoch=None,
                          enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    config = tmp_path / "my_data.yaml"
    config.write_text(yaml.safe_dump(cfg))

    assert main(["fit", "--config", str(config)]) == 0
    runs = tmp_path / "runs" / "custom_coco"
    last = str(runs / "version_0" / "checkpoints" / "last.ckpt")
    capsys.readouterr()

    # validate, with an explicit flag that differs from the checkpoint's: it wins and is saved
    assert main(["validate", "--config", str(config), "--ckpt_path", last, "--model.num_visualize", "1"]) == 0
    assert "model.num_visualize=1" in capsys.readouterr().err
    (eval_dir,) = (runs / "version_1" / "eval").iterdir()
    assert len(list(eval_dir.glob("detections_*.png"))) == 1
    with open(runs / "version_1" / "config.yaml") as f:
        assert yaml.safe_load(f)["model"]["num_visualize"] == 1
    with open(eval_dir / "metrics.json") as f:
        val_stats = json.load(f)["bbox"]["stats"]
    with open(eval_dir / "predictions.json") as f:
        val_results = json.load(f)

    assert main(["predict", "--config", str(config), "--ckpt_path", last]) == 0
    with open(runs / "version_2" / "predictions.json") as f:
        config_results = json.load(f)

    out = tmp_path / "predictions"
    args = ["--checkpoint", last, "--input", images, "--annotations", val_json, "--output", str(out), "--no-draw"]
    assert main(["predict", *args]) == 0
    assert "not in" in capsys.readouterr().err  # the training images under the same folder are left out
    with open(out / "detections.json") as f:
        file_results = json.load(f)
    with open(out / "images.json") as f:
        meta = json.load(f)

    # ids: the data set's own, through every path
    val_ids = {img["id"] for img in val["images"]}
    assert {e["id"] for e in meta["images"]} == val_ids and max(val_ids) > 2**31
    assert {(e["id"], e["file_name"]) for e in meta["images"]} == {(i["id"], i["file_name"]) for i in val["images"]}
    assert meta["categories"] == [
        {"id": 3, "name": "square"},
        {"id": 7, "name": "disc"},
        {"id": 12, "name": "triangle"},
    ]
    assert file_results and {r["category_id"] for r in file_results} <= {3, 7, 12}
    big_id = next(i["id"] for i in val["images"] if i["width"] == 2000)
    assert any(r["image_id"] == big_id for r in file_results)
    # one image scale: the same detections from validate, predict --config and predict --input
    _assert_same_detections(val_results, config_results)
    _assert_same_detections(val_results, file_results)

    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", "--annotations", val_json, "--predictions", str(out / "detections.json"),
                 "--output", str(metrics)]) == 0  # fmt: skip
    with open(metrics) as f:
        stats = json.load(f)["stats"]
    assert stats["AP"] == pytest.approx(val_stats["AP"], abs=1e-6) and stats["AP50"] == pytest.approx(val_stats["AP50"])
    assert stats["AP50"] > 0.05  # the model learnt something: the equality above is not 0 == 0


def _config(tmp_path, train_json: str, val_json: str, images: str, **data) -> str:
    with open(os.path.join(ROOT, "configs", "custom_coco_example.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["init_args"].update(
        train_images=images, train_annotations=train_json, val_images=images, val_annotations=val_json,
        **{"batch_size": 4, "num_workers": 0, **data},
    )  # fmt: skip
    cfg["model"].update(warmup_steps=1, num_visualize=0, compute_val_loss=False)
    cfg["trainer"].update(max_epochs=-1, max_steps=2, val_check_interval=2, check_val_every_n_epoch=None,
                          enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_negatives_empty_splits_and_missing_files(tmp_path, monkeypatch, capsys):
    from detkit.engine.datamodule import CocoDataModule

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    root = tmp_path / "data"
    images = str(root / "images")
    train_json, train = _make_split(str(root), "train", 3, rng)  # 3 annotated images + 1 without objects
    dm = CocoDataModule(images, train_json, images, train_json, num_workers=0)
    dm.setup("fit")
    assert len(dm.train_dataset) == 3  # default: images without objects are dropped from training
    dm = CocoDataModule(images, train_json, images, train_json, num_workers=0, keep_empty=True)
    dm.setup("fit")
    assert len(dm.train_dataset) == 4 and min(len(dm.train_dataset[i][1]["boxes"]) for i in range(4)) == 0

    no_objects = root / "no_objects.json"
    no_objects.write_text(json.dumps({**train, "annotations": []}))
    with pytest.raises(ValueError, match="no training image left"):
        CocoDataModule(images, str(no_objects), images, train_json, num_workers=0).setup("fit")

    # a validation set without objects: a warning, and no AP-named checkpoint from AP = -1
    with warnings.catch_warnings(record=True) as record:  # recorded, not re-emitted (pytest.warns re-emits the rest)
        warnings.simplefilter("always")
        assert main(["fit", "--config", _config(tmp_path, train_json, str(no_objects), images)]) == 0
    said = " ".join(str(w.message) for w in record if issubclass(w.category, UserWarning))
    assert "has no (non-crowd) annotations" in said and "val/AP is -1" in said
    assert sorted(os.listdir(tmp_path / "runs" / "custom_coco" / "version_0" / "checkpoints")) == ["last.ckpt"]

    # a missing image file is named at setup, before the first training step
    os.remove(os.path.join(images, train["images"][0]["file_name"]))
    assert main(["fit", "--config", _config(tmp_path, train_json, train_json, images)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "1 image file(s) not found" in err[-1] and train["images"][0]["file_name"] in err[-1]
    assert not (tmp_path / "runs" / "custom_coco" / "version_1" / "checkpoints").exists()


def test_errors_in_dataloader_workers_are_the_same_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "data"
    images = str(root / "images")
    train_json, train = _make_split(str(root), "train", 3, np.random.default_rng(2))
    with open(os.path.join(images, train["images"][1]["file_name"]), "wb") as f:
        f.write(b"\x89PNG corrupt")
    lines = []
    for workers in (0, 1):
        config = _config(tmp_path, train_json, train_json, images, num_workers=workers)
        assert main(["fit", "--config", config]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert not any("Traceback" in line for line in err)
        lines.append(err[-1])
    assert lines[0] == lines[1] and lines[0].startswith("detkit fit: error: cannot read image")
    assert train["images"][1]["file_name"] in lines[0]


def test_tiny_models_keep_the_shapes_scale_and_resize_large_images():
    import torch

    from detkit.models import build_model

    transform = build_model("faster_rcnn_tiny", num_classes=3).transform
    image = torch.rand(3, 128, 128)
    batch = transform([image])
    assert batch.image_sizes.tolist() == [[128, 128]]  # the shapes images (make train) pass unchanged
    torch.testing.assert_close(batch.tensor[0], (image - transform.mean[0]) / transform.std[0])
    assert transform([torch.rand(3, 1500, 2000)]).image_sizes.tolist() == [[128, 170]]
    multi = build_model("faster_rcnn_tiny", num_classes=3, min_size=[96, 112, 128]).transform  # multi-scale
    torch.manual_seed(0)
    drawn = {tuple(s) for s in multi.train()([torch.rand(3, 64, 64) for _ in range(12)]).image_sizes.tolist()}
    assert drawn == {(96, 96), (112, 112), (128, 128)}
    assert multi.eval()([torch.rand(3, 64, 80)]).image_sizes.tolist() == [[128, 160]]
