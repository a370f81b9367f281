"""Data modules: lazy construction, loaders, evaluation ground truth, DDP sampler injection."""

import json
import os

import cv2
import numpy as np
import pytest
import torch
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import DistributedSampler

from detkit.engine.datamodule import CocoDataModule, ShapesDataModule, VocDataModule, _DatasetGroupedBatchSampler


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    dm = ShapesDataModule(root=root, num_train=10, num_val=4, batch_size=4, with_masks=True)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_construction_touches_no_files(tmp_path):
    root = tmp_path / "not_yet"
    dm = ShapesDataModule(root=str(root))
    assert dm.num_classes == 3 and dm.class_names == ["circle", "rectangle", "triangle"]
    assert dm.val_ann_file is None and dm.label_to_category_id is None
    coco = CocoDataModule("missing/train", "missing/train.json", "missing/val", "missing/val.json", num_classes=80)
    assert coco.num_classes == 80
    VocDataModule(root=str(tmp_path / "voc"))
    assert not root.exists() and not (tmp_path / "voc").exists()
    with pytest.raises(FileNotFoundError, match="missing/val.json"):
        CocoDataModule("a", "a.json", "b", "missing/val.json").num_classes
    with pytest.raises(FileNotFoundError, match="annotation file not found"):
        coco.setup("fit")


def test_shapes_loaders(shapes):
    images, targets = next(iter(shapes.train_dataloader()))
    assert len(images) == 4 and images[0].shape == (3, 128, 128) and images[0].dtype == torch.float32
    assert {"boxes", "labels", "masks", "image_id"} <= set(targets[0])
    assert targets[0]["masks"].dtype == torch.uint8
    val_batches = list(shapes.val_dataloader())
    assert [t["image_id"] for _, ts in val_batches for t in ts] == [1, 2, 3, 4]  # unshuffled, json ids
    assert os.path.isfile(shapes.val_ann_file)
    assert shapes.label_to_category_id == {1: 1, 2: 2, 3: 3}
    assert len(shapes.test_dataloader()) == len(shapes.val_dataloader())


def test_coco_module_grouped_sampler_resizing_and_ddp_injection(shapes, tmp_path):
    # the shapes splits are COCO folders: a 6-image training json over the same images
    with open(shapes.train_dataset.ann_file) as f:
        data = json.load(f)
    img_dir = os.path.join(os.path.dirname(shapes.train_dataset.ann_file), "images")
    ann = tmp_path / "train.json"
    data["images"] = data["images"][:6]
    for k, im in enumerate(data["images"]):
        im["file_name"] = f"{k:06d}.png"
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] <= 6]
    ann.write_text(json.dumps(data))
    dm = CocoDataModule(
        img_dir,
        str(ann),
        img_dir,
        shapes.val_ann_file,
        batch_size=2,
        num_workers=0,
        num_classes=3,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler, _DatasetGroupedBatchSampler)
    images, _ = next(iter(loader))
    assert images[0].shape[1:] == (128, 128)  # the model's transform resizes, not the data pipeline
    val_images, _ = next(iter(dm.val_dataloader()))
    assert val_images[0].shape[1:] == (128, 128)
    # Lightning re-creates the batch sampler around a DistributedSampler under DDP
    dist_loader = _update_dataloader(loader, DistributedSampler(dm.train_dataset, num_replicas=2, rank=1, shuffle=True))
    assert isinstance(dist_loader.batch_sampler, _DatasetGroupedBatchSampler)
    assert isinstance(dist_loader.batch_sampler.sampler, DistributedSampler)
    seen = [i for batch in dist_loader.batch_sampler for i in batch]
    assert len(seen) == 3 and set(seen) <= set(range(6))

    wrong = CocoDataModule(img_dir, str(ann), img_dir, shapes.val_ann_file, num_classes=5)
    with pytest.raises(ValueError, match="num_classes=5"):
        wrong.setup("validate")


def _write_voc(root):
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub))
    objects = {
        "000001": [("dog", 0, (10, 20, 60, 70))],
        "000002": [("cat", 0, (5, 5, 40, 30)), ("dog", 1, (50, 10, 90, 60))],
    }
    for name, objs in objects.items():
        cv2.imwrite(os.path.join(root, "JPEGImages", f"{name}.jpg"), np.full((80, 100, 3), 128, np.uint8))
        xml = "".join(
            f"<object><name>{c}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for c, d, b in objs
        )
        with open(os.path.join(root, "Annotations", f"{name}.xml"), "w") as f:
            f.write(
                f"<annotation><filename>{name}.jpg</filename><size><width>100</width><height>80</height>"
                f"<depth>3</depth></size>{xml}</annotation>"
            )
    for split in ("trainval", "test"):
        with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
            f.write("000001\n000002\n")


def test_voc_module_writes_coco_ground_truth(tmp_path):
    root = tmp_path / "VOC2007"
    _write_voc(str(root))
    dm = VocDataModule(root=str(root), batch_size=2, num_workers=0, min_size=40, gt_dir=str(tmp_path / "gt"))
    assert dm.num_classes == 20
    dm.setup("fit")
    assert dm.val_ann_file == str(tmp_path / "gt" / "VOC2007_test.json")
    with open(dm.val_ann_file) as f:
        gt = json.load(f)
    assert len(gt["images"]) == 2 and [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 1]  # difficult -> crowd
    assert dm.label_to_category_id[12] == 12
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == 2 and images[0].shape[1:] == (80, 100)  # resized by the model, not here
    _, val_targets = next(iter(dm.val_dataloader()))
    assert [len(t["boxes"]) for t in val_targets] == [1, 1]  # difficult objects left out of the targets


def test_data_resize_settings_must_agree_with_the_model(shapes):
    from types import SimpleNamespace

    from detkit.models import build_model

    model = build_model("faster_rcnn_tiny", num_classes=3)
    dm = CocoDataModule("i", "t.json", "v.json", "v.json", min_size=128, max_size=213)
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(model=model))
    dm._check_resize(dm.min_size, dm.max_size)  # agrees: no error
    with pytest.raises(ValueError, match=r"data min_size=800 differs from the model's min_size=128"):
        dm._check_resize(800, None)
    with pytest.raises(ValueError, match=r"data min_size=\[96, 128\] differs from the model's min_size=128: .*remove"):
        dm._check_resize([96, 128], None)
    multi_scale = build_model("faster_rcnn_tiny", num_classes=3, min_size=(96, 128))
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(model=multi_scale))
    dm._check_resize([96, 128], None)  # a YAML list equals the builder's tuple
