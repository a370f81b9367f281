import json
import os

import cv2
import numpy as np
import pytest
import torch

from detkit.data import (
    VOC_CLASSES,
    CocoDetection,
    ImageReadError,
    VocDetection,
    build_transforms,
    collate_detection,
)


def _xml(width, height, objects, extra=""):
    objs = "".join(
        f"<object><name>{name}</name><difficult>{int(diff)}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for name, b, diff in objects
    )
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"{extra}<annotation><filename>x.jpg</filename>{size}{objs}</annotation>"


def make_voc(tmp_path, entries, image_set="train"):
    """entries: name -> (width, height, objects) or raw xml string (image 40x30 then)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    for name, spec in entries.items():
        if isinstance(spec, str):
            xml, (w, h) = spec, (40, 30)
        else:
            w, h, objects = spec
            xml = _xml(w, h, objects)
        (tmp_path / "Annotations" / f"{name}.xml").write_text(xml)
        cv2.imwrite(
            str(tmp_path / "JPEGImages" / f"{name}.jpg"),
            np.full((h, w, 3), 128, np.uint8),
        )
    (tmp_path / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(entries) + "\n")
    return tmp_path


def test_voc_boxes_labels_and_difficult(tmp_path):
    root = make_voc(tmp_path, {
        "000005": (40, 30, [("dog", (1, 1, 10, 20), False), ("cat", (5, 6, 40, 30), True)]),
        "000007": (30, 40, [("person", (3, 4, 50, 8), False)]),  # xmax past the edge: clipped
    })  # fmt: skip
    ds = VocDetection(root, "train")
    assert ds.num_classes == 20 and ds.class_names == list(VOC_CLASSES) and len(ds) == 2
    image, t = ds[0]
    assert image.shape == (3, 30, 40) and image.dtype == torch.float32
    assert t["boxes"].tolist() == [[0, 0, 10, 20]]  # 1-based inclusive -> 0-based XYXY
    assert t["labels"].tolist() == [VOC_CLASSES.index("dog") + 1]
    assert t["image_id"] == 5 and t["orig_size"] == (30, 40)
    assert ds[1][1]["boxes"].tolist() == [[2, 3, 30, 8]] and ds.stats["clipped_boxes"] == 1
    assert ds.stats["difficult_excluded"] == 1 and ds.aspect_ratios() == [
        40 / 30,
        30 / 40,
    ]

    ds = VocDetection(root, "train", use_difficult=True)
    t = ds[0][1]
    assert t["boxes"].tolist() == [[0, 0, 10, 20], [4, 5, 40, 30]] and t["difficult"].tolist() == [False, True]


def test_to_coco_json_round_trip(tmp_path):
    root = make_voc(tmp_path / "voc", {
        "2008_000008": (40, 30, [("dog", (1, 1, 10, 20), False), ("cat", (5, 6, 40, 30), True)]),
        "2008_000009": (40, 30, []),
    })  # fmt: skip
    ds = VocDetection(root, "train")
    path = ds.to_coco_json(tmp_path / "out" / "gt.json")
    assert ds.ann_file == path
    with open(path) as f:
        coco = json.load(f)
    assert [im["id"] for im in coco["images"]] == [2008000008, 2008000009]
    assert [a["bbox"] for a in coco["annotations"]] == [[0, 0, 10, 20], [4, 5, 36, 25]]
    assert [a["iscrowd"] for a in coco["annotations"]] == [
        0,
        1,
    ]  # difficult -> ignored region
    gt = CocoDetection(root / "JPEGImages", path, include_crowd=True)
    assert gt.class_names == list(VOC_CLASSES) and gt.image_ids == ds.image_ids
    assert gt[0][1]["boxes"].tolist() == [[0, 0, 10, 20], [4, 5, 40, 30]]
    assert gt[0][1]["labels"].tolist() == [
        VOC_CLASSES.index("dog") + 1,
        VOC_CLASSES.index("cat") + 1,
    ]


@pytest.mark.parametrize(
    "objects, message",
    [
        ([("unicorn", (1, 1, 5, 5), False)], "unknown class name"),
        ([("dog", (9, 1, 5, 5), False)], "negative box size"),
        ([("dog", (50, 1, 60, 5), False)], "outside"),
    ],
)
def test_malformed_objects(tmp_path, objects, message):
    root = make_voc(tmp_path, {"a": (40, 30, [("cat", (1, 1, 5, 5), False), *objects])})
    with pytest.raises(ValueError, match=message) as info:
        VocDetection(root)
    assert "a.xml" in str(info.value)
    ds = VocDetection(root, skip_invalid=True)
    assert ds[0][1]["labels"].tolist() == [VOC_CLASSES.index("cat") + 1] and ds.stats["invalid_annotations"] == 1


@pytest.mark.parametrize(
    "xml, message",
    [
        ("<annotation><size><width>4", "malformed XML"),
        ("<annotation><filename>x</filename></annotation>", "missing <size>"),
        ('<!DOCTYPE a [<!ENTITY e "x">]>' + _xml(40, 30, []), "DTD"),
        (
            _xml(40, 30, []).replace("<width>40</width>", "<width>abc</width>"),
            "not a number",
        ),
    ],
)
def test_malformed_xml(tmp_path, xml, message):
    root = make_voc(tmp_path, {"bad": xml, "good": (40, 30, [("dog", (1, 1, 5, 5), False)])})
    with pytest.raises(ValueError, match=message):
        VocDetection(root)
    ds = VocDetection(root, skip_invalid=True)
    assert len(ds) == 1 and ds.stats["invalid_images"] == 1


def _truncated_jpeg(path, w=40, h=30):
    """A JPEG whose header (size) is intact but whose data ends early: found only when decoded."""
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (h, w, 3), np.uint8))
    path.write_bytes(buf.tobytes()[: len(buf) // 2])


def test_unreadable_image_raises(tmp_path):
    root = make_voc(tmp_path, {"a": (40, 30, []), "b": (40, 30, [])})
    _truncated_jpeg(root / "JPEGImages" / "a.jpg")
    with pytest.raises(ImageReadError, match="a.jpg"):
        VocDetection(root)[0]


@pytest.mark.parametrize("kind", ["voc", "coco"])
def test_unreadable_image_is_skipped_and_counted_never_substituted(tmp_path, kind):
    """An evaluation must see each readable image once: the next image standing in for an
    unreadable one would put its detections into the evaluation twice."""
    root = make_voc(tmp_path, {f"00000{i}": (40, 30, [("dog", (1, 1, 10, 20), False)]) for i in (1, 2, 3)})
    _truncated_jpeg(root / "JPEGImages" / "000002.jpg")

    def build(**kw):
        if kind == "voc":
            return VocDetection(root, skip_invalid=True, **kw)
        gt = VocDetection(root).to_coco_json(tmp_path / "gt.json")
        return CocoDetection(root / "JPEGImages", gt, skip_invalid=True, **kw)

    ds = build()
    assert len(ds) == 3 and ds[1] is None and ds.stats["unreadable_images"] == 1
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_detection)
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert ids == [1, 3] and ds.stats["unreadable_images"] == 1  # counted once
    # training keeps its batch size: the next readable image stands in
    assert build(substitute_unreadable=True)[1][1]["image_id"] == 3


def test_xml_size_is_checked_against_the_image_header_when_parsed(tmp_path):
    root = make_voc(tmp_path, {"a": (40, 30, [("dog", (1, 1, 10, 20), False)]), "b": (40, 30, [])})
    cv2.imwrite(str(root / "JPEGImages" / "a.jpg"), np.zeros((40, 30, 3), np.uint8))  # 30 wide, 40 high
    with pytest.raises(ValueError, match=r"a\.xml: <size> 40x30 differs from the image .*a\.jpg \(30x40\)"):
        VocDetection(root)  # at construction, before any image is decoded
    ds = VocDetection(root, skip_invalid=True)
    assert ds.image_ids == [2] and ds.stats["invalid_images"] == 1  # "b" only: nothing to substitute

    (root / "JPEGImages" / "a.jpg").unlink()
    with pytest.raises(ImageReadError, match=r"a\.jpg.*file not found"):
        VocDetection(root)
    ds = VocDetection(root, skip_invalid=True)
    assert ds.image_ids == [2] and ds.stats["unreadable_images"] == 1


@pytest.mark.parametrize("kind", ["voc", "coco"])
def test_image_resized_after_construction_names_its_annotation_and_id(tmp_path, kind):
    """Both data sets read a sample the same way: a size that no longer matches the annotation
    names the image, the annotation file and the image id, and is skipped alike."""
    root = make_voc(tmp_path, {"000001": (40, 30, []), "000002": (40, 30, [("dog", (1, 1, 10, 20), False)])})
    if kind == "voc":
        ds, skipping, annotation = VocDetection(root), VocDetection(root, skip_invalid=True), r"000001\.xml"
    else:
        gt = VocDetection(root).to_coco_json(tmp_path / "gt.json")
        ds, skipping = CocoDetection(root / "JPEGImages", gt), CocoDetection(root / "JPEGImages", gt, skip_invalid=True)
        annotation = r"gt\.json"
    cv2.imwrite(str(root / "JPEGImages" / "000001.jpg"), np.zeros((20, 40, 3), np.uint8))
    with pytest.raises(
        ImageReadError, match=rf"000001\.jpg.*size 40x20 differs from 40x30 in .*{annotation} \(image id 1\)$"
    ):
        ds[0]
    assert skipping[0] is None and skipping[1][1]["image_id"] == 2 and skipping.stats["unreadable_images"] == 1


def test_missing_image_set(tmp_path):
    make_voc(tmp_path, {"a": (40, 30, [])})
    with pytest.raises(FileNotFoundError, match="val.txt"):
        VocDetection(tmp_path, "val")


def test_voc_with_transforms_and_collate(tmp_path):
    objects = [("dog", (1, 1, 10, 20), False), ("cat", (5, 6, 40, 30), True)]
    root = make_voc(tmp_path, {"a": (40, 30, objects)})
    tf = build_transforms(True, min_size=None, hflip_prob=1.0)
    ds = VocDetection(root, use_difficult=True, transforms=tf)
    images, targets = collate_detection([ds[0]])
    assert images[0].shape == (3, 30, 40)
    assert targets[0]["boxes"].tolist() == [
        [30, 0, 40, 20],
        [0, 5, 36, 30],
    ]  # x -> 40 - x
    assert targets[0]["difficult"].tolist() == [False, True]


def test_voc_data_module_writes_the_validation_ground_truth_under_the_run_folder(tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from detkit.engine import VocDataModule

    root = make_voc(tmp_path / "VOC2007", {"000001": (40, 30, [("dog", (1, 1, 10, 20), True)])}, image_set="test")
    trainer = Trainer(accelerator="cpu", logger=CSVLogger(str(tmp_path / "runs"), name="voc"))
    dm = VocDataModule(root=str(root), num_workers=0)
    dm.trainer = trainer
    dm.setup("validate")
    assert dm.val_ann_file == os.path.join(trainer.log_dir, "voc_gt", "VOC2007_test.json")
    with open(dm.val_ann_file) as f:
        ann = json.load(f)["annotations"][0]
    assert ann["difficult"] == 1 and ann["iscrowd"] == 1  # VOC metric: difficult; COCO metric: ignore region
