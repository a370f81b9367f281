"""COCO site error curves and TIDE figures, against pycocotools and hand-checked cases."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.analysis import CURVE_NAMES, analyze_coco_errors, average_precision
from detkit.evaluation import COCOEvaluator

CATEGORIES = [
    {"id": 1, "name": "cat", "supercategory": "animal"},
    {"id": 2, "name": "dog", "supercategory": "animal"},
    {"id": 5, "name": "car", "supercategory": "vehicle"},
    {"id": 7, "name": "bus", "supercategory": "vehicle"},
]


def random_case(seed: int = 0, n_images: int = 8):
    """Objects of 4 classes in 2 supercategories, all sizes, a few crowds; detections that are
    jittered copies (some of another class), duplicates and background boxes."""
    rng = np.random.default_rng(seed)
    images, anns, dets = [], [], []
    for i in range(1, n_images + 1):
        images.append({"id": i, "width": 400, "height": 400, "file_name": f"{i}.png"})
        for _ in range(rng.integers(0, 7)):
            w, h = rng.uniform(8, 160, size=2)
            x, y = rng.uniform(0, 400 - w), rng.uniform(0, 400 - h)
            cat = int(rng.choice([1, 2, 5, 7]))
            crowd = int(rng.random() < 0.08)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": crowd})  # fmt: skip
            for _ in range(rng.integers(0, 3)):
                jitter = rng.normal(0, 0.15, size=4) * [w, h, w, h]
                c = cat if rng.random() < 0.7 else int(rng.choice([1, 2, 5, 7]))
                box = [x + jitter[0], y + jitter[1], max(2.0, w + jitter[2]), max(2.0, h + jitter[3])]
                dets.append({"image_id": i, "category_id": c, "bbox": box, "score": float(rng.random())})
        for _ in range(rng.integers(0, 4)):
            w, h = rng.uniform(8, 100, size=2)
            box = [float(rng.uniform(0, 300)), float(rng.uniform(0, 300)), w, h]
            dets.append({"image_id": i, "category_id": int(rng.choice([1, 2, 5, 7])), "bbox": box,
                         "score": float(rng.random())})  # fmt: skip
    return {"images": images, "categories": copy.deepcopy(CATEGORIES), "annotations": anns}, dets


def with_masks(gt_dict, dets, size=400):
    """Masks for `random_case`: a diamond in each object's and each detection's box (results as RLEs)."""

    def diamond(x, y, w, h):
        return [x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]

    gt_dict = copy.deepcopy(gt_dict)
    for a in gt_dict["annotations"]:
        a["segmentation"] = [diamond(*a["bbox"])]
    results = []
    for d in dets:
        (rle,) = mask_utils.frPyObjects([diamond(*d["bbox"])], size, size)
        rle["counts"] = rle["counts"].decode("ascii")
        results.append({k: d[k] for k in ("image_id", "category_id", "score")} | {"segmentation": rle})
    return gt_dict, results


def pycoco_run(gt_dict, dets, iou_thrs=None, max_dets=None, iou_type="bbox"):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dict)
        gt.createIndex()
        e = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
        if iou_thrs is not None:
            e.params.iouThrs = np.asarray(iou_thrs)
        if max_dets is not None:
            e.params.maxDets = max_dets
        e.evaluate()
        e.accumulate()
        e.summarize() if iou_thrs is None else None
    return e


def coco_site_class_precision(gt_dict, dets, cat_id, same_supercategory_only, iou_type="bbox"):
    """The COCO site's analyze() for one class (as mmdetection's coco_error_analysis runs it): its
    detections only, other classes' objects relabelled as ignored crowds of this class, IoU 0.1."""
    gt = copy.deepcopy(gt_dict)
    sup = {c["id"]: c["supercategory"] for c in gt["categories"]}
    for a in gt["annotations"]:
        if a["category_id"] != cat_id and (not same_supercategory_only or sup[a["category_id"]] == sup[cat_id]):
            a.update(ignore=1, iscrowd=1, category_id=cat_id)
    e = pycoco_run(gt, [d for d in dets if d["category_id"] == cat_id], [0.1], [100], iou_type)
    k = sorted(sup).index(cat_id)
    return e.eval["precision"][0, :, k, :, 0]  # Tensor[R, A]


def masked_mean(s):
    return float(np.mean(s[s > -1]))


@pytest.mark.parametrize("seed, iou_type", [(0, "bbox"), (1, "bbox"), (0, "segm"), (2, "segm")])
def test_curves_match_pycocotools_and_the_coco_site(seed, iou_type):
    gt, dets = random_case(seed)
    if iou_type == "segm":
        gt, dets = with_masks(gt, dets)
    res = analyze_coco_errors(COCOEvaluator(gt), dets, iou_type)
    ref = pycoco_run(gt, dets, iou_type=iou_type)
    p = ref.eval["precision"]  # Tensor[T, R, K, A, M]
    detkit_stats = COCOEvaluator(gt).evaluate(dets, iou_type, verbose=False).stats
    assert (res.ap["all"]["C75"], res.ap["all"]["C50"]) == (detkit_stats["AP75"], detkit_stats["AP50"])  # same backend
    assert res.ap["all"]["C75"] == pytest.approx(ref.stats[2], abs=1e-12)  # pycocotools: last-bit differences
    assert res.ap["all"]["C50"] == pytest.approx(ref.stats[1], abs=1e-12)
    loc = pycoco_run(gt, dets, [0.1], [100], iou_type).eval["precision"]
    for a, area in enumerate(("all", "small", "medium", "large")):
        if not (p[0, 0, :, a, -1] > -1).any():
            continue
        assert res.ap[area]["C50"] == pytest.approx(masked_mean(p[0, :, :, a, -1]), abs=1e-12)
        assert res.ap[area]["C75"] == pytest.approx(masked_mean(p[5, :, :, a, -1]), abs=1e-12)
        assert res.ap[area]["Loc"] == pytest.approx(masked_mean(loc[0, :, :, a, 0]), abs=1e-12)
        assert res.ap[area]["FN"] == 1.0
        aps = [res.ap[area][name] for name in CURVE_NAMES]
        assert aps == sorted(aps), (area, aps)
    for k, cat in enumerate(CATEGORIES):
        if not res.valid[k, 0]:
            continue
        for name, same_sup in (("Sim", True), ("Oth", False)):
            expected = coco_site_class_precision(gt, dets, cat["id"], same_sup, iou_type)
            for a, area in enumerate(("all", "small", "medium", "large")):
                if res.valid[k, a]:
                    np.testing.assert_allclose(res.curve(name, area, cat["name"]), expected[:, a], atol=1e-12)
        curves = np.stack([res.curve(n, "all", cat["name"]) for n in CURVE_NAMES])
        assert (np.diff(curves, axis=0) >= -1e-12).all()  # C75 <= C50 <= ... <= FN at every recall


