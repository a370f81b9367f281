"""`detkit evaluate` at its joints with `detkit predict` and with the data sets: predict's own image ids
are mapped by file name or refused, never scored as they are; the ground truth is refused where `fit`
refuses it; a missing `iscrowd` is 0 on both backends; a VOC folder counts the images validation counts."""

import json

import cv2
import numpy as np
import pytest

from detkit.cli import main

BOX_A, BOX_B = [10.0, 10.0, 30.0, 40.0], [50.0, 60.0, 20.0, 20.0]


def _ground_truth(tmp_path, images, **extra_ann):
    """GT json: `images` is [(id, file_name, box)], one object of category 1 per image."""
    gt = {
        "images": [{"id": i, "file_name": name, "width": 100, "height": 100} for i, name, _ in images],
        "annotations": [
            {"id": k, "image_id": i, "category_id": 1, "bbox": box, "area": box[2] * box[3], "iscrowd": 0, **extra_ann}
            for k, (i, _, box) in enumerate(images, 1)
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def _predict_output(tmp_path, files, image_ids="sequential", annotations=None):
    """A `detkit predict` output folder: `files` is [(file_name, box)], numbered 1..N in that order,
    one detection (score 0.9, category 1) per file."""
    out = tmp_path / "out"
    out.mkdir()
    dets = [{"image_id": i, "category_id": 1, "bbox": box, "score": 0.9} for i, (_, box) in enumerate(files, 1)]
    meta = {
        "checkpoint": "model.onnx",
        "image_ids": image_ids,
        **({"annotations": str(annotations)} if annotations else {}),
        "images": [{"id": i, "file_name": name, "width": 100, "height": 100} for i, (name, _) in enumerate(files, 1)],
        "categories": [{"id": 1, "name": "thing"}],
        "skipped": [],
    }
    (out / "detections.json").write_text(json.dumps(dets))
    (out / "images.json").write_text(json.dumps(meta))
    return out


def _ap(tmp_path, args, capsys):
    code = main(["evaluate", *args, "--output", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    ap = json.loads((tmp_path / "m.json").read_text())["stats"]["AP"] if code == 0 else None
    return code, ap, err


def test_predict_ids_are_mapped_to_the_ground_truths_by_file_name(tmp_path, capsys):
    # predict numbered b.png 1 and sub/a.png 2; the ground truth numbers them the other way round
    gt = _ground_truth(tmp_path, [(1, "sub/a.png", BOX_A), (2, "b.png", BOX_B)])
    out = _predict_output(tmp_path, [("b.png", BOX_B), ("sub/a.png", BOX_A)])
    for predictions in (out, out / "detections.json"):  # the folder, or the json with images.json beside it
        code, ap, err = _ap(tmp_path, ["--annotations", str(gt), "--predictions", str(predictions)], capsys)
        assert code == 0 and ap == pytest.approx(1.0)  # perfect detections (the old code: 0.0)
        assert "numbered by `detkit predict` mapped to" in err and "by file name (2 images)" in err


def test_base_name_match_and_unmatched_files_are_counted(tmp_path, capsys):
    gt = _ground_truth(tmp_path, [(5, "images/a.png", BOX_A)])
    out = _predict_output(tmp_path, [("a.png", BOX_A), ("z.png", BOX_B)])
    code, ap, err = _ap(tmp_path, ["--annotations", str(gt), "--predictions", str(out)], capsys)
    assert code == 0 and ap == pytest.approx(1.0)
    assert "1 of 2 predicted files match no file_name" in err and "'z.png'" in err and "1 detections" in err


def test_ids_without_images_json_not_in_the_ground_truth_are_refused(tmp_path, capsys):
    gt = _ground_truth(tmp_path, [(10, "a.png", BOX_A), (20, "b.png", BOX_B)])
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": BOX_A, "score": 0.9}]))
    code, _, err = _ap(tmp_path, ["--annotations", str(gt), "--predictions", str(dets)], capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "1 image ids not in" in err and f"pass --annotations {gt}" in err


def test_ids_from_other_annotations_are_refused(tmp_path, capsys):
    gt = _ground_truth(tmp_path, [(1, "b.png", BOX_B), (2, "a.png", BOX_A)])
    out = _predict_output(tmp_path, [("a.png", BOX_A), ("b.png", BOX_B)], "annotations", tmp_path / "old.json")
    code, _, err = _ap(tmp_path, ["--annotations", str(gt), "--predictions", str(out)], capsys)
    assert code == 1 and "'a.png' has image id 1, but image id 2 in" in err and "pass --annotations" in err
    (out / "images.json").write_text(json.dumps({**json.loads((out / "images.json").read_text()), "image_ids": None}))
    code, _, err = _ap(tmp_path, ["--annotations", str(gt), "--predictions", str(out)], capsys)
    assert code == 1 and "pass --annotations" in err  # an images.json without the key is checked the same way


def test_unknown_category_id_in_the_ground_truth_is_an_error(tmp_path, capsys):
    gt = _ground_truth(tmp_path, [(1, "a.png", BOX_A), (2, "b.png", BOX_B)])
    data = json.loads(gt.read_text())
    data["annotations"][1]["category_id"] = 9
    gt.write_text(json.dumps(data))
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": BOX_A, "score": 0.9}]))
    code, _, err = _ap(tmp_path, ["--annotations", str(gt), "--predictions", str(dets)], capsys)
    assert code == 2  # the old code dropped the annotation and scored AP 1.0
    assert (
        err.strip() == f"detkit evaluate: error: invalid annotations file {gt}: annotation id 2: unknown category id 9"
    )


@pytest.mark.parametrize("backend", ["faster_coco_eval", "pycocotools"])
def test_missing_iscrowd_is_zero_on_both_backends_and_said_once(tmp_path, capsys, backend):
    gt = _ground_truth(tmp_path, [(1, "a.png", BOX_A), (2, "b.png", BOX_B)])
    data = json.loads(gt.read_text())
    for ann in data["annotations"]:
        del ann["iscrowd"]
    gt.write_text(json.dumps(data))
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": BOX_A, "score": 0.9}]))
    code, ap, err = _ap(tmp_path, ["--annotations", str(gt), "--predictions", str(dets), "--backend", backend], capsys)
    # one of two objects found at every IoU threshold: precision 1 up to recall 0.5 -> AP 51/101
    assert code == 0 and ap == pytest.approx(51 / 101)  # pycocotools: a KeyError traceback before
    assert err.count("have no 'iscrowd'") == 1 and "2 annotations" in err


def test_voc_root_counts_the_images_validation_counts(tmp_path, capsys, caplog):
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    names = ["000001", "000002", "000003"]
    for name in names:
        size = 50 if name == "000003" else 100  # 000003's XML size differs from its image: the data set skips it
        (root / "Annotations" / f"{name}.xml").write_text(
            f"<annotation><size><width>{size}</width><height>{size}</height></size><object><name>a</name>"
            "<difficult>0</difficult><bndbox><xmin>11</xmin><ymin>11</ymin><xmax>40</xmax><ymax>40</ymax>"
            "</bndbox></object></annotation>"
        )
        cv2.imwrite(str(root / "JPEGImages" / f"{name}.jpg"), np.zeros((100, 100, 3), np.uint8))
    (root / "ImageSets" / "Main" / "test.txt").write_text("\n".join(names) + "\n")
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9}]))
    args = ["--metric", "voc07", "--voc-root", str(root), "--class-names", "a", "--predictions", str(dets)]
    assert main(["evaluate", *args, "--output", str(tmp_path / "m.json")]) == 0
    captured = capsys.readouterr()
    # 2 objects, 1 found: recall 0.5 at precision 1 -> 6 of the 11 points (the old code: 3 objects, 4/11)
    assert json.loads((tmp_path / "m.json").read_text())["mAP"] == pytest.approx(6 / 11)
    assert "IoU > 0.5, 2 images" in captured.out
    assert "skipped 0 invalid objects, 1 invalid files and 0 unreadable images" in caplog.text  # the data set's line


def test_analyze_maps_predict_ids_as_evaluate_does(tmp_path, capsys):
    gt = _ground_truth(tmp_path, [(1, "sub/a.png", BOX_A), (2, "b.png", BOX_B)])
    out = _predict_output(tmp_path, [("b.png", BOX_B), ("sub/a.png", BOX_A)])
    report = tmp_path / "report"
    assert main(["analyze", "--annotations", str(gt), "--predictions", str(out), "--output", str(report)]) == 0
    assert "by file name (2 images)" in capsys.readouterr().err
    assert json.loads((report / "analysis.json").read_text())["errors"]["stats"]["AP"] == pytest.approx(1.0)
