"""Confusion matrix on hand-made cases."""

import numpy as np

from detkit.analysis import analyze_coco_errors, confusion_matrix
from detkit.evaluation import COCOEvaluator


def case(objects, dets):
    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    anns = [{"id": i + 1, "image_id": img, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": crowd}
            for i, (img, c, b, crowd) in enumerate(objects)]  # fmt: skip
    images = [{"id": i, "width": 300, "height": 300} for i in (1, 2)]
    gt = {"images": images, "categories": cats, "annotations": anns}
    results = [{"image_id": img, "category_id": c, "bbox": b, "score": s} for img, c, b, s in dets]
    return analyze_coco_errors(COCOEvaluator(gt), results).matches


def test_confusion_matrix_by_hand():
    A, B, C = [0, 0, 20, 20], [100, 100, 20, 20], [200, 200, 40, 40]
    m = case(
        [(1, 1, A, 0), (1, 2, B, 0), (2, 1, A, 0), (2, 2, C, 1)],
        [
            (1, 1, A, 0.9),  # a as a
            (1, 1, [100, 100, 20, 18], 0.8),  # b as a (IoU 0.9)
            (1, 2, [50, 50, 10, 10], 0.7),  # background as b
            (1, 2, [0, 0, 20, 19], 0.2),  # below the score threshold: not counted
            (2, 2, [210, 210, 10, 10], 0.9),  # inside a crowd: not counted
            (2, 2, [0, 0, 20, 20], 0.6),  # on image 2's a, but the same-class detection below takes it first:
            (2, 1, [0, 0, 20, 20], 0.5),  # a as a, and the one above counts as background as b
        ],
    )
    cm = confusion_matrix(m, score_threshold=0.3, iou_threshold=0.5)
    # rows: true a, b, background; columns: predicted a, b, background
    expected = np.array([[2, 0, 0], [1, 0, 0], [0, 2, 0]])
    np.testing.assert_array_equal(cm.matrix, expected)
    np.testing.assert_array_equal(cm.image_false_positives, [1, 1])
    np.testing.assert_array_equal(cm.image_missed, [0, 0])


def test_missed_objects_in_the_last_column():
    m = case([(1, 1, [0, 0, 20, 20], 0), (1, 2, [50, 50, 20, 20], 0)], [(1, 1, [0, 0, 20, 20], 0.9)])
    cm = confusion_matrix(m)
    np.testing.assert_array_equal(cm.matrix, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    assert cm.image_missed.tolist() == [1, 0]
