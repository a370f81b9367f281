"""Bad input that the per-package tests (tests/data, tests/models) do not already cover.

Every case must end in a documented error naming what was wrong (ValueError and its
subclasses, ImageReadError), a skip that is counted, or a correct result -- never an error
from deep inside pycocotools or torch, a crash of the process, or silently corrupt data.
"""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

import detkit.models.fast_rcnn  # noqa: F401  (registers fast_rcnn_*)
from detkit.data import AnnotationFormatError, CocoDetection
from detkit.models import build_model

H, W = 20, 30


def _coco(tmp_path, annotations, *, images=None):
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    cv2.imwrite(str(root / "a.png"), np.full((H, W, 3), 90, np.uint8))
    data = {
        "images": images or [{"id": 1, "file_name": "a.png", "width": W, "height": H}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}],
    }
    ann_file = tmp_path / "ann.json"
    ann_file.write_text(json.dumps(data))
    return str(root), str(ann_file)


GOOD = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 0}


def _without(key, **changes):
    ann = {**GOOD, "id": 5, **changes}
    ann.pop(key, None)
    return ann


# ------------------------------------------------------------------------------ COCO annotations
@pytest.mark.parametrize(
    "bad",
    [
        _without("image_id"),
        _without("category_id"),
        _without(None, image_id=[1]),
        _without(None, category_id=[1]),
        _without(None, category_id={"id": 1}),
    ],
    ids=["no_image_id", "no_category_id", "list_image_id", "list_category_id", "dict_category_id"],
)
def test_annotation_without_usable_ids_names_file_and_annotation(tmp_path, caplog, bad):
    root, ann_file = _coco(tmp_path, [GOOD, bad])
    with pytest.raises(AnnotationFormatError) as info:  # today: KeyError / TypeError inside pycocotools
        CocoDetection(root, ann_file)
    assert ann_file in str(info.value) and "annotation id 5" in str(info.value)
    with caplog.at_level(logging.WARNING, logger="detkit.data.coco"):
        ds = CocoDetection(root, ann_file, skip_invalid=True)
    assert ds.stats["invalid_annotations"] == 1 and ds[0][1]["labels"].tolist() == [1]


def test_polygon_with_absurd_coordinates_is_rejected_before_rasterising(tmp_path):
    """pycocotools rasterises polygons in int32 at 5x: coordinates around 1e9 crash the process
    (segmentation fault) and around 1e7 allocate gigabytes. Such a polygon in a 30x20 image is
    malformed and must be refused when the data set is built, like one with < 3 points."""
    huge = [[1.0, 1.0, 10.0, 1.0, 1e12, 1e12]]
    root, ann_file = _coco(
        tmp_path, [{**GOOD, "segmentation": [[2, 2, 10, 2, 10, 10]]}, {**GOOD, "id": 5, "segmentation": huge}]
    )
    with pytest.raises(AnnotationFormatError, match="annotation id 5"):
        CocoDetection(root, ann_file, with_masks=True)
    ds = CocoDetection(root, ann_file, with_masks=True, skip_invalid=True)
    assert ds.stats["invalid_annotations"] == 1
    masks = ds[0][1]["masks"]
    assert masks.shape == (1, H, W) and set(masks.unique().tolist()) <= {0, 1}


def test_compressed_rle_of_the_wrong_length_is_rejected(tmp_path):
    """An RLE whose runs do not add up to H*W (here: taken from a 10x10 mask) decodes into
    uninitialised memory (values outside {0, 1}) in pycocotools; it must be refused up front."""
    small = np.zeros((10, 10), np.uint8, order="F")
    small[2:5, 2:5] = 1
    counts = mask_utils.encode(small)["counts"].decode("ascii")
    bad = {**GOOD, "id": 5, "segmentation": {"size": [H, W], "counts": counts}}
    root, ann_file = _coco(tmp_path, [{**GOOD, "segmentation": [[2, 2, 10, 2, 10, 10]]}, bad])
    with pytest.raises(AnnotationFormatError, match="annotation id 5"):
        CocoDetection(root, ann_file, with_masks=True)
    ds = CocoDetection(root, ann_file, with_masks=True, skip_invalid=True)
    assert ds.stats["invalid_annotations"] == 1 and len(ds[0][1]["masks"]) == 1


def test_valid_compressed_rle_still_loads(tmp_path):
    m = np.zeros((H, W), np.uint8, order="F")
    m[3:9, 4:12] = 1
    rle = mask_utils.encode(m)
    seg = {"size": [H, W], "counts": rle["counts"].decode("ascii")}
    root, ann_file = _coco(tmp_path, [{**GOOD, "bbox": [4, 3, 8, 6], "segmentation": seg}])
    masks = CocoDetection(root, ann_file, with_masks=True)[0][1]["masks"]
    assert torch.equal(masks[0], torch.from_numpy(np.ascontiguousarray(m)))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "12", None, True])
def test_non_numeric_box_values_are_malformed(tmp_path, value):
    root, ann_file = _coco(tmp_path, [GOOD, {**GOOD, "id": 5, "bbox": [1, value, 4, 4]}])
    with pytest.raises(AnnotationFormatError, match="annotation id 5.*malformed bbox"):
        CocoDetection(root, ann_file)


