"""The engine asks the model whether it predicts keypoints: evaluation types and their metric names."""

import pytest

from detkit.engine.datamodule import ShapesDataModule
from detkit.engine.module import DetectionModule


def test_keypoint_models_evaluate_keypoints_by_default():
    assert DetectionModule("keypoint_rcnn_tiny", num_classes=3).eval_iou_types == ["bbox", "keypoints"]
    assert DetectionModule("faster_rcnn_tiny", num_classes=3).eval_iou_types == ["bbox"]
    with pytest.raises(ValueError, match="eval_iou_types contains 'keypoints' but faster_rcnn_tiny predicts no"):
        DetectionModule("faster_rcnn_tiny", num_classes=3, eval_iou_types=["bbox", "keypoints"])


def test_shapes_module_with_keypoints(tmp_path):
    dm = ShapesDataModule(str(tmp_path), num_train=2, num_val=2, image_size=64, keypoints=True, hflip_prob=1.0)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.train_dataset.flip_map == [0, 3, 2, 1]
    images, targets = next(iter(dm.train_dataloader()))
    boxes, points = targets[0]["boxes"], targets[0]["keypoints"]
    assert points.shape == (len(boxes), 4, 3)
    assert (points[:, 1, 0] == boxes[:, 2]).all() and (points[:, 3, 0] == boxes[:, 0]).all()  # flipped and swapped
