"""select_detections (the post-processing of every detector) on a hand-checked case."""

import torch

from detkit.heads.postprocess import select_detections


def _inputs():
    # 3 RoIs x 2 classes; RoIs 0, 1 in image 0 (h 20, w 30), RoI 2 in image 1 (h 50, w 50)
    boxes = torch.tensor(
        [
            [[-5.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]],  # class 1 clipped to [0, 0, 10, 10]
            [[1.0, 0.0, 11.0, 10.0], [1.0, 0.0, 11.0, 10.0]],  # class 1 overlaps RoI 0's (IoU 0.82)
            [[40.0, 40.0, 60.0, 45.0], [5.0, 5.0, 5.005, 20.0]],  # clipped; too thin
        ]
    )
    scores = torch.tensor([[0.875, 0.03125], [0.75, 0.625], [0.5, 0.9375]])
    return boxes, scores, torch.tensor([0, 0, 1]), torch.tensor([[20, 30], [50, 50]])


def _select(k):
    boxes, scores, batch_idx, sizes = _inputs()
    return select_detections(
        boxes, scores, batch_idx, sizes,
        score_threshold=0.05, min_box_size=0.01, nms_threshold=0.5, detections_per_image=k,
    )  # fmt: skip


def test_select_detections_clips_thresholds_suppresses_per_class_and_groups_by_image():
    dets = _select(10)
    # dropped: RoI 0 class 2 (score under 0.05), RoI 1 class 1 (NMS with RoI 0 class 1), RoI 2 class 2 (0.005 wide)
    assert dets.num_images == 2 and dets.batch_idx.tolist() == [0, 0, 1]
    assert dets.scores.tolist() == [0.875, 0.625, 0.5] and dets.labels.tolist() == [1, 2, 1]
    assert dets.boxes.tolist() == [[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [40.0, 40.0, 50.0, 45.0]]


def test_select_detections_keeps_the_best_per_image():
    dets = _select(1)
    assert dets.batch_idx.tolist() == [0, 1] and dets.scores.tolist() == [0.875, 0.5]
    assert [len(d["boxes"]) for d in dets.split()] == [1, 1]


def test_select_detections_without_candidates():
    boxes, scores, batch_idx, sizes = _inputs()
    dets = select_detections(
        boxes, scores * 0, batch_idx, sizes,
        score_threshold=0.05, min_box_size=0.01, nms_threshold=0.5, detections_per_image=10,
    )  # fmt: skip
    assert dets.boxes.shape == (0, 4) and [len(d["scores"]) for d in dets.split()] == [0, 0]
