import contextlib
import copy
import gc
import io
import json

import cv2
import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.cli import evaluate as evaluate_command
from detkit.evaluation import (
    STAT_NAMES,
    COCOEvaluator,
    detections_to_coco_results,
    gather_and_deduplicate,
    plot_pr_curves,
    save_results_json,
)

H, W = 160, 200
CATEGORIES = [
    {"id": 1, "name": "cat"},
    {"id": 3, "name": "dog"},
    {"id": 7, "name": "bird"},
]  # bird: no GT
LABEL_TO_CAT = {1: 1, 2: 3, 3: 7}
# (image_id, category_id, polygon) -- small (< 32^2), medium and large (> 96^2) objects.
OBJECTS = [
    (1, 1, [10, 10, 30, 10, 30, 35, 10, 35]),  # 20x25 small
    (1, 3, [50, 40, 120, 40, 120, 110, 50, 110]),  # 70x70 medium
    (1, 1, [130, 20, 190, 20, 160, 90]),  # triangle, medium
    (2, 3, [5, 5, 195, 5, 195, 150, 5, 150]),  # large
    (2, 1, [20, 60, 40, 60, 40, 80, 20, 80]),  # small
    (3, 1, [30, 30, 150, 30, 150, 140, 30, 140]),  # large
    (3, 3, [160, 100, 185, 100, 185, 125, 160, 125]),  # small
    (4, 3, [60, 20, 140, 20, 140, 100, 60, 100]),  # medium
]


def _polygon_mask(poly, dx=0, dy=0):
    mask = np.zeros((H, W), np.uint8)
    pts = np.asarray(poly, np.float64).reshape(-1, 2) + [dx, dy]
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _uncompressed_rle(mask):
    """Column-major run lengths starting with a run of zeros (COCO crowd format)."""
    flat = mask.flatten(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [H, W]}


def _gt_dataset():
    anns = []
    for i, (img, cat, poly) in enumerate(OBJECTS):
        rle = mask_utils.merge(mask_utils.frPyObjects([poly], H, W))
        anns.append(
            {
                "id": i + 1,
                "image_id": img,
                "category_id": cat,
                "segmentation": [poly],
                "area": float(mask_utils.area(rle)),
                "bbox": mask_utils.toBbox(rle).tolist(),
                "iscrowd": 0,
            }
        )
    crowd = np.zeros((H, W), np.uint8)
    crowd[100:150, 100:190] = 1
    crowd_rle = mask_utils.encode(np.asfortranarray(crowd))
    anns.append(
        {
            "id": 100,
            "image_id": 4,
            "category_id": 1,
            "segmentation": _uncompressed_rle(crowd),
            "area": float(mask_utils.area(crowd_rle)),
            "bbox": mask_utils.toBbox(crowd_rle).tolist(),
            "iscrowd": 1,
        }
    )
    images = [{"id": i, "width": W, "height": H, "file_name": f"{i}.jpg"} for i in range(1, 5)]
    return {
        "images": images,
        "annotations": anns,
        "categories": copy.deepcopy(CATEGORIES),
    }


def _detections(seed=0):
    """Perturbed GT (boxes + masks) and false positives, as model outputs per image."""
    rng = np.random.default_rng(seed)
    cat_to_label = {v: k for k, v in LABEL_TO_CAT.items()}
    per_image = {i: ([], [], [], []) for i in range(1, 5)}
    for img, cat, poly in OBJECTS:
        dx, dy = rng.integers(-6, 7, size=2)
        mask = _polygon_mask(poly, dx, dy)
        ys, xs = np.nonzero(mask)
        per_image[img][0].append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        per_image[img][1].append(rng.uniform(0.3, 1.0))
        per_image[img][2].append(cat_to_label[cat])
        per_image[img][3].append(mask)
    for img in range(1, 5):  # false positives, some in the crowd region of image 4
        for _ in range(3):
            x0, y0 = rng.integers(0, W - 40), rng.integers(0, H - 40)
            w, h = rng.integers(5, 40, size=2)
            mask = np.zeros((H, W), np.uint8)
            mask[y0 : y0 + h, x0 : x0 + w] = 1
            per_image[img][0].append([x0, y0, x0 + w, y0 + h])
            per_image[img][1].append(rng.uniform(0.0, 0.8))
            per_image[img][2].append(int(rng.integers(1, 4)))
            per_image[img][3].append(mask)
    image_ids = list(per_image)
    dets = [
        {
            "boxes": torch.tensor(np.asarray(b, np.float32)),
            "scores": torch.tensor(s, dtype=torch.float32),
            "labels": torch.tensor(lab, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(m)),
        }
        for b, s, lab, m in per_image.values()
    ]
    return image_ids, dets


