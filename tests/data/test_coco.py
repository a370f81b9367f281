import json
import logging
import os

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from torchvision import tv_tensors

from detkit.data import (
    AnnotationFormatError,
    CocoDetection,
    ImageReadError,
    decode_segmentation,
    generate_shapes,
)

H, W = 20, 30


def _png(path, array):
    ok, buf = cv2.imencode(".png", array)
    assert ok
    path.write_bytes(buf.tobytes())


def make_coco(tmp_path, *, images=None, annotations=None, categories=None, extra_files=None):
    """Tiny COCO set: two colour images 30x20 with one box each, categories 3 and 7."""
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    for name in ("a.png", "b.png"):
        _png(root / name, np.full((H, W, 3), 100, np.uint8))
    for name, data in (extra_files or {}).items():
        (root / name).write_bytes(data) if isinstance(data, bytes) else _png(root / name, data)
    coco = {
        "images": images
        if images is not None
        else [
            {"id": 10, "file_name": "a.png", "width": W, "height": H},
            {"id": 11, "file_name": "b.png", "width": W, "height": H},
        ],
        "annotations": annotations
        if annotations is not None
        else [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 7,
                "bbox": [2, 3, 10, 5],
                "iscrowd": 0,
                "segmentation": [[2, 3, 12, 3, 12, 8, 2, 8]],
            },
            {
                "id": 2,
                "image_id": 11,
                "category_id": 3,
                "bbox": [0, 0, 4, 4],
                "iscrowd": 0,
                "segmentation": [[0, 0, 4, 0, 4, 4, 0, 4]],
            },
        ],
        "categories": categories if categories is not None else [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(coco))
    return str(root), str(ann_file)


def ann(aid, image_id=10, category_id=3, bbox=(1, 1, 5, 5), **kw):
    return {
        "id": aid,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "iscrowd": 0,
        **kw,
    }


def test_basic_target_and_category_mapping(tmp_path):
    ds = CocoDetection(*make_coco(tmp_path))
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.label_to_category_id == {1: 3, 2: 7} and ds.category_id_to_label == {
        3: 1,
        7: 2,
    }
    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert torch.allclose(image, torch.full_like(image, 100 / 255))
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes) and target["boxes"].canvas_size == (H, W)
    assert target["boxes"].tolist() == [[2, 3, 12, 8]]  # XYWH -> XYXY
    assert target["labels"].tolist() == [2] and target["labels"].dtype == torch.int64
    assert target["image_id"] == 10 and target["orig_size"] == (H, W)
    assert target["iscrowd"].tolist() == [0] and "masks" not in target
    assert ds.aspect_ratios() == [1.5, 1.5] and ds.image_ids == [10, 11]
    assert ds[-1][1]["image_id"] == 11
    with pytest.raises(IndexError):
        ds[2]


