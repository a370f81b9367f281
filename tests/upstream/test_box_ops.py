"""Box operations against hand-checked values and torchvision.ops.

Mirrors torchvision `test/test_ops.py` box cases (`TestBoxIou`, `TestBoxArea`,
`TestBoxConvert`, `TestClipBoxesToImage` / `test_clip_boxes_to_image`,
`test_remove_small_boxes`) on detkit's own helpers.
"""

import pytest
import torch
from torchvision import ops

from detkit.structures import (
    batched_box_iou,
    box_area,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    remove_small_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)

BOXES = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 50.0, 50.0], [200.0, 200.0, 300.0, 300.0]])
EXPECTED_IOU = torch.tensor([[1.0, 0.25, 0.0], [0.25, 1.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64])
def test_iou_hand_values(dtype):
    boxes = BOXES.to(dtype)
    iou = box_iou(boxes, boxes)
    assert iou.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(iou, EXPECTED_IOU.to(iou.dtype), rtol=0, atol=1e-4)
    torch.testing.assert_close(batched_box_iou(boxes[None], boxes[None])[0], iou, rtol=0, atol=1e-6)


def test_iou_matches_torchvision_on_random_boxes():
    g = torch.Generator().manual_seed(0)
    a = ops.box_convert(torch.rand(40, 4, generator=g) * 100, "cxcywh", "xyxy")
    b = ops.box_convert(torch.rand(30, 4, generator=g) * 100, "cxcywh", "xyxy")
    torch.testing.assert_close(box_iou(a, b), ops.box_iou(a, b))
    torch.testing.assert_close(batched_box_iou(a[None], b[None])[0], ops.box_iou(a, b))


def test_batched_iou_of_padding_is_zero_not_nan():
    zeros = torch.zeros(1, 2, 4)
    assert (batched_box_iou(zeros, zeros) == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64])
def test_box_area(dtype):
    boxes = torch.tensor([[0, 0, 100, 100], [0, 0, 0, 0], [10, 15, 30, 35]], dtype=dtype)
    assert box_area(boxes).tolist() == [10000, 0, 400]
    assert torch.equal(box_area(boxes), ops.box_area(boxes))


def test_box_convert_round_trips_and_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    xyxy = ops.box_convert(torch.rand(20, 4, generator=g) * 50 + 1, "xywh", "xyxy")
    torch.testing.assert_close(xyxy_to_xywh(xyxy), ops.box_convert(xyxy, "xyxy", "xywh"))
    torch.testing.assert_close(xyxy_to_cxcywh(xyxy), ops.box_convert(xyxy, "xyxy", "cxcywh"))
    torch.testing.assert_close(xywh_to_xyxy(xyxy_to_xywh(xyxy)), xyxy)
    torch.testing.assert_close(cxcywh_to_xyxy(xyxy_to_cxcywh(xyxy)), xyxy)


def test_clip_boxes_matches_torchvision():
    boxes = torch.tensor([[-5.0, 3.0, 120.0, 40.0], [10.0, -2.0, 20.0, 90.0], [101.0, 81.0, 130.0, 95.0]])
    expected = ops.clip_boxes_to_image(boxes, (80, 100))
    assert torch.equal(clip_boxes(boxes, (80, 100)), expected)
    assert torch.equal(clip_boxes(boxes, torch.tensor([80, 100])), expected)


def test_remove_small_boxes_matches_torchvision():
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 0.5, 10.0], [1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 10.0, 0.9]])
    keep = remove_small_boxes(boxes, 1.0)
    assert torch.equal(torch.nonzero(keep).squeeze(1), ops.remove_small_boxes(boxes, 1.0))
