"""detkit.analysis.anchors: objects the RPN's anchors reach, on boxes whose best anchor is known by hand.

faster_rcnn_tiny: one level (stride 8), anchor sizes 16 / 32 / 64, ratios 0.5 / 1 / 2, positive
IoU 0.7. An anchor of size s and ratio 1 centred on the grid point (8i, 8j) spans
[8i - s/2, 8j - s/2, 8i + s/2, 8j + s/2].
"""

import json

import torch

from detkit.analysis.anchors import anchor_coverage
from detkit.cli import main
from detkit.models import build_model
from detkit.utils.checkpoint import STATS_KEY


def dataset():
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 128, "height": 128},
            {"id": 2, "file_name": "b.png", "width": 256, "height": 256},
            {"id": 3, "file_name": "c.png"},
        ],  # fmt: skip
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "bar"}],
        "annotations": [
            # image 1 (not resized): the size-32 anchor at (16, 16) is this box exactly (IoU 1)
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 32, 32], "iscrowd": 0},
            # a 4 x 120 bar: the tallest anchor (46 x 90, ratio 2) overlaps it by IoU < 0.09
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [60, 4, 4, 120], "iscrowd": 0},
            # image 2 is halved to 128 x 128: 128 x 128 becomes 64 x 64, the size-64 anchor at (32, 32)
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 128, 128], "iscrowd": 0},
            # 100 x 100 becomes 50 x 50: best IoU 50^2 / 64^2 = 0.61 < 0.7
            {"id": 4, "image_id": 2, "category_id": 1, "bbox": [0, 0, 100, 100], "iscrowd": 0},
            {"id": 5, "image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50], "iscrowd": 1},  # crowd: left out
            {"id": 6, "image_id": 3, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},  # no image size
        ],
    }


def tiny_model():
    torch.manual_seed(0)
    return build_model("faster_rcnn_tiny", num_classes=2, min_size=128, max_size=1000).eval()


def test_objects_no_anchor_reaches_are_counted_in_the_models_input_pixels():
    out = anchor_coverage(tiny_model(), dataset())
    assert out["applies"] and out["fg_iou_threshold"] == 0.7
    assert out["anchor_sizes"] == [[16.0, 32.0, 64.0]] and out["aspect_ratios"] == [[0.5, 1.0, 2.0]]
    assert out["input_size"]["min_size"] == 128 and out["input_size"]["resized_sizes"] == [[128, 128, 2]]
    assert (out["objects"], out["unreached"], out["unsized_objects"]) == (4, 2, 1)
    assert out["unreached_share"] == 0.5
    assert out["unreached_per_class"] == {"square": [1, 3], "bar": [1, 1]}
    assert sum(out["size_histogram"]["reached"]) == 2 and sum(out["size_histogram"]["unreached"]) == 2
    assert sum(out["ratio_histogram"]["unreached"]) == 2


def test_models_with_external_proposals_have_no_anchors():
    model = build_model("fast_rcnn_tiny", num_classes=2)
    out = anchor_coverage(model, dataset())
    assert out["applies"] is False and "anchors do not apply" in out["reason"]


def test_cli_reads_the_training_checkpoint(tmp_path, capsys):
    model = tiny_model()
    stats = {"model_name": "faster_rcnn_tiny", "num_classes": 2, "model_kwargs": {"min_size": 128, "max_size": 1000}}
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, STATS_KEY: stats},
               tmp_path / "model.ckpt")  # fmt: skip
    (tmp_path / "gt.json").write_text(json.dumps(dataset()))
    args = ["analyze", "--annotations", str(tmp_path / "gt.json"), "--output", str(tmp_path / "report")]
    assert main([*args, "--checkpoint", str(tmp_path / "model.ckpt")]) == 0
    assert "2 of 4 objects (50.0%) reached by no anchor at IoU >= 0.7" in capsys.readouterr().out
    report = json.loads((tmp_path / "report" / "analysis.json").read_text())
    assert report["anchors"]["unreached"] == 2
    assert (tmp_path / "report" / "charts" / "anchor_sizes.png").stat().st_size > 1000
    assert "no anchor at IoU" in (tmp_path / "report" / "index.html").read_text()
    assert main([*args, "--checkpoint", str(tmp_path / "missing.ckpt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.ckpt" in err
