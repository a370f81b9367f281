"""Sampler, box coder, transform and target handling.

Mirrors torchvision `test/test_models_detection_utils.py` (`test_balanced_positive_negative_sampler`,
`test_box_linear_coder` (R-CNN coder round trip), `test_transform_copy_targets`,
`test_not_float_normalize`) and detectron2 `tests/modeling/test_box2box_transform.py`
(`test_reconstruction`, with the (5, 5, 10, 10) weights, plus clamped `apply_deltas`).
"""

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils

from detkit.matching import BalancedSampler, BoxCoder
from detkit.models import build_model
from detkit.models.transform import DetectionTransform


def test_balanced_sampler_counts_and_places():
    sampler = BalancedSampler(4, 0.25)
    # six negatives, three positives, two ignored
    labels = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 1, -1, -1]])
    pos, neg = sampler(labels, generator=torch.Generator().manual_seed(0))
    assert pos.sum() == 1 and pos[0, 6:9].sum() == 1
    assert neg.sum() == 3 and neg[0, :6].sum() == 3
    assert not (pos & neg).any() and not (pos | neg)[0, 9:].any()


def test_balanced_sampler_fills_with_negatives_when_positives_are_few():
    labels = torch.tensor([[1, 0, 0, 0, 0, 0, 0, 0], [0, 0, -1, -1, 0, 0, 0, 0]])
    pos, neg = BalancedSampler(4, 0.5)(labels)
    assert pos.sum(1).tolist() == [1, 0]
    assert neg.sum(1).tolist() == [3, 4]


def _random_boxes(n, seed, scale=100.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * scale
    return torch.cat([xy, xy + 1 + torch.rand(n, 2, generator=g) * scale], 1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0), (5.0, 5.0, 10.0, 10.0)])
def test_box_coder_round_trip_and_torchvision(weights):
    boxes, refs = _random_boxes(200, 0), _random_boxes(200, 1)
    coder = BoxCoder(weights)
    deltas = coder.encode(boxes, refs)
    torch.testing.assert_close(coder.decode(deltas, refs), boxes, rtol=0, atol=1e-3)
    tv = tv_utils.BoxCoder(weights)
    torch.testing.assert_close(deltas, tv.encode_single(boxes, refs), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(coder.decode(deltas, refs), tv.decode_single(deltas, refs), rtol=0, atol=1e-4)


def test_box_coder_clamps_growth():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    ref = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    out = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), ref)  # exp(100) would overflow
    assert torch.isfinite(out).all()
    side = out[0, 2] - out[0, 0]
    assert math.isclose(side.item(), 10 * 1000 / 16, rel_tol=1e-5)


def test_model_does_not_modify_targets():
    model = build_model("mask_rcnn_tiny", num_classes=3).train()
    masks = torch.zeros(1, 64, 80, dtype=torch.uint8)
    masks[0, 10:40, 10:50] = 1
    target = {"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([1]), "masks": masks}
    copy = {k: v.clone() for k, v in target.items()}
    model([torch.rand(3, 64, 80)], [target])
    assert all(torch.equal(target[k], copy[k]) for k in copy)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_not_float_images_are_refused(dtype):
    with pytest.raises(ValueError, match=r"images\[0\] must be a float tensor with values in 0\.\.1"):
        DetectionTransform()([torch.zeros(3, 20, 20, dtype=dtype)])
