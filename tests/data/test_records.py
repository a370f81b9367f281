"""Compact record storage (RecordStore) and CocoDetection built on it, against pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from detkit.data import CocoDetection
from detkit.data.records import ByteBuffer, Record, RecordStore, clean_coco_store

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_data  # noqa: E402


def _records():
    return [
        Record(
            image_id=7, file_name="a.jpg", path="/r/a.jpg", height=4, width=6,
            boxes=np.array([[0, 0, 2, 2], [1, 1, 3, 4]], np.float32), labels=np.array([1, 3]),
            iscrowd=np.array([0, 1], np.uint8), segmentations=[[[0, 0, 2, 0, 2, 2]], {"size": [4, 6], "counts": b"x"}],
        ),
        Record(
            image_id=3, file_name="ü b.png", path="/r/ü b.png", height=5, width=5,
            boxes=np.zeros((0, 4), np.float32), labels=np.zeros(0, np.int64), iscrowd=np.zeros(0, np.uint8),
        ),
        Record(
            image_id=9, file_name="c.jpg", path="/r/c.jpg", height=2, width=8,
            boxes=np.array([[1, 0, 5, 2]], np.float32), labels=np.array([2]), iscrowd=np.array([0], np.uint8),
            segmentations=[[[1, 0, 5, 0, 5, 2]]],
        ),
    ]  # fmt: skip


def _assert_same(a: Record, b: Record) -> None:
    assert (a.image_id, a.file_name, a.path, a.height, a.width) == (b.image_id, b.file_name, b.path, b.height, b.width)
    for name, dtype in (("boxes", np.float32), ("labels", np.int64), ("iscrowd", np.uint8)):
        got = getattr(a, name)
        assert got.dtype == dtype and np.array_equal(got, getattr(b, name))
    assert a.segmentations == b.segmentations


def test_round_trip_select_and_entries():
    records = _records()
    entries = {7: {"id": 7, "file_name": "a.jpg", "x": [1]}, 3: {"id": 3}, 9: {"id": 9, "w": 8}}
    store = RecordStore.from_records(records, with_segmentations=True, image_entries=entries)
    assert len(store) == 3 and store.starts.tolist() == [0, 2, 2, 3]
    for got, want in zip(store, records):
        _assert_same(got, want)
    _assert_same(store[-1], records[2])
    assert store.image_entry(0) == entries[7] and store.aspect_ratios() == [6 / 4, 1.0, 8 / 2]
    picked = store.select([2, 0])
    _assert_same(picked[0], records[2])
    _assert_same(picked[1], records[0])
    assert picked.image_entry(1) == entries[7]
    with pytest.raises(IndexError, match="out of range"):
        store[3]
    # records are copies: editing one leaves the store alone
    store[0].boxes[:] = -1
    assert store[0].boxes.min() == 0
    # no segmentations / entries stored; empty store
    bare = RecordStore.from_records(records)
    assert bare[0].segmentations == [] and bare.segmentations is None
    with pytest.raises(KeyError):
        bare.image_entry(0)
    empty = RecordStore.from_records([])
    assert len(empty) == 0 and empty.boxes.shape == (0, 4) and empty.aspect_ratios() == []


def test_storage_is_flat_arrays():
    """A handful of numpy arrays and buffers, however many images: nothing per image."""
    store = RecordStore.from_records(_records() * 1000, with_segmentations=True)
    containers = [v for v in vars(store).values() if v is not None]
    assert len(containers) == 10
    for value in containers:
        if isinstance(value, ByteBuffer):
            value = [value.data, value.offsets]
        for array in value if isinstance(value, list) else [value]:
            assert isinstance(array, np.ndarray) and array.dtype != object
    assert store.nbytes < 150 * len(store)  # ~125 bytes per image here, pickled polygons included
    again = pickle.loads(pickle.dumps(store))  # spawned DataLoader workers receive a pickle
    _assert_same(again[1500], store[1500])


def test_coco_detection_matches_pycocotools(tmp_path):
    """detkit's targets on a generated COCO-like file equal the annotations pycocotools indexes."""
    ann_file = tmp_path / "coco.json"
    counts = bench_data.generate(str(ann_file), scale=0.0005, seed=1)
    ds = CocoDetection(tmp_path, ann_file, with_masks=True)
    assert not hasattr(ds, "coco") and isinstance(ds._records, RecordStore)
    with contextlib.redirect_stdout(io.StringIO()):
        ref = COCO(str(ann_file))
    assert len(ds) == counts["images"] == len(ref.imgs) and ds.image_ids == sorted(ref.imgs)
    assert ds.stats["annotations"] == counts["annotations"] == len(ref.anns)
    cat_ids = sorted(ref.cats)
    for index, image_id in enumerate(ds.image_ids):
        rec = ds._records[index]
        anns = ref.imgToAnns[image_id]
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        assert np.allclose(rec.boxes, np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1))
        assert rec.labels.tolist() == [cat_ids.index(a["category_id"]) + 1 for a in anns]
        assert rec.segmentations == [a["segmentation"] for a in anns]
        assert ds.image_info(index) == ref.imgs[image_id]
    json.loads(ann_file.read_text())  # valid JSON


