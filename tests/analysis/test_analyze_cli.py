"""`detkit analyze`: the files it writes, bad input, and the page in headless Chromium."""

import json
import os
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from detkit.cli import main

sys.path.insert(0, os.path.dirname(__file__))
from test_coco_errors import random_case, with_masks  # noqa: E402

from detkit.evaluation import COCOEvaluator  # noqa: E402


@pytest.fixture()
def files(tmp_path):
    gt, dets = random_case(5, n_images=6)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for img in gt["images"][1:]:  # the first image's file is missing
        cv2.imwrite(str(images / img["file_name"]), rng.integers(0, 255, (400, 400, 3), dtype=np.uint8))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dets))
    return tmp_path, gt, dets


def run(tmp_path, *args):
    return main(["analyze", "--annotations", str(tmp_path / "gt.json"), "--output", str(tmp_path / "report"), *args])


def test_report_files_and_numbers(files, capsys):
    tmp_path, gt, dets = files
    assert run(tmp_path, "--predictions", str(tmp_path / "dt.json"), "--images", str(tmp_path / "images")) == 0
    report = json.loads((tmp_path / "report" / "analysis.json").read_text())
    errors = report["errors"]
    assert set(errors["curves"]["all"]) == {"C75", "C50", "Loc", "Sim", "Oth", "BG", "FN"}
    assert errors["curves"]["all"]["FN"]["ap"] == 1.0
    assert len(errors["confusion"]["matrix"]) == 5  # 4 classes + background
    assert report["dataset"]["objects"] == sum(1 for a in gt["annotations"] if not a["iscrowd"])
    page = (tmp_path / "report" / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # nothing fetched
    for name in ("error_curves", "tide", "confusion", "objects_per_class", "box_sizes", "aspect_ratios"):
        assert (tmp_path / "report" / "charts" / f"{name}.png").stat().st_size > 1000
    drawn = report["worst_images"]
    assert drawn and all((tmp_path / "report" / "images").glob("*.jpg"))
    if any(1 == w["image_id"] for w in drawn):
        raise AssertionError("image 1 has no file and cannot be drawn")


def test_mask_results_get_a_mask_analysis(files, capsys):
    tmp_path, gt, dets = files
    gt, masks = with_masks(gt, dets)
    boxes_and_masks = [{**d, "segmentation": m["segmentation"]} for d, m in zip(dets, masks)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(boxes_and_masks))
    assert run(tmp_path, "--predictions", str(tmp_path / "dt.json")) == 0
    report = json.loads((tmp_path / "report" / "analysis.json").read_text())
    expected = COCOEvaluator(gt).evaluate(masks, "segm", verbose=False).stats
    assert report["segm"]["stats"] == pytest.approx(expected, abs=0)  # the same backend and numbers as evaluate
    assert report["errors"]["stats"]["AP"] != report["segm"]["stats"]["AP"]  # boxes analysed on their own
    assert report["segm"]["curves"]["all"]["C50"]["ap"] == expected["AP50"]
    for name in ("segm_error_curves", "segm_tide"):
        assert (tmp_path / "report" / "charts" / f"{name}.png").stat().st_size > 1000
    assert 'id="masks"' in (tmp_path / "report" / "index.html").read_text()
    # only some predictions with masks, or objects without segmentation: boxes only, said once
    (tmp_path / "some.json").write_text(json.dumps(boxes_and_masks[:-1] + dets[-1:]))
    assert run(tmp_path, "--predictions", str(tmp_path / "some.json")) == 0
    assert f"1 of {len(dets)} predictions have no mask: no mask analysis" in capsys.readouterr().err
    del gt["annotations"][0]["segmentation"]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    assert run(tmp_path, "--predictions", str(tmp_path / "dt.json")) == 0
    assert "has no segmentation: no mask analysis" in capsys.readouterr().err
    assert "segm" not in json.loads((tmp_path / "report" / "analysis.json").read_text())


def test_data_set_only(files):
    tmp_path, _, _ = files
    assert run(tmp_path) == 0
    report = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert "errors" not in report and report["dataset"]["images"] == 6


def test_bad_input_is_reported(files, capsys):
    tmp_path, gt, dets = files
    unknown_image = [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}]
    (tmp_path / "other_ids.json").write_text(json.dumps(dets + unknown_image))
    # image ids of other ground truth (e.g. `detkit predict` without --annotations): refused, as evaluate does
    assert run(tmp_path, "--predictions", str(tmp_path / "other_ids.json")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 image ids not in" in err and "--annotations" in err
    unknown_category = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}]
    (tmp_path / "bad.json").write_text(json.dumps(dets + unknown_category))
    assert run(tmp_path, "--predictions", str(tmp_path / "bad.json")) == 0
    assert "left out 1 predictions with 1 category ids not in the annotations: 3" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text("[]")
    assert run(tmp_path, "--predictions", str(tmp_path / "empty.json")) == 0
    assert "hold no detection" in capsys.readouterr().err
    (tmp_path / "obj.json").write_text("{}")
    assert run(tmp_path, "--predictions", str(tmp_path / "obj.json")) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert run(tmp_path, "--predictions", str(tmp_path / "missing.json")) == 2
    assert "predictions file not found" in capsys.readouterr().err


def test_missing_image_files_are_named(tmp_path):
    gt, dets = random_case(5, n_images=6)
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] == 1]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps([d for d in dets if d["image_id"] == 1]))
    (tmp_path / "images").mkdir()
    assert run(tmp_path, "--predictions", str(tmp_path / "dt.json"), "--images", str(tmp_path / "images")) == 0
    notes = json.loads((tmp_path / "report" / "analysis.json").read_text())["notes"]
    assert any("not in" in n and "1.png" in n for n in notes)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install -y chromium")
def test_page_in_headless_chromium(files):
    tmp_path, gt, dets = files
    gt, masks = with_masks(gt, dets)  # with a mask section too
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(
        json.dumps([{**d, "segmentation": m["segmentation"]} for d, m in zip(dets, masks)])
    )
    assert run(tmp_path, "--predictions", str(tmp_path / "dt.json"), "--images", str(tmp_path / "images")) == 0
    url = (tmp_path / "report" / "index.html").as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    picture = cv2.imread(str(shot))
    assert picture.shape[:2] == (2000, 1280) and picture.std() > 10  # not blank
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", url],
                         check=True, capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    title = dom.split("<title>")[1].split("</title>")[0]
    assert not title.startswith("JS-ERROR"), title  # window.onerror writes any script error into the title
    assert 'data-broken=""' in dom  # every <img> decoded (naturalWidth > 0)
    count = int(dom.split('data-images="')[1].split('"')[0])
    assert count >= 10 + len(json.loads((tmp_path / "report" / "analysis.json").read_text())["worst_images"])

    # the checks catch what they look for: a script error and a missing picture
    faults = '<img src="charts/missing.png"><script>undefinedFunction();</script></main>'
    broken = tmp_path / "report" / "broken.html"
    broken.write_text((tmp_path / "report" / "index.html").read_text().replace("</main>", faults))
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", broken.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert dom.split("<title>")[1].startswith("JS-ERROR") and 'data-broken="charts/missing.png"' in dom
