"""COCO keypoint annotations: reading, bad input, the flip (checked against torchvision.transforms.v2),
the shapes data set's extreme points."""

import json

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from detkit.data import AnnotationFormatError, CocoDetection, ShapesDataset, build_transforms
from detkit.data.coco import keypoint_flip_map
from detkit.data.shapes import extreme_points
from detkit.data.transforms import RandomHorizontalFlip

H, W = 20, 30
COCO_PERSON = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]  # fmt: skip


def make_keypoint_coco(tmp_path, annotations, categories=None):
    root = tmp_path / "images"
    root.mkdir(exist_ok=True)
    ok, buf = cv2.imencode(".png", np.full((H, W, 3), 100, np.uint8))
    (root / "a.png").write_bytes(buf.tobytes())
    cats = categories or [
        {"id": 5, "name": "thing", "keypoints": ["left_tip", "right_tip", "top"], "skeleton": [[1, 3], [2, 3]]}
    ]
    data = {
        "images": [{"id": 9, "file_name": "a.png", "height": H, "width": W}],
        "annotations": annotations,
        "categories": cats,
    }
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    return str(root), str(ann)


def _ann(aid, keypoints, bbox=(2, 3, 20, 10)):
    return {"id": aid, "image_id": 9, "category_id": 5, "bbox": list(bbox), "area": 200, "iscrowd": 0,
            "keypoints": keypoints}  # fmt: skip


def test_keypoints_read_into_targets(tmp_path):
    root, ann = make_keypoint_coco(
        tmp_path, [_ann(1, [4, 5, 2, 21, 6, 1, 7, 7, 0]), {**_ann(2, None), "keypoints": None}]
    )
    ds = CocoDetection(root, ann)
    assert ds.has_keypoints and ds.keypoint_names == ["left_tip", "right_tip", "top"]
    assert ds.skeleton == [(0, 2), (1, 2)]  # 1-based in the json
    assert ds.flip_map == [1, 0, 2]
    _, target = ds[0]
    expected = torch.tensor([[[4.0, 5, 2], [21, 6, 1], [0, 0, 0]], [[0, 0, 0], [0, 0, 0], [0, 0, 0]]])
    assert target["keypoints"].dtype == torch.float32
    torch.testing.assert_close(target["keypoints"], expected)  # v = 0: x = y = 0; no keypoints: v = 0
    assert "keypoints" not in CocoDetection(root, ann, keypoints=False)[0][1]


@pytest.mark.parametrize(
    ("keypoints", "message"),
    [
        ([4, 5, 2, 21, 6, 1], "has 6 values; the category names 3 keypoints (expected 9)"),
        ([4, 5, 2, 21, 6, 3, 7, 7, 0], "keypoint 'right_tip': visibility v=3 is not 0, 1 or 2"),
        ([4, 5, 2, 31, 6, 1, 7, 7, 0], "keypoint 'right_tip' (31, 6) lies outside the 30x20 image"),
        ([4, -1, 2, 21, 6, 1, 7, 7, 0], "keypoint 'left_tip' (4, -1) lies outside"),
        ([4, 5, 2, "x", 6, 1, 7, 7, 0], "not a finite number"),
    ],
)
def test_bad_keypoints_name_file_and_annotation(tmp_path, keypoints, message):
    root, ann = make_keypoint_coco(tmp_path, [_ann(1, [4, 5, 2, 21, 6, 1, 7, 7, 0]), _ann(17, keypoints)])
    with pytest.raises(AnnotationFormatError) as e:
        CocoDetection(root, ann)
    text = str(e.value)
    assert ann in text and "annotation id 17" in text and message in text and "\n" not in text
    ds = CocoDetection(root, ann, skip_invalid=True)
    assert ds.stats["invalid_annotations"] == 1 and len(ds[0][1]["keypoints"]) == 1