def _pycocotools_stats(gt_path, results, iou_type, img_ids=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(gt, dt, iou_type)
        if img_ids is not None:
            ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats), ev.eval["precision"]


@pytest.fixture()
def gt_path(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt_dataset()))
    return path


@pytest.fixture(scope="module")
def results():
    image_ids, dets = _detections()
    return detections_to_coco_results(image_ids, dets, label_to_category_id=LABEL_TO_CAT)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_pycocotools(gt_path, results, backend, iou_type):
    # Mask AP must take instance areas from the masks, so pycocotools gets no boxes for segm.
    reference = results if iou_type == "bbox" else [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    ref_stats, ref_precision = _pycocotools_stats(gt_path, reference, iou_type)
    before = copy.deepcopy(results)
    out = COCOEvaluator(gt_path).evaluate(results, iou_type, backend=backend, verbose=False)
    assert results == before  # inputs are not mutated
    assert list(out.stats) == list(STAT_NAMES)
    np.testing.assert_allclose(list(out.stats.values()), ref_stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.precision, ref_precision, rtol=0, atol=1e-12)
    assert 0.1 < out.stats["AP"] < 0.95  # a non-trivial score
    assert set(out.per_class_ap) == {"cat", "dog"}  # bird has no ground truth
    k = 0  # category order is sorted ids: cat (1) first
    p = ref_precision[:, :, k, 0, -1]
    assert out.per_class_ap["cat"] == pytest.approx(p[p > -1].mean(), abs=1e-12)
    assert len(out.summary.splitlines()) == 12
    assert f"= {out.stats['AP']:0.3f}" in out.summary.splitlines()[0]


def test_img_ids_subset_and_coco_object_input(gt_path, results):
    ref_stats, _ = _pycocotools_stats(gt_path, results, "bbox", img_ids=[1, 3])
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
    for source in (gt_path, coco_gt):
        out = COCOEvaluator(source).evaluate(results, "bbox", img_ids=[3, 1], verbose=False)
        np.testing.assert_allclose(list(out.stats.values()), ref_stats, rtol=0, atol=1e-12)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_detections(gt_path, iou_type):
    gt = _gt_dataset()
    perfect = []
    for a in gt["annotations"]:
        if a["iscrowd"]:
            continue
        rle = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], H, W))
        rle["counts"] = rle["counts"].decode()
        perfect.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "bbox": a["bbox"],
                "segmentation": rle,
                "score": 1.0,
            }
        )
    out = COCOEvaluator(gt_path).evaluate(perfect, iou_type, verbose=False)
    assert out.stats["AP"] == 1.0 and out.stats["AP75"] == 1.0 and out.stats["APs"] == 1.0
    assert out.stats["AR100"] == 1.0
    assert out.per_class_ap == {"cat": 1.0, "dog": 1.0}


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_empty_results_give_zeros(gt_path, backend):
    out = COCOEvaluator(gt_path).evaluate([], "bbox", backend=backend, verbose=False)
    assert out.stats == {name: 0.0 for name in STAT_NAMES}
    assert out.per_class_ap == {"cat": 0.0, "dog": 0.0}
    assert out.precision.shape == (10, 101, 3, 4, 3)


