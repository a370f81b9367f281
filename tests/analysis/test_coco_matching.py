"""The vectorised COCO matching against pycocotools' `evaluateImg` and `accumulate`, detection by
detection, for boxes and masks: crowds, every area range, equal IoUs, more than 100 detections of one
class in an image, detections in images without objects."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.analysis.coco_matching import (
    AREA_RANGES,
    BoxIoU,
    MaskIoU,
    grouped_average_precision,
    match_groups,
    precision_at_recall,
    precision_by_class,
)


def crowded_case(seed: int):
    """3 classes; per image 0-12 objects (some crowds, some exact copies of another object) and
    detections around them; image 1 holds 130 detections of one class (COCO evaluates 100)."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, 9):
        images.append({"id": i, "width": 300, "height": 300})
        boxes = []
        for _ in range(rng.integers(0, 13)):
            if boxes and rng.random() < 0.15:  # an exact copy: equal IoUs with every detection
                x, y, w, h = boxes[int(rng.integers(len(boxes)))]
            else:
                w, h = np.exp(rng.uniform(np.log(6), np.log(200), size=2))
                x, y = rng.uniform(0, 300 - w), rng.uniform(0, 300 - h)
            boxes.append((x, y, w, h))
            cat = int(rng.integers(1, 4))
            anns.append({"id": 10 * len(anns) + 3, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": float(w * h * rng.uniform(0.6, 1.0)), "iscrowd": int(rng.random() < 0.1)})  # fmt: skip
        n_dets = 130 if i == 1 else int(rng.integers(0, 40))
        for _ in range(n_dets):
            if boxes and rng.random() < 0.7:
                x, y, w, h = boxes[int(rng.integers(len(boxes)))]
                j = rng.normal(0, 0.2, size=4) * [w, h, w, h]
                box = [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]
            else:
                box = [*rng.uniform(0, 250, size=2), *rng.uniform(2, 120, size=2)]
            cat = 2 if i == 1 else int(rng.integers(1, 4))
            score = float(rng.choice([0.5, 0.7, rng.random()]))  # equal scores: ranked in results order
            dets.append({"image_id": i, "category_id": cat, "bbox": [float(v) for v in box], "score": score})
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    return {"images": images, "annotations": anns, "categories": categories}, dets


def with_masks(gt_dict, dets):
    """The case with masks: each object a diamond polygon in its box, each detection the RLE of the
    diamond in its box (results without boxes, as mask results are evaluated)."""
    gt_dict = copy.deepcopy(gt_dict)
    for a in gt_dict["annotations"]:
        x, y, w, h = a["bbox"]
        a["segmentation"] = [[x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]]
    results = []
    for d in dets:
        x, y, w, h = d["bbox"]
        (rle,) = mask_utils.frPyObjects([[x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]], 300, 300)
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({"image_id": d["image_id"], "category_id": d["category_id"], "segmentation": rle,
                        "score": d["score"]})  # fmt: skip
    return gt_dict, results


def box_match(det_image, det_class, det_box, rank, objects, **kwargs):
    objects = dict(objects)
    gt_box = objects.pop("gt_box")
    area = det_box[:, 2] * det_box[:, 3]
    return match_groups(det_image, det_class, area, rank, **objects, pair_iou=BoxIoU(det_box, gt_box), **kwargs)


def pycocotools_eval(gt_dict, dets, threshold, iou_type="bbox"):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dict)
        gt.createIndex()
        e = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
        e.params.iouThrs = np.array([threshold])
        e.params.maxDets = [100]
        e.evaluate()
        e.accumulate()
    return e


def flat_arrays(gt_dict, dets):
    image_index = {img["id"]: n for n, img in enumerate(gt_dict["images"])}
    class_index = {c["id"]: k for k, c in enumerate(gt_dict["categories"])}
    anns = gt_dict["annotations"]
    det_image = np.array([image_index[d["image_id"]] for d in dets])
    det_class = np.array([class_index[d["category_id"]] for d in dets])
    det_box = np.array([d["bbox"] for d in dets])
    score = np.array([d["score"] for d in dets])
    rank = np.zeros(len(dets), np.int64)
    for g in set(zip(det_image, det_class)):  # rank by score, ties in results order
        idx = np.flatnonzero((det_image == g[0]) & (det_class == g[1]))
        rank[idx[np.argsort(-score[idx], kind="stable")]] = np.arange(len(idx))
    objects = dict(
        gt_image=np.array([image_index[a["image_id"]] for a in anns]),
        gt_class=np.array([class_index[a["category_id"]] for a in anns]),
        gt_box=np.array([a["bbox"] for a in anns]),
        gt_area=np.array([a["area"] for a in anns]),
        gt_crowd=np.array([bool(a["iscrowd"]) for a in anns]),
    )
    return det_image, det_class, det_box, score, rank, objects


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.75])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matching_equals_pycocotools_detection_by_detection(seed, threshold, iou_type):
    gt, dets = crowded_case(seed)
    det_image, det_class, det_box, _, rank, objects = flat_arrays(gt, dets)
    if iou_type == "bbox":
        det_gt, det_ignored = box_match(det_image, det_class, det_box, rank, objects, iou_threshold=threshold)
    else:
        gt, dets = with_masks(gt, dets)
        reference = COCO()
        reference.dataset = copy.deepcopy(gt)
        with contextlib.redirect_stdout(io.StringIO()):
            reference.createIndex()
        det_rles = [d["segmentation"] for d in dets]
        pair_iou = MaskIoU(det_image, det_rles, objects["gt_image"], [reference.annToRLE(a) for a in gt["annotations"]])
        objects.pop("gt_box")
        area = np.array([mask_utils.area(r) for r in det_rles], np.float64)  # pycocotools: <= 255 RLEs a call
        det_gt, det_ignored = match_groups(det_image, det_class, area, rank, **objects, pair_iou=pair_iou,
                                           iou_threshold=threshold)  # fmt: skip
    ann_ids = np.array([a["id"] for a in gt["annotations"]])
    e = pycocotools_eval(gt, dets, threshold, iou_type)
    checked = 0
    for entry in e.evalImgs:  # one per (class, area range, image) with detections or objects
        if entry is None:
            continue
        a = [list(r) for r in e.params.areaRng].index(list(entry["aRng"]))
        for det_id, gt_id, ignored in zip(entry["dtIds"], entry["dtMatches"][0], entry["dtIgnore"][0]):
            n = det_id - 1  # loadRes numbers the results 1, 2, ... in order
            expected = -1 if gt_id == 0 else int(np.flatnonzero(ann_ids == gt_id)[0])
            assert (det_gt[n, a], det_ignored[n, a]) == (expected, bool(ignored)), (entry["image_id"], a, n)
            checked += 1
    evaluated = rank < 100
    assert checked == 4 * evaluated.sum() and (~evaluated).sum() == 30
    assert (det_gt[~evaluated] == -1).all() and not det_ignored[~evaluated].any()


