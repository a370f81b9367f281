import pytest
import torch

from detkit.matching import Matcher

# G = 3 ground truths (rows) x P = 3 predictions (columns).
IOU = torch.tensor(
    [
        [0.8, 0.4, 0.1],
        [0.2, 0.5, 0.6],
        [0.1, 0.2, 0.35],
    ]
)


def test_hand_computed_labels_without_low_quality():
    matched, labels = Matcher(0.7, 0.3)(IOU[None])
    # best IoUs per prediction: 0.8 (gt 0) -> positive, 0.5 and 0.6 (gt 1) -> ignore
    assert labels.tolist() == [[1, -1, -1]]
    assert matched.tolist() == [[0, 0, 0]]
    assert matched.dtype == torch.int64


def test_hand_computed_labels_with_low_quality():
    matched, labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(IOU[None])
    # gt 1 and gt 2 both have their best IoU at prediction 2; it takes gt 1 (0.6 > 0.35)
    assert labels.tolist() == [[1, -1, 1]]
    assert matched.tolist() == [[0, 0, 1]]


def test_low_quality_ties_all_become_positive():
    iou = torch.tensor([[[0.1, 0.3, 0.3, 0.05]]])
    matched, labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    assert labels.tolist() == [[0, 1, 1, 0]]
    assert matched.tolist() == [[0, 0, 0, 0]]
    zero_iou = torch.zeros(1, 1, 3)  # a gt overlapping nothing creates no match
    assert Matcher(0.7, 0.3, allow_low_quality_matches=True)(zero_iou)[1].tolist() == [[0, 0, 0]]


def test_equal_thresholds_have_no_ignore_band():
    matched, labels = Matcher(0.5, 0.5)(IOU[None])
    assert labels.tolist() == [[1, 1, 1]]
    assert matched.tolist() == [[0, 1, 1]]
    _, labels = Matcher(0.7, 0.7)(IOU[None])
    assert labels.tolist() == [[1, 0, 0]]


def test_empty_gt_image_next_to_non_empty_one():
    iou = torch.stack([IOU, torch.zeros(3, 3)])
    valid = torch.tensor([[True, True, True], [False, False, False]])
    matched, labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou, valid)
    assert labels.tolist() == [[1, -1, 1], [0, 0, 0]]
    assert matched.tolist() == [[0, 0, 1], [0, 0, 0]]
    matched, labels = Matcher(0.7, 0.3)(torch.zeros(2, 0, 4))
    assert labels.shape == (2, 4) and not labels.any() and not matched.any()


def test_padded_gt_is_never_matched():
    iou = torch.tensor([[[0.9, 0.1], [0.95, 0.99], [0.0, 0.0]]])  # gt 1 is padding
    valid = torch.tensor([[True, False, True]])
    for low_quality in (False, True):
        matched, labels = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou, valid)
        assert labels.tolist() == [[1, 0]]
        assert matched.tolist() == [[0, 0]]


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match="gt_valid"):
        Matcher(0.7, 0.3)(IOU[None], torch.ones(1, 2, dtype=torch.bool))
