"""scripts/make_shapes_subset.py: the fine-tuning data of the README (some shapes classes, renamed or
renumbered on request)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_shapes_subset.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_shapes_subset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COCO = {
    "images": [{"id": 5, "file_name": "a.png", "width": 10, "height": 10}],
    "annotations": [
        {"id": 1, "image_id": 5, "category_id": 1, "bbox": [0, 0, 2, 2]},
        {"id": 2, "image_id": 5, "category_id": 2, "bbox": [1, 1, 2, 2]},
        {"id": 3, "image_id": 5, "category_id": 3, "bbox": [2, 2, 2, 2]},
    ],
    "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "rectangle"}, {"id": 3, "name": "triangle"}],
}


def test_subset_keeps_renames_and_renumbers(script):
    kept = script.subset(COCO, ["circle", "triangle"], {}, None)
    assert kept["categories"] == [{"id": 1, "name": "circle"}, {"id": 3, "name": "triangle"}]
    assert [(a["id"], a["category_id"]) for a in kept["annotations"]] == [(1, 1), (3, 3)]
    other = script.subset(COCO, ["circle", "triangle"], {"circle": "disk"}, [7, 2])
    assert other["categories"] == [{"id": 2, "name": "triangle"}, {"id": 7, "name": "disk"}]
    assert [(a["id"], a["category_id"]) for a in other["annotations"]] == [(1, 7), (3, 2)]
    assert other["images"] == COCO["images"]


def test_bad_arguments_are_one_line_errors(script, capsys):
    for argv, message in (
        (["--classes", "circle", "circle"], "repeated class"),
        (["--classes", "circle", "--category-ids", "1", "2"], "2 ids for 1 classes"),
        (["--classes", "circle", "--rename", "triangle=wedge"], "not in --classes"),
        (["--classes", "circle", "--rename", "circle"], "expected OLD=NEW"),
    ):
        with pytest.raises(SystemExit):
            script.parse_args(["--root", "x", *argv])
        assert message in capsys.readouterr().err


def test_writes_the_subset_next_to_generated_images(script, tmp_path):
    root = tmp_path / "sub"
    assert script.main(["--root", str(root), "--classes", "rectangle", "--train", "3", "--val", "2"]) == 0
    for split, count in (("train", 3), ("val", 2)):
        data = json.loads((root / split / script.OUTPUT_NAME).read_text())
        assert [c["name"] for c in data["categories"]] == ["rectangle"]
        assert len(data["images"]) == count and len(list((root / split / "images").glob("*.png"))) == count
        assert {a["category_id"] for a in data["annotations"]} <= {2}