def test_masks_polygon_rle_and_uncompressed_rle(tmp_path):
    m = np.zeros((H, W), np.uint8)
    m[5:9, 10:20] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    compressed = {"size": [H, W], "counts": rle["counts"].decode()}
    flat = m.flatten(order="F")  # uncompressed RLE: run lengths of 0s/1s, column-major
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    uncompressed = {"size": [H, W], "counts": runs}
    anns = [
        ann(1, bbox=(10, 5, 10, 4), segmentation=compressed),
        ann(2, bbox=(10, 5, 10, 4), segmentation=uncompressed),
        ann(3, bbox=(2, 3, 10, 5), segmentation=[[2, 3, 12, 3, 12, 8, 2, 8]]),
    ]
    ds = CocoDetection(*make_coco(tmp_path, annotations=anns), with_masks=True)
    masks = ds[0][1]["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8 and masks.shape == (3, H, W)
    assert torch.equal(masks[0], torch.from_numpy(m)) and torch.equal(masks[1], torch.from_numpy(m))
    ys, xs = torch.nonzero(masks[2], as_tuple=True)
    assert (xs.min(), ys.min()) == (2, 3) and abs(xs.max().item() - 12) <= 1 and abs(ys.max().item() - 8) <= 1
    assert decode_segmentation(uncompressed, H, W).sum() == m.sum()
    assert len(ds[1][1]["masks"]) == 0  # image without annotations: [0, H, W]
    assert ds[1][1]["masks"].shape == (0, H, W)


def test_on_generated_shapes_boxes_match_masks(tmp_path):
    ann_file = generate_shapes(tmp_path, split="val", num_images=6, seed=0)
    ds = CocoDetection(tmp_path / "val" / "images", ann_file, with_masks=True)
    assert len(ds) == 6 and ds.num_classes == 3
    for i in range(len(ds)):
        image, t = ds[i]
        assert image.shape == (3, 128, 128) and 0 <= image.min() and image.max() <= 1
        assert len(t["boxes"]) == len(t["labels"]) == len(t["masks"]) >= 1
        assert set(t["labels"].tolist()) <= {1, 2, 3}
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            assert (box - extent).abs().max() <= 1


def test_clipping_and_zero_size_boxes(tmp_path, caplog):
    anns = [
        ann(1, bbox=(-3, 2, 10, 30)),
        ann(2, bbox=(4, 4, 0, 5)),
        ann(3, bbox=(4, 4, 3, 0)),
    ]
    with caplog.at_level(logging.WARNING, logger="detkit.data.coco"):
        ds = CocoDetection(*make_coco(tmp_path, annotations=anns))
    assert ds[0][1]["boxes"].tolist() == [[0, 2, 7, H]]
    assert ds.stats["clipped_boxes"] == 1 and ds.stats["degenerate_boxes"] == 2
    assert sum("2 boxes with zero width or height" in r.getMessage() for r in caplog.records) == 1


def test_crowd_excluded_by_default(tmp_path):
    anns = [ann(1), ann(2, bbox=(0, 0, 9, 9), iscrowd=1)]
    root, ann_file = make_coco(tmp_path, annotations=anns)
    ds = CocoDetection(root, ann_file)
    assert ds[0][1]["labels"].tolist() == [1] and ds.stats["crowd_excluded"] == 1
    ds = CocoDetection(root, ann_file, include_crowd=True)
    assert ds[0][1]["iscrowd"].tolist() == [0, 1] and len(ds[0][1]["boxes"]) == 2


def test_keep_empty_false_drops_images_without_non_crowd_annotations(tmp_path):
    anns = [ann(1), ann(2, image_id=11, iscrowd=1)]
    root, ann_file = make_coco(tmp_path, annotations=anns)
    assert len(CocoDetection(root, ann_file)) == 2
    ds = CocoDetection(root, ann_file, keep_empty=False, include_crowd=True)
    assert ds.image_ids == [10] and ds.stats["empty_images_dropped"] == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        (ann(5, bbox=(1, 1, -2, 3)), "negative box size"),
        (ann(5, bbox=(W + 1, 2, 5, 5)), "outside"),
        (ann(5, bbox=(-9, 2, 9, 5)), "outside"),  # touches x=0 only
        (ann(5, category_id=99), "unknown category id 99"),
        (ann(5, bbox=(1, 2, 3)), "malformed bbox"),
        (ann(5, segmentation=[[1, 1, 5, 1]]), "fewer than 3 points"),
        (ann(5, segmentation={"size": [H + 1, W], "counts": "abc"}), "RLE size"),
        (ann(5, image_id=12345), "unknown image id"),
    ],
)
def test_malformed_annotation(tmp_path, caplog, bad, message):
    root, ann_file = make_coco(tmp_path, annotations=[ann(1, segmentation=[[1, 1, 5, 1, 5, 5]]), bad])
    with pytest.raises(ValueError, match=message) as info:
        CocoDetection(root, ann_file, with_masks=True)
    assert isinstance(info.value, AnnotationFormatError)
    assert "annotation id 5" in str(info.value) and ann_file in str(info.value)
    with caplog.at_level(logging.WARNING, logger="detkit.data.coco"):
        ds = CocoDetection(root, ann_file, with_masks=True, skip_invalid=True)
    assert ds.stats["invalid_annotations"] == 1 and ds[0][1]["labels"].tolist() == [1]
    assert any("skipped 1 invalid annotations" in r.getMessage() for r in caplog.records)