def test_image_entries_with_bad_sizes_or_names(tmp_path):
    images = [
        {"id": 1, "file_name": "a.png", "width": W, "height": H},
        {"id": 2, "file_name": "a.png", "width": "30", "height": H},
        {"id": 3, "file_name": 7, "width": W, "height": H},
        {"id": 4, "file_name": "a.png", "width": 0, "height": H},
    ]
    root, ann_file = _coco(tmp_path, [GOOD], images=images)
    with pytest.raises(AnnotationFormatError, match="image id 2"):
        CocoDetection(root, ann_file)
    ds = CocoDetection(root, ann_file, skip_invalid=True)
    assert ds.image_ids == [1] and ds.stats["invalid_images"] == 3


# ------------------------------------------------------------------------------ model inputs
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("faster_rcnn_tiny", num_classes=3)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_images_error_clearly_or_give_finite_results(tiny, value):
    """Either a ValueError naming the image, or well-formed finite detections (no torch error)."""
    bad = torch.rand(3, 64, 64)
    bad[1, 10:20, 10:20] = value
    tiny.eval()
    for images, index in (([bad], 0), ([torch.rand(3, 64, 64), bad], 1)):
        try:
            results = tiny.predict(images)  # today, [bad] alone: reshape error inside RoIHeads
        except ValueError as e:
            assert f"images[{index}]" in str(e)
            continue
        for r in results:
            assert len(r["boxes"]) == len(r["scores"]) == len(r["labels"])
            assert torch.isfinite(r["boxes"]).all() and torch.isfinite(r["scores"]).all()
    # training: a clear error too, or non-finite losses (which DetectionModule skips and counts);
    # never finite-looking losses computed from garbage
    tiny.train()
    target = {"boxes": torch.tensor([[4.0, 4.0, 40.0, 40.0]]), "labels": torch.tensor([1])}
    try:
        losses = tiny([torch.rand(3, 64, 64), bad], [target, target])
    except ValueError as e:
        assert "images[1]" in str(e)
    else:
        assert not all(torch.isfinite(v) for v in losses.values()), losses


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_work_or_are_a_clear_error(tiny, dtype):
    image = torch.rand(3, 64, 64)
    tiny.eval()
    reference = tiny.predict([image])[0]
    try:
        result = tiny.predict([image.to(dtype)])[0]
    except ValueError as e:  # acceptable: a message naming the dtype
        assert str(dtype).split(".")[-1] in str(e) and "float32" in str(e)
        return
    except RuntimeError as e:
        pytest.fail(f"{dtype} image fails inside torch: {e}")
    assert result["boxes"].dtype == torch.float32 and len(result["boxes"]) == len(result["scores"])
    if dtype == torch.float64:
        torch.testing.assert_close(result["boxes"], reference["boxes"], atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "target, message",
    [
        ({"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([1.0])}, "labels'] must be an integer"),
        (
            {"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([1, 2])},
            r"labels'\] must be an integer Tensor\[1\]",
        ),
        ({"boxes": torch.tensor([[1, 1, 9, 9]]), "labels": torch.tensor([1])}, "boxes'] must be a float"),
        ({"boxes": torch.tensor([[1.0, float("nan"), 9, 9]]), "labels": torch.tensor([1])}, "non-finite"),
        ({"boxes": torch.tensor([1.0, 1, 9, 9]), "labels": torch.tensor([1])}, r"Tensor\[K, 4\]"),
        ({"boxes": torch.zeros(0, 4)}, "missing the key 'labels'"),
        ([torch.zeros(0, 4)], "must be a dict"),
    ],
    ids=["float_labels", "label_count", "int_boxes", "nan_box", "flat_box", "no_labels", "not_a_dict"],
)
def test_malformed_targets(tiny, target, message):
    tiny.train()
    with pytest.raises(ValueError, match=message):
        tiny([torch.rand(3, 32, 32)], [target])


def test_mask_targets_of_the_wrong_shape():
    model = build_model("mask_rcnn_tiny", num_classes=3)
    target = {"boxes": torch.tensor([[1.0, 1, 9, 9]]), "labels": torch.tensor([1]), "masks": torch.zeros(2, 32, 32)}
    with pytest.raises(ValueError, match=r"masks'\] must be a Tensor\[1, H, W\]"):
        model([torch.rand(3, 32, 32)], [target])


@pytest.mark.parametrize(
    "box", [[30.0, 30, 10, 10], [10.0, 10, 10, 10], [10.0, 10, 10, 40], [200.0, 200, 300, 300], [-50.0, -50, -10, -10]]
)
def test_degenerate_target_boxes_give_finite_losses(tiny, box):
    """Inverted, zero-size and outside-the-image boxes: no NaN from log(0) or 0/0 in the coders."""
    torch.manual_seed(0)
    tiny.train()
    targets = [{"boxes": torch.tensor([box, [4.0, 4, 40, 40]]), "labels": torch.tensor([1, 2])}]
    losses = tiny([torch.rand(3, 64, 64)], targets)
    assert all(torch.isfinite(v) for v in losses.values()), losses


def test_fast_rcnn_with_no_proposals_predicts_nothing():
    """An image for which selective search found nothing (or that all were filtered out)."""
    model = build_model("fast_rcnn_tiny", num_classes=3).eval()
    (result,) = model.predict([torch.rand(3, 64, 64)], proposals=[torch.zeros(0, 4)])  # today: reshape error
    assert result["boxes"].shape == (0, 4) and result["scores"].shape == (0,) and result["labels"].shape == (0,)


def test_fast_rcnn_training_with_no_proposals_and_no_objects():
    model = build_model("fast_rcnn_tiny", num_classes=3).train()
    targets = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model([torch.rand(3, 64, 64)], targets, proposals=[torch.zeros(0, 4)])
    assert all(torch.isfinite(v) for v in losses.values()), losses
