"""Anchor generation and IoU matching.

Mirrors torchvision `test/test_models_detection_anchor_utils.py` (`test_incorrect_anchors`,
`test_anchor_generator`) and detectron2 `tests/modeling/test_anchor_generator.py`
(`test_default_anchor_generator`) and `tests/modeling/test_matcher.py` (the RPN matcher case
of `test_scriptability`), plus a randomised comparison with torchvision's `Matcher`.
"""

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils

from detkit.matching import AnchorGenerator, Matcher


def test_incorrect_anchor_configuration_raises():
    with pytest.raises(ValueError, match="one entry per level"):
        AnchorGenerator(((2, 4, 8), (32, 8)), ((0.5, 1.0),), (4, 8))
    with pytest.raises(ValueError, match="expected 2 feature sizes"):
        AnchorGenerator(((32,), (64,)), (1.0,), (4, 8))([(5, 5)], device="cpu")


def test_anchor_generator_15x15_stride_5():
    gen = AnchorGenerator(((10,),), ((1.0,),), (5,))
    (anchors,) = gen([(3, 3)], device="cpu", image_size=(15, 15))
    expected = torch.tensor([[x - 5.0, y - 5.0, x + 5.0, y + 5.0] for y in (0.0, 5.0, 10.0) for x in (0.0, 5.0, 10.0)])
    assert torch.equal(anchors, expected)


def test_detectron2_default_anchor_generator_per_location():
    gen = AnchorGenerator(((32, 64),), ((0.25, 1.0, 4.0),), (4,))
    (anchors,) = gen([(1, 2)], device="cpu")
    # detectron2's anchors at the two locations (its order is size-major, detkit's ratio-major)
    first = torch.tensor(
        [
            [-32.0, -8.0, 32.0, 8.0],
            [-16.0, -16.0, 16.0, 16.0],
            [-8.0, -32.0, 8.0, 32.0],
            [-64.0, -16.0, 64.0, 16.0],
            [-32.0, -32.0, 32.0, 32.0],
            [-16.0, -64.0, 16.0, 64.0],
        ]
    )
    second = first + torch.tensor([4.0, 0.0, 4.0, 0.0])

    def rows(t):
        return sorted(map(tuple, t.tolist()))

    assert rows(anchors[:6]) == rows(first) and rows(anchors[6:]) == rows(second)


def test_detectron2_rpn_matcher_case():
    iou = torch.tensor([[0.15, 0.45, 0.2, 0.6], [0.3, 0.65, 0.05, 0.1], [0.05, 0.4, 0.25, 0.4]])
    matched, labels = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou[None])
    assert labels[0].tolist() == [-1, 1, 0, 1]
    positive = labels[0] == 1
    assert matched[0][positive].tolist() == [1, 0]  # detectron2: matches [1, 1, 2, 0]


@pytest.mark.parametrize("low_quality", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_matcher_equals_torchvision_on_random_iou(low_quality, seed):
    g = torch.Generator().manual_seed(seed)
    iou = (torch.rand(6, 50, generator=g) * 1.1 - 0.05).clamp(0, 1)
    iou = torch.round(iou * 20) / 20  # ties, as between equal anchors
    tv = tv_utils.Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou)
    matched, labels = Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)(iou[None])
    tv_labels = torch.where(tv >= 0, 1, torch.where(tv == tv_utils.Matcher.BELOW_LOW_THRESHOLD, 0, -1))
    assert torch.equal(labels[0], tv_labels)
    assert torch.equal(matched[0][tv >= 0], tv[tv >= 0])
