"""COCO keypoint AP (OKS) through COCOEvaluator, against pycocotools / faster-coco-eval run directly
on the same json; the results json's keypoints; `detkit evaluate --iou-type keypoints`."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO as FCOCO
from faster_coco_eval import COCOeval_faster
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detkit.cli import evaluate as evaluate_command
from detkit.evaluation import COCOEvaluator, detections_to_coco_results
from detkit.evaluation.coco_eval import COCO_PERSON_SIGMAS, KEYPOINT_STAT_NAMES

H, W = 120, 160


def make_data(num_keypoints, seed=0, sigmas=None):
    """Ground truth (3 images, categories 4 and 9) and noisy predictions of it, plus false positives."""
    rng = np.random.default_rng(seed)
    names = [f"p{i}" for i in range(num_keypoints)]
    cats = [{"id": 4, "name": "a", "keypoints": names}, {"id": 9, "name": "b", "keypoints": names}]
    if sigmas is not None:
        for c in cats:
            c["keypoint_sigmas"] = sigmas
    images = [{"id": i, "file_name": f"{i}.png", "height": H, "width": W} for i in (3, 5, 8)]
    anns, results = [], []
    for img in images:
        for _ in range(3):
            x0, y0 = rng.uniform(0, 80), rng.uniform(0, 60)
            w, h = rng.uniform(20, 70), rng.uniform(20, 50)
            xs, ys = rng.uniform(x0, x0 + w, num_keypoints), rng.uniform(y0, y0 + h, num_keypoints)
            v = rng.choice([0, 1, 2], num_keypoints, p=[0.2, 0.3, 0.5])
            kp = np.stack([np.where(v > 0, xs, 0), np.where(v > 0, ys, 0), v], 1).round(2)
            cat = int(rng.choice([4, 9]))
            anns.append({
                "id": len(anns) + 1, "image_id": img["id"], "category_id": cat, "bbox": [x0, y0, w, h],
                "area": w * h * 0.7, "iscrowd": 0, "keypoints": kp.reshape(-1).tolist(),
                "num_keypoints": int((v > 0).sum()),
            })  # fmt: skip
            noise = rng.normal(0, rng.uniform(0.5, 6), (num_keypoints, 2))
            pred = np.concatenate([np.stack([xs, ys], 1) + noise, np.ones((num_keypoints, 1))], 1)
            results.append({
                "image_id": img["id"], "category_id": cat, "bbox": [x0, y0, w, h],
                "score": float(rng.uniform(0.3, 1)), "keypoints": pred.reshape(-1).tolist(),
            })  # fmt: skip
        fp = np.concatenate([rng.uniform(0, 100, (num_keypoints, 2)), np.ones((num_keypoints, 1))], 1)
        results.append({
            "image_id": img["id"], "category_id": 4, "bbox": [1, 1, 9, 9], "score": float(rng.uniform(0, 0.5)),
            "keypoints": fp.reshape(-1).tolist(),
        })  # fmt: skip
    return {"images": images, "annotations": anns, "categories": cats}, results


def pycocotools_stats(gt_dict, results, sigmas=None):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = copy.deepcopy(gt_dict)
        gt.createIndex()
        dt = gt.loadRes(copy.deepcopy(results))
        e = COCOeval(gt, dt, "keypoints")
        if sigmas is not None:
            e.params.kpt_oks_sigmas = np.asarray(sigmas)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats)


def faster_stats(gt_dict, results, sigmas=None):
    gt = FCOCO(copy.deepcopy(gt_dict))
    dt = gt.loadRes(copy.deepcopy(results))
    e = COCOeval_faster(gt, dt, "keypoints", print_function=lambda *a, **k: None, kpt_oks_sigmas=sigmas)
    e.evaluate()
    e.accumulate()
    e.summarize()
    return np.asarray(e.stats)[:10]


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
@pytest.mark.parametrize("num_keypoints", [4, 17])
def test_keypoint_ap_equals_the_reference(backend, num_keypoints):
    gt, results = make_data(num_keypoints)
    ours = COCOEvaluator(gt).evaluate(results, "keypoints", backend=backend, verbose=False)
    assert list(ours.stats) == list(KEYPOINT_STAT_NAMES)
    # defaults: COCO's person sigmas for 17 keypoints (pycocotools' own default), else 0.1 each
    sigmas = None if num_keypoints == 17 else [0.1] * num_keypoints
    ref = pycocotools_stats(gt, results, sigmas)
    np.testing.assert_allclose(list(ours.stats.values()), ref, atol=1e-12)
    np.testing.assert_allclose(faster_stats(gt, results, sigmas or list(COCO_PERSON_SIGMAS)), ref, atol=1e-12)
    assert 0.05 < ours.stats["AP"] < 0.95  # a test with something to tell apart


def test_sigmas_from_categories_or_given():
    sigmas = [0.03, 0.2, 0.05, 0.08]
    gt, results = make_data(4, seed=1, sigmas=sigmas)
    ref = pycocotools_stats(gt, results, sigmas)
    ours = COCOEvaluator(gt).evaluate(results, "keypoints", verbose=False)
    np.testing.assert_allclose(list(ours.stats.values()), ref, atol=1e-12)
    given = [0.05] * 4
    ours = COCOEvaluator(gt).evaluate(results, "keypoints", verbose=False, kpt_sigmas=given)
    np.testing.assert_allclose(list(ours.stats.values()), pycocotools_stats(gt, results, given), atol=1e-12)
    with pytest.raises(ValueError, match="keypoint sigmas must be 4 positive numbers"):
        COCOEvaluator(gt).evaluate(results, "keypoints", verbose=False, kpt_sigmas=[0.1] * 3)


def test_missing_num_keypoints_and_keypoints_filled_in():
    gt, results = make_data(4, seed=2)
    ref = pycocotools_stats(gt, results, [0.1] * 4)
    for a in gt["annotations"]:
        del a["num_keypoints"]  # counted from v > 0, as COCO writes it
    extra = {"id": 99, "image_id": 3, "category_id": 4, "bbox": [0, 0, 5, 5], "area": 25, "iscrowd": 0}
    gt["annotations"].append(extra)  # no keypoints: ignored, as COCO's num_keypoints = 0
    ours = COCOEvaluator(gt).evaluate(results, "keypoints", verbose=False)
    np.testing.assert_allclose(list(ours.stats.values()), ref, atol=1e-12)
    assert "keypoints" not in extra  # the caller's dicts are not changed


def test_bad_keypoint_results_and_ground_truth_without_keypoints():
    gt, results = make_data(4)
    results[2]["keypoints"] = results[2]["keypoints"][:9]
    with pytest.raises(ValueError, match=r"result #2 \(image_id 3\): keypoints must be 12 finite numbers"):
        COCOEvaluator(gt).evaluate(results, "keypoints", verbose=False)
    plain = {**gt, "categories": [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]}
    with pytest.raises(ValueError, match="needs ground-truth categories that name their 'keypoints'"):
        COCOEvaluator(plain).evaluate(results, "keypoints", verbose=False)


def test_results_json_carries_keypoints():
    det = {
        "boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0], [0.0, 0.0, 5.0, 5.0]]),
        "scores": torch.tensor([0.9, 0.4]),
        "labels": torch.tensor([2, 1]),
        "keypoints": torch.tensor([[[11.0, 21.0, 1.0], [30.0, 50.0, 1.0]], [[1.0, 2.0, 1.0], [3.0, 4.0, 1.0]]]),
        "keypoints_scores": torch.tensor([[2.5, -1.0], [0.5, 0.25]]),
    }
    out = detections_to_coco_results([7], [det], label_to_category_id={1: 4, 2: 9})
    assert out[0] == {
        "image_id": 7, "category_id": 9, "bbox": [10.0, 20.0, 30.0, 40.0], "score": pytest.approx(0.9),
        "keypoints": [11.0, 21.0, 1.0, 30.0, 50.0, 1.0], "keypoints_scores": [2.5, -1.0],
    }  # fmt: skip
    assert out[1]["keypoints"] == [1.0, 2.0, 1.0, 3.0, 4.0, 1.0]
    json.dumps(out)
    with pytest.raises(ValueError, match=r"keypoints must be Tensor\[2, P, 3\]"):
        detections_to_coco_results([7], [{**det, "keypoints": det["keypoints"][:1]}], label_to_category_id=[4, 9])


def test_evaluate_command_keypoints(tmp_path, capsys):
    gt, results = make_data(4, seed=3)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(results))
    argv = ["--annotations", str(tmp_path / "gt.json"), "--predictions", str(tmp_path / "pred.json")]
    assert evaluate_command.main([*argv, "--iou-type", "keypoints", "--output", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "maxDets= 20" in out and "area= small" not in out
    stats = json.loads((tmp_path / "m.json").read_text())["stats"]
    np.testing.assert_allclose(list(stats.values()), pycocotools_stats(gt, results, [0.1] * 4), atol=1e-12)
    assert evaluate_command.main([*argv, "--iou-type", "keypoints", "--kpt-sigmas", "0.05,0.05,0.05,0.05"]) == 0
    assert evaluate_command.main([*argv, "--iou-type", "keypoints", "--kpt-sigmas", "a,b"]) == 2
    assert "--kpt-sigmas must be comma-separated numbers" in capsys.readouterr().err


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_results_without_boxes(backend):
    gt, results = make_data(4, seed=4)
    for r in results:
        del r["bbox"]  # the backends then take the area from the box around the points
    ours = COCOEvaluator(gt).evaluate(results, "keypoints", backend=backend, verbose=False)
    np.testing.assert_allclose(list(ours.stats.values()), pycocotools_stats(gt, results, [0.1] * 4), atol=1e-12)


def test_categories_with_different_keypoints_refused_for_keypoints_only():
    gt, results = make_data(4, seed=5)
    gt["categories"][1]["keypoints"] = ["q0", "q1", "q2", "q3"]
    evaluator = COCOEvaluator(gt)
    assert evaluator.evaluate(results, "bbox", verbose=False).stats["AP"] >= 0  # boxes: evaluable
    with pytest.raises(ValueError, match="category id 9 names other keypoints"):
        evaluator.evaluate(results, "keypoints", verbose=False)