def test_polygon_not_checked_without_masks(tmp_path):
    ds = CocoDetection(*make_coco(tmp_path, annotations=[ann(1, segmentation=[[1, 1, 5, 1]])]))
    assert len(ds[0][1]["boxes"]) == 1


@pytest.mark.parametrize("kind", ["missing", "corrupt", "truncated", "wrong_size"])
def test_unreadable_image(tmp_path, caplog, kind):
    good = np.full((H, W, 3), 50, np.uint8)
    _, buf = cv2.imencode(".png", good)
    files = {
        "corrupt": {"bad.png": b"\x89PNG\r\n\x1a\n garbage garbage"},
        "truncated": {"bad.png": buf.tobytes()[:-30]},
        "wrong_size": {"bad.png": np.zeros((H + 2, W, 3), np.uint8)},
        "missing": {},
    }[kind]
    images = [
        {"id": 1, "file_name": "bad.png", "width": W, "height": H},
        {"id": 2, "file_name": "a.png", "width": W, "height": H},
    ]
    root, ann_file = make_coco(tmp_path, images=images, annotations=[ann(1, image_id=2)], extra_files=files)
    ds = CocoDetection(root, ann_file)
    with pytest.raises(ImageReadError) as info:
        ds[0]
    assert info.value.path == os.path.join(root, "bad.png")
    ds = CocoDetection(root, ann_file, skip_invalid=True, substitute_unreadable=True)
    with caplog.at_level(logging.WARNING, logger="detkit.data.coco"):
        assert ds[0][1]["image_id"] == 2  # training: deterministic fallback, next index
        assert ds[0][1]["image_id"] == 2
    assert ds.stats["unreadable_images"] == 1
    assert sum("bad.png" in r.getMessage() for r in caplog.records) == 1
    assert CocoDetection(root, ann_file, skip_invalid=True)[0] is None  # skipped (evaluation)


def test_all_images_unreadable(tmp_path):
    root, ann_file = make_coco(
        tmp_path,
        images=[{"id": 1, "file_name": "nope.png", "width": W, "height": H}],
        annotations=[],
    )
    with pytest.raises(RuntimeError, match="no readable image"):
        CocoDetection(root, ann_file, skip_invalid=True, substitute_unreadable=True)[0]


@pytest.mark.parametrize("channels", ["gray", "rgba", "16bit"])
def test_image_kinds_give_rgb_float(tmp_path, channels):
    arr = {
        "gray": np.full((H, W), 200, np.uint8),
        "rgba": np.dstack([np.full((H, W, 3), 200, np.uint8), np.zeros((H, W), np.uint8)]),
        "16bit": np.full((H, W, 3), 200 * 257, np.uint16),
    }[channels]
    images = [{"id": 1, "file_name": "x.png", "width": W, "height": H}]
    root, ann_file = make_coco(tmp_path, images=images, annotations=[], extra_files={"x.png": arr})
    image, _ = CocoDetection(root, ann_file)[0]
    assert image.shape == (3, H, W) and torch.allclose(image, torch.full_like(image, 200 / 255))


@pytest.mark.parametrize("name", ["../outside.png", "sub/../../outside.png", "ABS"])
def test_path_escape(tmp_path, name):
    _png(tmp_path / "outside.png", np.zeros((H, W, 3), np.uint8))
    if name == "ABS":
        name = str(tmp_path / "outside.png")
    images = [
        {"id": 1, "file_name": name, "width": W, "height": H},
        {"id": 2, "file_name": "a.png", "width": W, "height": H},
    ]
    root, ann_file = make_coco(tmp_path, images=images, annotations=[])
    with pytest.raises(ValueError, match="escapes the image root") as info:
        CocoDetection(root, ann_file)
    assert "image id 1" in str(info.value)
    ds = CocoDetection(root, ann_file, skip_invalid=True)
    assert ds.image_ids == [2] and ds.stats["invalid_images"] == 1
    ds = CocoDetection(root, ann_file, allow_outside_root=True)
    assert ds.image_ids == [1, 2] and ds[0][0].shape == (3, H, W)


