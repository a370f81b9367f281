"""A new user's own keypoint data (docs/custom_data.md, keypoint section): fit -> predict -> evaluate.

A generated COCO keypoint set: categories 12 and 3 (not 0..N-1) naming 3 keypoints with a left / right
pair and a skeleton; triangles and squares whose corners are the keypoints. Checks the validation's
`val/kp_AP`, that `predict --input` writes keypoints into its json and drawings, that `evaluate
--iou-type keypoints` on that json gives validation's keypoint AP, and that a keypoint model refuses
data without keypoints in one line that names the file.
"""

from __future__ import annotations

import csv
import json
import os

import cv2
import numpy as np
import pytest
import yaml

from detkit.cli import main
from detkit.io.checkpoint import checkpoint_info
from detkit.utils.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAMES = ["left_corner", "right_corner", "apex"]
CATEGORIES = [
    {"id": 12, "name": "triangle", "keypoints": NAMES, "skeleton": [[1, 2], [2, 3], [3, 1]]},
    {"id": 3, "name": "square", "keypoints": NAMES, "skeleton": [[1, 2], [2, 3], [3, 1]]},
]


def _make_split(root: str, split: str, num: int, rng) -> str:
    data = {"images": [], "annotations": [], "categories": CATEGORIES}
    for k in range(num):
        image_id = 1000 + 17 * k
        image = np.full((96, 128, 3), 80, np.uint8) + rng.integers(0, 20, (96, 128, 3), dtype=np.uint8)
        for j, cat in enumerate(rng.choice([3, 12], size=2)):
            s = int(rng.integers(28, 44))
            x, y = j * 64 + int(rng.integers(0, 64 - s)), int(rng.integers(0, 96 - s))
            if cat == 3:  # square: corners bottom-left, bottom-right, top-left as "apex"
                cv2.rectangle(image, (x, y), (x + s - 1, y + s - 1), (40, 40, 220), -1)
                points = [x, y + s, 2, x + s, y + s, 2, x, y, 1]
            else:
                tri = np.array([[x, y + s - 1], [x + s - 1, y + s - 1], [x + s // 2, y]], np.int32)
                cv2.fillPoly(image, [tri], (40, 200, 40))
                points = [x, y + s, 2, x + s, y + s, 2, x + s // 2 + 0.5, y, 2]
            data["annotations"].append({
                "id": image_id * 10 + j, "image_id": image_id, "category_id": int(cat), "bbox": [x, y, s, s],
                "area": s * s, "iscrowd": 0, "keypoints": points, "num_keypoints": 3,
            })  # fmt: skip
        name = f"{split}/img_{k:03d}.png"
        os.makedirs(os.path.join(root, "images", split), exist_ok=True)
        cv2.imwrite(os.path.join(root, "images", name), image)
        data["images"].append({"id": image_id, "file_name": name, "width": 128, "height": 96})
    path = os.path.join(root, f"{split}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _config(tmp_path, train_json: str, val_json: str, images: str, steps: int) -> str:
    with open(os.path.join(ROOT, "configs", "custom_coco_example.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["init_args"].update(
        train_images=images, train_annotations=train_json, val_images=images, val_annotations=val_json,
        num_classes=2, batch_size=4, num_workers=0,
    )  # fmt: skip
    cfg["model"].update(
        model_name="keypoint_rcnn_tiny", lr=0.002, warmup_steps=2, lr_milestones=[0.9], num_visualize=2,
        compute_val_loss=False,
    )  # fmt: skip
    cfg["model"]["model_kwargs"].update(num_keypoints=3, roi_batch_size_per_image=32)
    cfg["trainer"].update(max_epochs=-1, max_steps=steps, val_check_interval=steps, check_val_every_n_epoch=None,
                          enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    path = tmp_path / "kp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow
def test_fit_predict_evaluate_own_keypoint_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    root = str(tmp_path / "data")
    train_json, val_json = _make_split(root, "train", 16, rng), _make_split(root, "val", 4, rng)
    images = os.path.join(root, "images")
    assert main(["fit", "--config", _config(tmp_path, train_json, val_json, images, steps=8)]) == 0
    run = tmp_path / "runs" / "custom_coco" / "version_0"
    with open(run / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/kp_AP")]
    assert rows and float(rows[-1]["val/kp_AP"]) >= 0.0 and float(rows[-1]["val/AP"]) >= 0.0
    (eval_dir,) = (run / "eval").iterdir()
    with open(eval_dir / "metrics.json") as f:
        val_kp = json.load(f)["keypoints"]["stats"]
    assert len(list(eval_dir.glob("detections_*.png"))) == 2

    out = tmp_path / "predictions"
    last = str(run / "checkpoints" / "last.ckpt")
    info = checkpoint_info(load_checkpoint(last))  # what predict draws with: the categories' 1-based skeleton
    assert info.keypoint_names == NAMES and info.skeleton == [(0, 1), (1, 2), (2, 0)]
    args = ["--checkpoint", last, "--input", images, "--annotations", val_json]  # train images: left out
    assert main(["predict", *args, "--output", str(out), "--score-threshold", "0"]) == 0
    with open(out / "detections.json") as f:
        results = json.load(f)
    assert results and all(len(r["keypoints"]) == 9 and r["category_id"] in (3, 12) for r in results)
    assert len(list(out.glob("*.png"))) == 4

    metrics = tmp_path / "metrics.json"
    assert main(["evaluate", "--annotations", val_json, "--predictions", str(out), "--iou-type", "keypoints",
                 "--output", str(metrics)]) == 0  # fmt: skip
    with open(metrics) as f:
        stats = json.load(f)["stats"]
    assert stats["AP"] == pytest.approx(val_kp["AP"], abs=1e-6) and stats["AR"] == pytest.approx(val_kp["AR"])


def test_keypoint_model_refuses_data_without_keypoints(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = str(tmp_path / "data")
    train_json = _make_split(root, "train", 2, np.random.default_rng(1))
    with open(train_json) as f:
        data = json.load(f)
    data["categories"] = [{"id": c["id"], "name": c["name"]} for c in CATEGORIES]  # no keypoint names
    for a in data["annotations"]:
        del a["keypoints"], a["num_keypoints"]
    plain = os.path.join(root, "plain.json")
    with open(plain, "w") as f:
        json.dump(data, f)
    config = _config(tmp_path, plain, plain, os.path.join(root, "images"), steps=1)
    assert main(["fit", "--config", config]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"detkit fit: error: {plain}: keypoint_rcnn_tiny learns keypoints but no category of the training data "
        "names its 'keypoints' (COCO keypoint annotations are needed)"
    )