def test_invalid_results_name_the_id(gt_path, results):
    ev = COCOEvaluator(gt_path)
    bad_image = results[:3] + [dict(results[0], image_id=999)]
    with pytest.raises(ValueError, match="999"):
        ev.evaluate(bad_image, verbose=False)
    with pytest.raises(ValueError, match="42"):
        ev.evaluate(results[:3] + [dict(results[0], category_id=42)], verbose=False)
    with pytest.raises(ValueError, match="segmentation"):
        ev.evaluate(
            [{k: v for k, v in results[0].items() if k != "segmentation"}],
            "segm",
            verbose=False,
        )


def test_results_conversion_and_json_round_trip(tmp_path):
    det = {
        "boxes": torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.5, 1.5, 2.5, 4.0]]),
        "scores": torch.tensor([0.9, 0.25]),
        "labels": torch.tensor([2, 1]),
    }
    empty = {
        "boxes": torch.zeros(0, 4),
        "scores": torch.zeros(0),
        "labels": torch.zeros(0, dtype=torch.int64),
    }
    out = detections_to_coco_results([5, 6], [det, empty], label_to_category_id={1: 1, 2: 3})
    assert out == [
        {
            "image_id": 5,
            "category_id": 3,
            "bbox": [10.0, 20.0, 40.0, 60.0],
            "score": pytest.approx(0.9),
        },
        {"image_id": 5, "category_id": 1, "bbox": [0.5, 1.5, 2.0, 2.5], "score": 0.25},
    ]
    # a sequence maps label i to seq[i - 1]
    assert detections_to_coco_results([5], [det], label_to_category_id=[1, 3]) == out
    path = tmp_path / "sub" / "results.json"
    save_results_json(out, path)
    assert json.loads(path.read_text()) == out
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left
    with pytest.raises(ValueError, match="label 2"):
        detections_to_coco_results([5], [det], label_to_category_id={1: 1})


def test_rle_decodes_back_to_masks():
    rng = np.random.default_rng(1)
    masks = torch.from_numpy(rng.random((3, 17, 23)) > 0.6)
    det = {
        "boxes": torch.zeros(3, 4),
        "scores": torch.ones(3),
        "labels": torch.ones(3, dtype=torch.int64),
        "masks": masks,
    }
    out = detections_to_coco_results([1], [det], label_to_category_id={1: 1})
    json.dumps(out)  # counts are str
    for r, m in zip(out, masks.numpy()):
        assert r["segmentation"]["size"] == [17, 23]
        np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]), m.astype(np.uint8))
    probs = {
        **det,
        "masks": masks.float()[:, None] * 0.7,
    }  # float [K, 1, H, W] masks are thresholded
    out_probs = detections_to_coco_results([1], [probs], label_to_category_id={1: 1})
    assert [r["segmentation"] for r in out_probs] == [r["segmentation"] for r in out]


def test_gather_and_deduplicate():
    rank0 = [
        {"image_id": 1, "n": "a"},
        {"image_id": 1, "n": "b"},
        {"image_id": 2, "n": "c"},
    ]
    rank1 = [
        {"image_id": 3, "n": "d"},
        {"image_id": 2, "n": "e"},
        {"image_id": 2, "n": "f"},
    ]
    rank2 = [{"image_id": 3, "n": "g"}, {"image_id": 4, "n": "h"}]
    merged = gather_and_deduplicate([rank0, rank1, rank2])
    assert [r["n"] for r in merged] == ["a", "b", "c", "d", "h"]