def test_unlabelled_point_outside_is_fine(tmp_path):
    root, ann = make_keypoint_coco(tmp_path, [_ann(1, [4, 5, 2, 99, 99, 0, 7, 7, 1])])
    torch.testing.assert_close(CocoDetection(root, ann)[0][1]["keypoints"][0, 1], torch.zeros(3))


def test_categories_naming_different_keypoints_refused(tmp_path):
    cats = [
        {"id": 5, "name": "a", "keypoints": ["x", "y"]},
        {"id": 6, "name": "b", "keypoints": ["x", "z"]},
    ]
    root, ann = make_keypoint_coco(tmp_path, [], cats)
    with pytest.raises(AnnotationFormatError, match="category id 6 names keypoints"):
        CocoDetection(root, ann)
    root, ann = make_keypoint_coco(tmp_path, [], [{"id": 5, "name": "a"}])
    with pytest.raises(AnnotationFormatError, match="keypoints=True but no category names"):
        CocoDetection(root, ann, keypoints=True)


def test_flip_map_from_names():
    # COCO person: nose stays, every left_* pairs with its right_*
    expected = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    assert keypoint_flip_map(COCO_PERSON) == expected
    assert keypoint_flip_map(["top", "right", "bottom", "left"]) == [0, 3, 2, 1]
    assert keypoint_flip_map(["ear_l", "ear_r", "tail"]) == [1, 0, 2]
    with pytest.raises(ValueError, match="'left_eye' has no mirror keypoint 'right_eye'"):
        keypoint_flip_map(["left_eye", "nose"])


def _sample(keypoints, boxes):
    image = tv_tensors.Image(torch.arange(3 * H * W, dtype=torch.uint8).reshape(3, H, W))
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes), format="XYXY", canvas_size=(H, W)),
        "labels": torch.ones(len(boxes), dtype=torch.int64),
        "iscrowd": torch.zeros(len(boxes), dtype=torch.uint8),
        "keypoints": torch.tensor(keypoints),
    }
    return image, target


def test_flip_against_torchvision_v2():
    kp = [[[2.0, 3.0, 2.0], [20.0, 4.0, 1.0], [9.0, 9.0, 2.0]]]
    image, target = _sample(kp, [[2.0, 3.0, 20.0, 13.0]])
    mask = torch.zeros(1, H, W, dtype=torch.uint8)
    mask[0, 3:13, 2:9] = 1
    target["masks"] = tv_tensors.Mask(mask)
    out_image, out = build_transforms(True, min_size=None, max_size=None, hflip_prob=1.0, flip_map=[1, 0, 2])(
        image, target
    )
    torch.testing.assert_close(out["masks"].as_subclass(torch.Tensor), mask.flip(-1))
    # image and boxes: exactly what v2's flip does
    ref_box = F.horizontal_flip(target["boxes"])
    torch.testing.assert_close(out_image, F.to_dtype(F.horizontal_flip(image), torch.float32, scale=True))
    torch.testing.assert_close(out["boxes"].as_subclass(torch.Tensor), ref_box.as_subclass(torch.Tensor))
    # keypoints: v2's kernel maps x to W - 1 - x (pixel indices); detkit uses the boxes' x -> W - x
    ref_xy = F.horizontal_flip(tv_tensors.KeyPoints(torch.tensor(kp)[..., :2], canvas_size=(H, W)))
    ref_xy = ref_xy.as_subclass(torch.Tensor) + torch.tensor([1.0, 0.0])
    expected = torch.cat([ref_xy, torch.tensor(kp)[..., 2:]], -1)[:, [1, 0, 2]]  # left <-> right swapped
    torch.testing.assert_close(out["keypoints"], expected)
    torch.testing.assert_close(out["keypoints"][0, 0], torch.tensor([10.0, 4.0, 1.0]))  # hand-checked: 30 - 20
    assert ref_box[0, 0] <= out["keypoints"][0, 0, 0] <= ref_box[0, 2]  # a point on the box stays on it


