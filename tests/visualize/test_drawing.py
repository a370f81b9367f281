"""Drawing detections and curves with OpenCV."""

import cv2
import numpy as np
import pytest
import torch

from detkit.engine.callbacks import plot_training_curves, read_metrics_csv
from detkit.visualize import class_colour, draw_detections, plot_curves, save_png


def test_draw_boxes_labels_and_threshold():
    image = torch.zeros(3, 100, 120)
    boxes = torch.tensor([[10.0, 20.0, 60.0, 80.0], [70.0, 10.0, 110.0, 50.0]])
    out = draw_detections(
        image,
        boxes,
        torch.tensor([1, 2]),
        torch.tensor([0.9, 0.2]),
        class_names=["a", "b"],
        score_threshold=0.5,
        min_side=0,
    )
    assert out.shape == (100, 120, 3) and out.dtype == np.uint8
    assert tuple(out[50, 10]) == class_colour(1)  # left edge of the kept box, in its class colour
    assert out[30, 110].sum() == 0  # right edge of the box under the threshold: not drawn
    assert out[50, 35].sum() == 0  # box interior untouched


def test_small_images_are_enlarged_and_masks_blended():
    image = np.full((64, 64, 3), 100, np.uint8)
    masks = np.zeros((1, 64, 64), np.uint8)
    masks[0, 20:40, 20:40] = 1
    out = draw_detections(image, [[18, 18, 42, 42]], [3], [0.8], masks, min_side=256, mask_alpha=0.5)
    assert out.shape == (256, 256, 3)  # factor 4
    inside, outside = out[30 * 4 + 2, 30 * 4 + 2], out[5, 5]
    expected = np.rint(100 * 0.5 + np.asarray(class_colour(3)) * 0.5)
    assert np.abs(inside.astype(int) - expected).max() <= 1
    assert tuple(outside) == (100, 100, 100)


def test_draw_rejects_mismatched_masks():
    with pytest.raises(ValueError, match="mask shape"):
        draw_detections(np.zeros((10, 10, 3), np.uint8), [[0, 0, 5, 5]], [1], [1.0], np.zeros((1, 8, 8), np.uint8))


def test_save_png_roundtrip(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    save_png(path, image)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


def test_plot_curves_draws_each_series(tmp_path):
    img = plot_curves(
        {"a": ([0, 1, 2], [3.0, 2.0, 1.0]), "b": ([0, 2], [1.0, float("nan")])}, tmp_path / "c.png", title="t"
    )
    assert img.shape == (560, 900, 3) and (tmp_path / "c.png").is_file()
    colour_a = np.asarray(class_colour(1))
    assert (np.abs(img.astype(int) - colour_a).sum(axis=2) < 10).sum() > 100  # the line of series "a"


def test_training_curves_from_csv(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text(
        "epoch,step,train/loss,val/AP,val/loss\n"
        "0,9,2.0,,\n0,19,1.5,,\n0,19,,0.25,1.7\n1,29,1.0,,\n1,39,0.8,,\n1,39,,0.5,1.2\n"
    )
    cols = read_metrics_csv(csv)
    assert cols["train/loss"][0] == [9.0, 19.0, 29.0, 39.0]
    assert cols["val/AP"] == ([19.0, 39.0], [0.0, 1.0], [0.25, 0.5])
    written = plot_training_curves(csv, tmp_path)
    assert [p.rsplit("/", 1)[1] for p in written] == ["loss_curve.png", "val_metrics.png"]


def test_keypoints_and_skeleton_drawn():
    image = torch.zeros(3, 100, 120)
    boxes = torch.tensor([[10.0, 10.0, 110.0, 90.0]])
    keypoints = torch.tensor([[[30.0, 50.0, 1.0], [90.0, 50.0, 1.0], [60.0, 20.0, 0.0]]])  # the third: not shown
    kwargs = dict(class_names=["a"], min_side=0, keypoints=keypoints)
    with_lines = draw_detections(
        image, boxes, torch.tensor([1]), torch.tensor([0.9]), skeleton=[(0, 1), (1, 2)], **kwargs
    )
    colour = class_colour(1)
    assert tuple(with_lines[50, 30]) == colour and tuple(with_lines[50, 90]) == colour  # the points' centres
    assert tuple(with_lines[50, 60]) == colour  # the line between the two shown points
    assert with_lines[20, 60].sum() == 0 and with_lines[35, 75].sum() == 0  # v = 0: no point, no line to it
    assert tuple(with_lines[47, 30]) == (255, 255, 255)  # the white rim around a point (radius 2 + 1)
    no_lines = draw_detections(image, boxes, torch.tensor([1]), torch.tensor([0.9]), **kwargs)
    assert no_lines[50, 60].sum() == 0
    with pytest.raises(ValueError, match=r"keypoints must be \[D, P, 3\] for 1 boxes"):
        draw_detections(image, boxes, torch.tensor([1]), keypoints=keypoints[0])