@pytest.mark.parametrize("seed", [0, 1])
def test_precision_equals_pycocotools_accumulate(seed):
    gt, dets = crowded_case(seed)
    det_image, det_class, det_box, score, rank, objects = flat_arrays(gt, dets)
    det_gt, det_ignored = box_match(det_image, det_class, det_box, rank, objects, iou_threshold=0.5)
    in_range = (objects["gt_area"][:, None] >= AREA_RANGES[:, 0]) & (objects["gt_area"][:, None] <= AREA_RANGES[:, 1])
    counted = in_range & ~objects["gt_crowd"][:, None]
    num_gt = np.stack([np.bincount(objects["gt_class"][c], minlength=3) for c in counted.T], axis=1)
    det_order = np.lexsort((rank, det_image)).argsort()
    got = precision_by_class(det_class, score, det_order, rank < 100, det_gt, det_ignored, num_gt)
    expected = pycocotools_eval(gt, dets, 0.5).eval["precision"][0, :, :, :, 0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-15)  # pycocotools adds 1 ulp to the denominator


def test_precision_at_recall_by_hand():
    # ranked: TP, FP, TP with 4 objects: recall 0.25, 0.25, 0.5; interpolated precision 1, 2/3, 2/3
    q = precision_at_recall(np.array([True, False, True]), 4)
    assert q[0] == q[25] == 1.0 and q[26] == q[50] == pytest.approx(2 / 3) and not q[51:].any()
    with pytest.raises(ValueError, match="ground-truth"):
        precision_at_recall(np.array([True]), 0)


def test_no_objects_or_no_detections():
    box = np.array([[0.0, 0.0, 10.0, 10.0]])
    empty = dict(gt_image=np.zeros(0, int), gt_class=np.zeros(0, int), gt_box=np.zeros((0, 4)),
                 gt_area=np.zeros(0), gt_crowd=np.zeros(0, bool))  # fmt: skip
    det_gt, det_ignored = box_match(np.array([0]), np.array([0]), box, np.array([0]), empty, iou_threshold=0.5)
    assert det_gt.tolist() == [[-1] * 4] and det_ignored.tolist() == [[False, False, True, True]]  # 100 px²: small only
    one = dict(gt_image=np.array([0]), gt_class=np.array([0]), gt_box=box, gt_area=np.array([100.0]),
               gt_crowd=np.array([False]))  # fmt: skip
    det_gt, det_ignored = box_match(np.zeros(0, int), np.zeros(0, int), np.zeros((0, 4)), np.zeros(0, int), one,
                                    iou_threshold=0.5)  # fmt: skip
    assert det_gt.shape == (0, 4) and det_ignored.shape == (0, 4)


def test_grouped_average_precision_equals_one_group_at_a_time():
    rng = np.random.default_rng(0)
    num_gt = rng.integers(1, 12, size=300)
    lengths = rng.integers(0, 40, size=300)  # groups without detections too
    group = np.repeat(np.arange(300), lengths)
    tp = rng.random(len(group)) < 0.4
    got = grouped_average_precision(group, tp, num_gt, rows=64)  # several row blocks
    expected = [precision_at_recall(tp[group == g], n).mean() if lengths[g] else 0.0 for g, n in enumerate(num_gt)]
    assert got.tolist() == expected  # bit for bit