def test_per_image_ap_matches_pycocotools_on_that_image():
    gt, dets = random_case(3)
    res = analyze_coco_errors(COCOEvaluator(gt), dets)
    checked = 0
    for img in gt["images"]:
        objects = [a for a in gt["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]]
        if not objects:
            assert res.image_ap[img["id"]] is None
            continue
        sub = {**gt, "images": [img], "annotations": [a for a in gt["annotations"] if a["image_id"] == img["id"]]}
        own = [d for d in dets if d["image_id"] == img["id"]]
        if not own:
            assert res.image_ap[img["id"]] == 0.0
            continue
        e = pycoco_run(sub, own, [0.5], [100])
        assert res.image_ap[img["id"]] == pytest.approx(masked_mean(e.eval["precision"][0, :, :, 0, 0]), abs=1e-12)
        checked += 1
    assert checked >= 3


def test_average_precision_by_hand():
    # ranked FP, TP with 2 objects: precision 0.5 up to recall 0.5 -> 51 of 101 points at 0.5
    assert average_precision(np.array([False, True]), 2) == pytest.approx(51 * 0.5 / 101)
    assert average_precision(np.array([True, True]), 2) == 1.0


def one_class(objects, dets, n_classes=1):
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, n_classes + 1)]
    anns = [{"id": i + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for i, (c, b) in enumerate(objects)]  # fmt: skip
    gt = {"images": [{"id": 1, "width": 200, "height": 200}], "categories": cats, "annotations": anns}
    return gt, [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in dets]


A, B = [0, 0, 20, 20], [100, 100, 20, 20]
SHIFTED_A = [0, 0, 20, 8]  # IoU 0.4 with A: a localisation error
GAIN_OF_ONE_FP_FIRST = 1.0 - 0.5  # one object: FP then TP gives AP 0.5, the FP removed gives 1
# Two objects, TP, FP, TP: precision 1 to recall 0.5 (51 points), 2/3 after -> (51 + 50 * 2/3) / 101
TP_FP_TP = (51 + 50 * 2 / 3) / 101


@pytest.mark.parametrize(
    "kind, objects, dets, n_classes, ap50, gain",
    [
        ("background", [(1, A)], [(1, B, 0.9), (1, A, 0.8)], 1, 0.5, GAIN_OF_ONE_FP_FIRST),
        ("localisation", [(1, A)], [(1, SHIFTED_A, 0.9), (1, A, 0.8)], 1, 0.5, GAIN_OF_ONE_FP_FIRST),
        ("duplicate", [(1, A), (1, B)], [(1, A, 0.9), (1, A, 0.8), (1, B, 0.7)], 1, TP_FP_TP, 1 - TP_FP_TP),
        # class 2's A detected as class 1: class 1 AP 0.5 (FP first), class 2 AP 0; fixed: both 1
        ("classification", [(1, B), (2, A)], [(1, A, 0.9), (1, B, 0.8)], 2, 0.25, 0.75),
        # a class-2 box at IoU 0.4 with class 1's object: removing it gives class 2 AP 1
        ("both", [(1, B), (2, A)], [(1, SHIFTED_A, 0.9), (1, B, 0.8), (2, A, 0.7)], 2, 0.75, 0.25),
        ("missed", [(1, A), (1, B)], [(1, A, 0.9)], 1, 51 / 101, 1 - 51 / 101),
    ],
)
def test_tide_each_error_alone(kind, objects, dets, n_classes, ap50, gain):
    gt, results = one_class(objects, dets, n_classes)
    res = analyze_coco_errors(COCOEvaluator(gt), results)
    assert res.tide["AP50"] == pytest.approx(ap50, abs=1e-12)
    assert res.tide["AP50"] == pytest.approx(pycoco_run(gt, results).stats[1], abs=1e-12)
    for name, value in res.tide.items():
        if name != "AP50":
            assert value == pytest.approx(gain if name == kind else 0.0, abs=1e-12), name
    assert res.error_counts[kind] >= 1
    assert sum(res.error_counts.values()) == res.error_counts[kind]


def test_ground_truth_without_objects_gives_undefined_not_nan():
    gt, results = one_class([], [(1, A, 0.5)])
    res = analyze_coco_errors(COCOEvaluator(gt), results)
    assert res.tide["AP50"] == -1.0 and res.ap["all"]["C50"] == -1.0  # COCO's "undefined"
    assert res.error_counts["background"] == 1