def test_cli(gt_path, results, tmp_path, capsys):
    pred = tmp_path / "pred.json"
    save_results_json(results, pred)
    metrics = tmp_path / "metrics.json"
    png = tmp_path / "pr.png"
    argv = [
        "--annotations",
        str(gt_path),
        "--predictions",
        str(pred),
        "--output",
        str(metrics),
        "--pr-curve",
        str(png),
    ]
    assert evaluate_command.main(argv) == 0
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in capsys.readouterr().out
    saved = json.loads(metrics.read_text())
    expected = COCOEvaluator(gt_path).evaluate(results, verbose=False)
    assert list(saved["stats"]) == list(STAT_NAMES)
    assert saved["stats"] == expected.stats and saved["per_class_ap"] == expected.per_class_ap
    assert cv2.imread(str(png)) is not None

    missing = tmp_path / "nope.json"
    assert evaluate_command.main(["--annotations", str(gt_path), "--predictions", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    pred.write_text(json.dumps([dict(results[0], image_id=12345)]))
    assert evaluate_command.main(["--annotations", str(gt_path), "--predictions", str(pred)]) == 1
    assert "12345" in capsys.readouterr().err


def test_pr_curve_png(gt_path, results, tmp_path):
    out = COCOEvaluator(gt_path).evaluate(results, verbose=False)
    path = tmp_path / "pr.png"
    plot_pr_curves(out.precision, out.category_names, path)
    img = cv2.imread(str(path))
    assert img.shape == (700, 1000, 3)
    plot_area = img[60:620, 90:710].astype(int)
    coloured = np.abs(plot_area - plot_area.mean(axis=2, keepdims=True)).max(axis=2) > 40
    assert coloured.sum() > 100  # class curves were drawn
    with pytest.raises(ValueError, match="category names"):
        plot_pr_curves(out.precision, ["cat"], path)


def test_segm_areas_come_from_masks(gt_path):
    # A small false-positive mask whose box claims a large area: with the box area the
    # false positive would be ignored in the "small" range and APs would be 1.
    gt = _gt_dataset()["annotations"][0]  # small cat in image 1
    true_rle = mask_utils.merge(mask_utils.frPyObjects(gt["segmentation"], H, W))
    fp_mask = np.zeros((H, W), np.uint8, order="F")
    fp_mask[140:150, 170:180] = 1
    fp_rle = mask_utils.encode(fp_mask)
    for rle in (true_rle, fp_rle):
        rle["counts"] = rle["counts"].decode()
    res = [
        {
            "image_id": 1,
            "category_id": 1,
            "bbox": gt["bbox"],
            "segmentation": true_rle,
            "score": 0.5,
        },
        {
            "image_id": 1,
            "category_id": 1,
            "bbox": [0.0, 0.0, 200.0, 160.0],
            "segmentation": fp_rle,
            "score": 0.9,
        },
    ]
    out = COCOEvaluator(gt_path).evaluate(res, "segm", img_ids=[1], verbose=False)
    assert out.stats["APs"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_missing_area_is_computed_from_segmentation_or_box(gt_path, results, backend, capsys):
    data = _gt_dataset()
    expected = COCOEvaluator(data).evaluate(results, backend=backend, verbose=False).stats
    for k, ann in enumerate(data["annotations"]):
        del ann["area"]
        if k % 2 and not ann["iscrowd"]:
            del ann["segmentation"]  # the box gives the area of these
    ev = COCOEvaluator(data)
    assert ev.computed_areas == {"segmentation": 5, "bbox": 4}
    assert "area" not in data["annotations"][0]  # the caller's dicts are left alone
    stats = ev.evaluate(results, backend=backend, verbose=False).stats
    assert stats["APm"] > -1 and stats["APl"] > -1  # not all "small" any more
    assert stats["AP"] == pytest.approx(expected["AP"], abs=0.02)  # box areas differ slightly from mask areas
    path = gt_path.parent / "noarea.json"
    path.write_text(json.dumps(data))
    pred = gt_path.parent / "pred.json"
    save_results_json(results, pred)
    assert evaluate_command.main(["--annotations", str(path), "--predictions", str(pred), "--backend", backend]) == 0
    assert "9 annotations" in capsys.readouterr().err


def test_bad_ground_truth_and_predictions_are_refused(gt_path, results, tmp_path, capsys):
    data = _gt_dataset()
    data["annotations"][1]["id"] = data["annotations"][0]["id"]
    with pytest.raises(ValueError, match="duplicate annotation id 1"):
        COCOEvaluator(data)
    ev = COCOEvaluator(gt_path)
    for field, value in (("bbox", [1.0, float("nan"), 3.0, 4.0]), ("score", float("inf")), ("score", "0.5")):
        bad = [*results[:5], dict(results[5], **{field: value})]
        with pytest.raises(ValueError, match=rf"result #5 \(image_id {results[5]['image_id']}\).*{field}"):
            ev.evaluate(bad, verbose=False)
    with pytest.raises(ValueError, match="must be a list of COCO results.*got an object"):
        ev.evaluate({"images": results}, verbose=False)
    pred = tmp_path / "obj.json"
    pred.write_text(json.dumps({"images": []}))
    assert evaluate_command.main(["--annotations", str(gt_path), "--predictions", str(pred)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "got an object" in err[0]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_faster_backend_result_set_matches_its_load_res_and_pycocotools(tmp_path, iou_type):
    # detkit builds faster-coco-eval's result set itself (one batched area call, no mask
    # boxes): same fields as the backend's own loadRes, same metrics as pycocotools, on
    # many images of all sizes with crowds (the generator of benchmarks/bench_coco_eval.py).
    import sys
    from pathlib import Path

    from faster_coco_eval import COCO as FasterCOCO

    from detkit.evaluation.coco_eval import _add_result_fields

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import bench_coco_eval

    gt, results = bench_coco_eval.make_data(60, 40, 6, iou_type, seed=3)
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    minimal = [{k: r[k] for k in ("image_id", "category_id", geometry, "score")} for r in results]
    ours = copy.deepcopy(minimal)
    _add_result_fields(ours, iou_type)
    theirs = FasterCOCO(copy.deepcopy(gt)).loadRes(copy.deepcopy(minimal)).dataset["annotations"]
    assert [(r["id"], r["iscrowd"], r["area"]) for r in ours] == [(r["id"], r["iscrowd"], r["area"]) for r in theirs]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    ref_stats, ref_precision = _pycocotools_stats(path, minimal, iou_type)
    assert ref_stats[0] > 0.1
    assert gc.isenabled()
    out = COCOEvaluator(path).evaluate(results, iou_type, backend="faster_coco_eval", verbose=False)
    assert gc.isenabled()  # paused during the evaluation only
    np.testing.assert_allclose(list(out.stats.values()), ref_stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.precision, ref_precision, rtol=0, atol=1e-12)
    with pytest.raises(ValueError):
        COCOEvaluator(path).evaluate([dict(results[0], image_id=-5)], iou_type, verbose=False)
    assert gc.isenabled()


def test_mask_results_must_be_compressed_rles_of_the_image_size(gt_path, results):
    # pycocotools and faster-coco-eval take a mask of another size silently (AP 0) and fail
    # on polygons / uncompressed counts without naming the result: one line naming it here.
    ev = COCOEvaluator(gt_path)
    rle = results[2]["segmentation"]
    small = mask_utils.encode(np.asfortranarray(mask_utils.decode(rle)[: H // 2, : W // 2]))
    cases = (
        ([[10, 10, 50, 10, 50, 50]], "segmentation must be a compressed RLE"),
        ({"size": [H, W], "counts": [0, 5, 10]}, "segmentation must be a compressed RLE"),
        ({"counts": rle["counts"]}, "segmentation 'size' must be \\[height, width\\]"),
        (small, rf"mask size \[{H // 2}, {W // 2}\] is not the image's \[height, width\] \[{H}, {W}\]"),
    )
    for backend in ("faster_coco_eval", "pycocotools"):
        for seg, message in cases:
            bad = [*results[:2], dict(results[2], segmentation=seg)]
            with pytest.raises(ValueError, match=rf"result #2 \(image_id {results[2]['image_id']}\): {message}"):
                ev.evaluate(bad, "segm", backend=backend, verbose=False)
        same = [*results[:2], dict(results[2], segmentation={"size": tuple(rle["size"]), "counts": rle["counts"]})]
        expected = ev.evaluate(results[:3], "segm", backend=backend, verbose=False).stats
        assert ev.evaluate(same, "segm", backend=backend, verbose=False).stats == expected  # a (h, w) tuple is a size