def test_resize_and_sanitize_move_keypoints_with_boxes():
    kp = [[[2.0, 3.0, 2.0], [20.0, 4.0, 1.0], [0.0, 0.0, 0.0]], [[5.0, 5.0, 2.0]] * 3]
    image, target = _sample(kp, [[2.0, 3.0, 20.0, 13.0], [5.0, 5.0, 5.0, 6.0]])  # the second box is empty
    out_image, out = build_transforms(False, min_size=40, max_size=None)(image, target)
    assert out_image.shape[-2:] == (40, 60)
    expected = torch.tensor([[[4.0, 6.0, 2.0], [40.0, 8.0, 1.0], [0.0, 0.0, 0.0]]])  # x2 scale, box 2 dropped
    torch.testing.assert_close(out["keypoints"], expected)
    assert type(out["keypoints"]) is torch.Tensor and len(out["labels"]) == 1


def test_flip_without_keypoints_is_v2s():
    image, target = _sample([[[1.0, 1.0, 2.0]]], [[2.0, 3.0, 20.0, 13.0]])
    del target["keypoints"]
    for seed in range(6):
        torch.manual_seed(seed)
        ours = RandomHorizontalFlip(p=0.5)(image, dict(target))
        torch.manual_seed(seed)
        ref = v2.RandomHorizontalFlip(p=0.5)(image, dict(target))
        torch.testing.assert_close(ours[0], ref[0])
        torch.testing.assert_close(ours[1]["boxes"], ref[1]["boxes"])


def test_extreme_points_hand_checked():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:6, 3:9] = 1  # rows 2..5, columns 3..8
    mask[6, 4] = 1  # one pixel lower
    top, right, bottom, left = np.asarray(extreme_points(mask)).reshape(4, 3).tolist()
    assert top == [6.5, 2.0, 2]  # middle of columns 3..8 (index 3 of 6 -> column 6), on the top edge y = 2
    assert right == [9.0, 4.5, 2]  # right edge x = 9, middle of rows 2..5 -> row 4
    assert bottom == [4.5, 7.0, 2]  # the single lowest pixel (4, 6): bottom edge y = 7
    assert left == [3.0, 4.5, 2]


def test_shapes_keypoints_same_images_points_on_box_edges(tmp_path):
    plain = ShapesDataset(tmp_path / "plain", "val", num_images=4, image_size=64)
    kp = ShapesDataset(tmp_path / "kp", "val", num_images=4, image_size=64, keypoints=True)
    assert kp.keypoint_names == ["top", "right", "bottom", "left"] and kp.flip_map == [0, 3, 2, 1]
    assert kp.skeleton == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert not plain.has_keypoints
    for i in range(4):
        (a, ta), (b, tb) = plain[i], kp[i]
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(ta["boxes"], tb["boxes"])
        boxes, points = tb["boxes"], tb["keypoints"]
        torch.testing.assert_close(points[:, 0, 1], boxes[:, 1])  # top point on the top edge
        torch.testing.assert_close(points[:, 1, 0], boxes[:, 2])  # right point on the right edge
        torch.testing.assert_close(points[:, 2, 1], boxes[:, 3])
        torch.testing.assert_close(points[:, 3, 0], boxes[:, 0])
        assert (points[..., 2] == 2).all()
    with open(kp.ann_file) as f:
        cats = json.load(f)["categories"]
    assert cats[0]["keypoints"] == ["top", "right", "bottom", "left"] and cats[0]["skeleton"][0] == [1, 2]


def test_shapes_flip_keeps_points_on_edges(tmp_path):
    ds = ShapesDataset(tmp_path, "val", num_images=2, image_size=64, keypoints=True)
    ds.transforms = build_transforms(True, min_size=None, max_size=None, hflip_prob=1.0, flip_map=ds.flip_map)
    _, t = ds[0]
    boxes, points = t["boxes"], t["keypoints"]
    torch.testing.assert_close(points[:, 1, 0], boxes[:, 2])  # the mirrored left point is now the right one
    torch.testing.assert_close(points[:, 3, 0], boxes[:, 0])
