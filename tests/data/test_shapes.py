import json
import os
from pathlib import Path

import numpy as np
import pytest

from detkit.data import (
    SHAPES_CLASSES,
    ShapesDataset,
    decode_segmentation,
    ensure_shapes,
    generate_shapes,
)
from detkit.data.shapes import ShapesConfig, _box_iou


@pytest.fixture(scope="module")
def shapes20(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes20")
    ann_file = generate_shapes(root, split="val", num_images=20, seed=3)
    with open(ann_file) as f:
        return root, json.load(f)


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path, shapes20):
    root, _ = shapes20
    a = generate_shapes(tmp_path / "a", split="val", num_images=3, seed=3)
    b = generate_shapes(tmp_path / "b", split="val", num_images=3, seed=4)
    first = (tmp_path / "a" / "val" / "images" / "000000.png").read_bytes()
    assert first == (root / "val" / "images" / "000000.png").read_bytes()
    assert first != (tmp_path / "b" / "val" / "images" / "000000.png").read_bytes()
    ref = json.loads((root / "val" / "annotations.json").read_text())
    got = json.loads(Path(a).read_text())
    assert got["annotations"] == [x for x in ref["annotations"] if x["image_id"] <= 3]
    assert json.loads(Path(b).read_text())["annotations"] != got["annotations"]


def test_worker_processes_give_identical_data(tmp_path):
    a = generate_shapes(tmp_path / "a", split="train", num_images=6, seed=1, num_workers=0)
    b = generate_shapes(tmp_path / "b", split="train", num_images=6, seed=1, num_workers=2)
    assert Path(a).read_bytes() == Path(b).read_bytes()
    for i in range(6):
        name = f"train/images/{i:06d}.png"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_constraints(shapes20):
    _, coco = shapes20
    cfg = ShapesConfig()
    assert [c["name"] for c in coco["categories"]] == list(SHAPES_CLASSES)
    assert len(coco["images"]) == 20
    per_image = {im["id"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        per_image[ann["image_id"]].append(ann)
    seen_classes = set()
    for im in coco["images"]:
        assert (im["width"], im["height"]) == (128, 128)
        anns = per_image[im["id"]]
        assert 1 <= len(anns) <= 4
        boxes = []
        for a in anns:
            seen_classes.add(a["category_id"])
            assert a["iscrowd"] == 0 and a["category_id"] in (1, 2, 3)
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= 128 and y + h <= 128
            assert max(w, h) <= cfg.max_size
            if a["visible_fraction"] == 1.0:  # unoccluded: full size range holds
                assert min(w, h) >= cfg.min_size
            assert a["visible_fraction"] >= cfg.min_visible
            m = decode_segmentation(a["segmentation"], 128, 128)
            assert a["area"] == m.sum() > 0
            ys, xs = np.nonzero(m)  # bbox is the visible mask's extent
            assert [
                xs.min(),
                ys.min(),
                xs.max() + 1 - xs.min(),
                ys.max() + 1 - ys.min(),
            ] == a["bbox"]
            boxes.append((x, y, x + w, y + h))
        for i in range(len(boxes)):
            for j in range(i):
                assert _box_iou(boxes[i], boxes[j]) <= cfg.max_iou
        masks = [decode_segmentation(a["segmentation"], 128, 128).astype(bool) for a in anns]
        assert not np.any(np.sum(masks, axis=0) > 1)  # visible masks never overlap
    assert seen_classes == {1, 2, 3}


def test_ensure_shapes_reuses_cache_and_regenerates_on_change(tmp_path):
    out = ensure_shapes(tmp_path, {"train": 4, "val": 2}, image_size=64, seed=0)
    assert set(out) == {"train", "val"} and all(os.path.isfile(p) for p in out.values())
    first_png = tmp_path / "train" / "images" / "000000.png"
    mtimes = (os.stat(out["train"]).st_mtime_ns, os.stat(first_png).st_mtime_ns)
    assert ensure_shapes(tmp_path, {"train": 4, "val": 2}, image_size=64, seed=0) == out
    assert (os.stat(out["train"]).st_mtime_ns, os.stat(first_png).st_mtime_ns) == mtimes
    # different parameters: regenerated in place, no temp folders left
    ensure_shapes(tmp_path, {"train": 5}, image_size=64, seed=0)
    assert len(json.loads(Path(out["train"]).read_text())["images"]) == 5
    assert len(os.listdir(tmp_path / "train" / "images")) == 5
    assert sorted(p for p in os.listdir(tmp_path) if not p.startswith(".shapes.lock")) == ["train", "val"]


def test_ensure_shapes_regenerates_incomplete_cache(tmp_path):
    ensure_shapes(tmp_path, {"val": 3}, image_size=64)
    os.remove(tmp_path / "val" / "images" / "000001.png")
    ensure_shapes(tmp_path, {"val": 3}, image_size=64)
    assert (tmp_path / "val" / "images" / "000001.png").is_file()


def test_shapes_dataset(tmp_path):
    ds = ShapesDataset(tmp_path, "val", num_images=3, image_size=64, with_masks=True)
    assert ds.num_classes == 3 and ds.class_names == list(SHAPES_CLASSES) and len(ds) == 3
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and target["masks"].shape[1:] == (64, 64)
    assert ds.aspect_ratios() == [1.0, 1.0, 1.0]