def test_duplicate_image_ids(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": W, "height": H},
        {"id": 1, "file_name": "b.png", "width": W, "height": H},
    ]
    root, ann_file = make_coco(tmp_path, images=images, annotations=[])
    for skip in (False, True):
        with pytest.raises(ValueError, match="duplicate image id 1"):
            CocoDetection(root, ann_file, skip_invalid=skip)


@pytest.mark.parametrize("content", ["{not json", '{"images": [], "annotations": []}', "[1, 2]"])
def test_not_coco_json(tmp_path, content):
    root, _ = make_coco(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    for skip in (False, True):
        with pytest.raises(ValueError, match="not a COCO annotation file") as info:
            CocoDetection(root, bad, skip_invalid=skip)
        assert str(bad) in str(info.value)


def test_transforms_receive_uint8_image_and_tv_tensors(tmp_path):
    seen = {}

    def transforms(image, target):
        seen["image"], seen["target"] = image, target
        return image, target

    ds = CocoDetection(*make_coco(tmp_path), transforms=transforms, with_masks=True)
    ds[0]
    assert isinstance(seen["image"], tv_tensors.Image) and seen["image"].dtype == torch.uint8
    assert isinstance(seen["target"]["masks"], tv_tensors.Mask)


def test_check_files_names_missing_images_without_decoding(tmp_path):
    images = [{"id": 10 + k, "file_name": f"sub/{k}.png", "width": W, "height": H} for k in range(5)]
    root, ann_file = make_coco(tmp_path, images=images, annotations=[])
    os.makedirs(os.path.join(root, "sub"))
    for k in (0, 2):
        _png(tmp_path / "images" / "sub" / f"{k}.png", np.zeros((H, W, 3), np.uint8))
    assert len(CocoDetection(root, ann_file)) == 5  # not checked unless asked
    with pytest.raises(
        FileNotFoundError, match=r"3 image file\(s\) not found under .*: sub/1.png, sub/3.png, sub/4.png"
    ):
        CocoDetection(root, ann_file, check_files=True)
    ds = CocoDetection(root, ann_file, check_files=True, skip_invalid=True)
    assert ds.image_ids == [10, 12] and ds.stats["missing_files"] == 3


def test_missing_files_is_fast_for_many_files(tmp_path):
    from detkit.data.coco import missing_files

    folder = tmp_path / "many"
    folder.mkdir()
    for k in range(2000):
        (folder / f"{k:06d}.jpg").touch()
    paths = [str(folder / f"{k:06d}.jpg") for k in range(2010)]  # one listing, no stat per file
    assert missing_files(paths) == paths[2000:]
    assert missing_files([str(tmp_path / "nowhere" / "a.png")]) == [str(tmp_path / "nowhere" / "a.png")]


def test_exif_orientation_is_applied_and_a_rotated_size_mismatch_says_so(tmp_path):
    from PIL import Image

    array = np.zeros((H, W, 3), np.uint8)
    array[:, :5] = 255  # a white band on the left
    exif = Image.Image().getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    root, ann_file = make_coco(
        tmp_path, images=[{"id": 1, "file_name": "r.jpg", "width": W, "height": H}], annotations=[]
    )
    Image.fromarray(array).save(os.path.join(root, "r.jpg"), exif=exif.tobytes(), quality=95)
    from detkit.data import read_image_rgb

    shown = read_image_rgb(os.path.join(root, "r.jpg"))
    assert shown.shape == (W, H, 3) and shown[:5].mean() > 200 and shown[-5:].mean() < 50  # band now on top
    with pytest.raises(ImageReadError, match="EXIF orientation rotates it"):
        CocoDetection(root, ann_file)[0]


def test_worker_errors_are_the_same_one_line(tmp_path):
    from detkit.data import collate_detection

    root, ann_file = make_coco(tmp_path)
    (tmp_path / "images" / "b.png").write_bytes(b"not an image")
    ds = CocoDetection(root, ann_file)
    messages = []
    for workers in (0, 1):
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=workers, collate_fn=collate_detection)
        with pytest.raises(ImageReadError) as info:
            next(iter(loader))
        messages.append(str(info.value))
    assert messages[0] == messages[1] and len(messages[1].splitlines()) == 1 and "b.png" in messages[1]
