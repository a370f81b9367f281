"""scripts/compare_rcnn_family.py runs end to end, `rcnn_alexnet` included, on a few shapes images.

About 10-20 s on 2 CPU cores (one AlexNet step of 128 regions at 227 x 227). No timing is
asserted; the point is that the lineage comparison of the README keeps working and
says what differs between the models besides the shared schedule.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "compare_rcnn_family.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("compare_rcnn_family", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defaults_keep_the_tiny_lineage_and_reject_unknown_models(script):
    assert script.parse_args([]).models == ["rcnn_tiny", "fast_rcnn_tiny", "faster_rcnn_tiny"]
    assert script.parse_args(["--models", "rcnn_alexnet"]).models == ["rcnn_alexnet"]
    with pytest.raises(SystemExit):
        script.parse_args(["--models", "rcnn_resnet9000"])


def test_output_is_json_for_json_and_markdown_for_md(script, tmp_path, capsys):
    raw = {"args": {"train_steps": 1}, "rows": [{"model": "rcnn_tiny", "AP": 0.25}], "settings": {"rcnn_tiny": {}}}
    text = "| model | AP |\n|---|---|\n| rcnn_tiny | 25.0 |\n"
    script.write_output(str(tmp_path / "x.json"), text, raw)
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8")) == raw  # plain JSON, no Markdown around it
    script.write_output(str(tmp_path / "x.md"), text, raw)
    md = (tmp_path / "x.md").read_text(encoding="utf-8")
    assert md.startswith(text) and json.loads(md.split("```json\n")[1].split("```")[0]) == raw
    assert script.parse_args(["--output", "r.JSON"]).output == "r.JSON"
    with pytest.raises(SystemExit):  # refused before any training, not after it
        script.parse_args(["--output", "results.txt"])
    assert "--output results.txt: the name must end in .json (JSON) or .md (Markdown)" in capsys.readouterr().err


def test_differing_lists_only_settings_that_differ(script):
    settings = {"a": {"crop_size": 64, "dropout": 0.0, "box_features": "fc7"}, "b": {"crop_size": 227, "dropout": 0.0}}
    assert script.differing(settings) == ["crop_size: a=64, b=227", "box_features: a=fc7, b=-"]


def test_rcnn_alexnet_beside_rcnn_tiny_on_the_same_schedule(script, tmp_path):
    out = tmp_path / "table.md"
    argv = ["--root", str(tmp_path / "shapes"), "--models", "rcnn_tiny", "rcnn_alexnet", "--train-steps", "1"]
    argv += ["--warmup-steps", "1", "--batch-size", "2", "--train-images", "4", "--val-images", "2"]
    assert script.main([*argv, "--workers", "1", "--output", str(out)]) == 0

    text = out.read_text(encoding="utf-8")
    raw = json.loads(text.split("```json\n")[1].split("```")[0])
    rows = {r["model"]: r for r in raw["rows"]}
    assert list(rows) == ["rcnn_tiny", "rcnn_alexnet"]
    for r in rows.values():
        assert all(0.0 <= r[k] <= 1.0 or r[k] == -1.0 for k in ("AP", "AP50"))  # COCO's -1: no detections scored
        assert 0.0 <= r["VOC07_mAP"] <= 1.0
        assert r["train_s_per_iter"] > 0 and r["model_s_per_image"] > 0 and r["proposal_s_per_image"] > 0
        assert math.isclose(r["test_s_per_image"], r["model_s_per_image"] + r["proposal_s_per_image"])

    # the paper's network with its own settings, from the model's defaults
    alex, tiny = raw["settings"]["rcnn_alexnet"], raw["settings"]["rcnn_tiny"]
    assert (alex["backbone"], alex["crop_size"], alex["context_padding"]) == ("AlexNet", 227, 16.0)
    assert alex["dropout"] == 0.5 and alex["box_features"] == "pool5"
    assert (tiny["crop_size"], tiny["dropout"]) == (64, 0.0)
    assert alex["regions_per_step"] == tiny["regions_per_step"] == 128
    assert alex["parameters_M"] > 50 > tiny["parameters_M"]
    # the output says what differs, and times relative to the first model of the run
    assert "- crop_size: rcnn_tiny=64, rcnn_alexnet=227" in text
    assert "- dropout: rcnn_tiny=0.0, rcnn_alexnet=0.5" in text
    assert "regions_per_step" not in text.split("per-model settings that differ")[1].split("```json")[0]
    assert "| rcnn_tiny | 1.00 | 1.00 | 1.00 |" in text
    assert "| train s/iter / rcnn_tiny |" in text and "| rcnn_alexnet |" in text