@pytest.mark.slow
def test_bench_data_runs_at_one_percent(tmp_path):
    """The COCO-scale benchmark end to end at 1% size (the full run is in RESULTS.md)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_data.py"), "--scale", "0.01", "--workers", "2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["images"] == round(bench_data.COCO_TRAIN_IMAGES * 0.01)
    for r in report["results"].values():
        assert r["images"] == report["images"] and len(r["worker_pss_mib"]) == 2
        assert r["build_s"] > 0 and r["total_pss_mib"] > 0


def _edge_case_file(tmp_path) -> Path:
    """Generated file plus zero-size, partly outside and crowd boxes and images without boxes."""
    ann_file = tmp_path / "coco.json"
    bench_data.generate(str(ann_file), scale=0.0005, seed=2)
    data = json.loads(ann_file.read_text())
    images = data["images"]
    anns = data["annotations"] = [a for a in data["annotations"] if a["image_id"] != images[-1]["id"]]
    for ann in anns:  # first image: only crowd boxes; last image: nothing
        if ann["image_id"] == images[0]["id"]:
            ann["iscrowd"] = 1
    rest = [a for a in anns if a["image_id"] != images[0]["id"]]
    rest[0]["bbox"][2] = 0  # zero width: dropped
    rest[1]["bbox"][0] = -3.5  # partly outside: clipped
    rest[2]["bbox"] = [1, 2, 1e4, 5]  # clipped at the right edge
    rest[3]["iscrowd"] = 1
    rest[4]["bbox"] = [0, 0, 0, 0]
    rest[4]["iscrowd"] = 1  # crowd and zero size: excluded first
    images.append({"id": 5, "file_name": "sub/x.jpg", "height": 10, "width": 20, "extra": [1, "y"]})
    ann_file.write_text(json.dumps(data))
    return ann_file


@pytest.mark.parametrize(
    "keep_empty,include_crowd,with_masks",
    [(True, False, False), (False, False, True), (False, True, False), (True, True, True)],
)
def test_vectorised_build_equals_per_annotation_checks(tmp_path, monkeypatch, keep_empty, include_crowd, with_masks):
    ann_file = _edge_case_file(tmp_path)
    kwargs = dict(keep_empty=keep_empty, include_crowd=include_crowd, with_masks=with_masks)
    fast = CocoDetection(tmp_path, ann_file, **kwargs)
    data = json.loads(ann_file.read_text())
    labels = fast.category_id_to_label
    assert clean_coco_store(data, image_root=str(tmp_path), category_id_to_label=labels, **kwargs) is not None
    monkeypatch.setattr("detkit.data.coco.clean_coco_store", lambda *a, **k: None)
    slow = CocoDetection(tmp_path, ann_file, **kwargs)
    assert fast.stats == slow.stats and fast.image_ids == slow.image_ids
    assert fast.stats["degenerate_boxes"] == 1 + include_crowd and fast.stats["clipped_boxes"] >= 2
    assert (fast.stats["crowd_excluded"] == 0) == include_crowd
    assert (fast.stats["empty_images_dropped"] > 0) == (not keep_empty)
    for i in range(len(fast)):
        _assert_same(fast._records[i], slow._records[i])
        assert fast.image_info(i) == slow.image_info(i)
    assert fast.aspect_ratios() == slow.aspect_ratios()
    assert (fast._records.segmentations is not None) == with_masks


def test_rle_masks_take_the_checking_path(tmp_path):
    ann_file = tmp_path / "coco.json"
    bench_data.generate(str(ann_file), scale=0.0002, seed=4)
    data = json.loads(ann_file.read_text())
    image = next(i for i in data["images"] if i["id"] == data["annotations"][0]["image_id"])
    rle = {"size": [image["height"], image["width"]], "counts": [5, 10, image["height"] * image["width"] - 15]}
    data["annotations"][0]["segmentation"] = rle
    ann_file.write_text(json.dumps(data))
    labels = CocoDetection(tmp_path, ann_file).category_id_to_label
    kwargs = dict(image_root=str(tmp_path), category_id_to_label=labels, keep_empty=True, include_crowd=False)
    assert clean_coco_store(data, **kwargs, with_masks=True) is None
    assert clean_coco_store(data, **kwargs, with_masks=False) is not None
    ds = CocoDetection(tmp_path, ann_file, with_masks=True)
    index = ds.image_ids.index(image["id"])
    assert ds._records[index].segmentations[0] == rle
    assert ds._target(ds._records[index])["masks"][0].sum() == 10  # (no image file to read)


def test_files_with_problems_take_the_checking_path(tmp_path):
    """Anything the vectorised checks do not accept is left to the per-annotation checks and
    their messages (here: a bool category id, a box outside the image, a missing file)."""
    ann_file = tmp_path / "coco.json"
    bench_data.generate(str(ann_file), scale=0.0003, seed=3)
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["category_id"] = True
    ann_file.write_text(json.dumps(data))
    ds = CocoDetection(tmp_path, ann_file, skip_invalid=True)
    assert ds.stats["invalid_annotations"] == 1 and ds.stats["annotations"] == len(data["annotations"]) - 1
    data["annotations"][0]["category_id"] = 1
    data["annotations"][1]["bbox"] = [5000, 5000, 3, 3]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"annotation id {data['annotations'][1]['id']}: box .* lies outside"):
        CocoDetection(tmp_path, ann_file)
    data["annotations"][1]["bbox"] = [5, 5, 3, 3]
    ann_file.write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match="not found"):
        CocoDetection(tmp_path, ann_file, check_files=True)
