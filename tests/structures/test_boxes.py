import math

import pytest
import torch
from torchvision.ops import box_iou as tv_box_iou

from detkit.structures import (
    batched_box_iou,
    box_area,
    box_iou,
    clip_boxes,
    cxcywh_to_xyxy,
    remove_small_boxes,
    validate_boxes,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)


def _random_boxes(*shape, generator=None):
    xy = torch.rand(*shape, 2, generator=generator) * 50
    wh = torch.rand(*shape, 2, generator=generator) * 20 + 1
    return torch.cat([xy, xy + wh], dim=-1)


def test_format_conversions_hand_values():
    xyxy = torch.tensor([[1.0, 2.0, 5.0, 10.0]])
    assert torch.equal(xyxy_to_xywh(xyxy), torch.tensor([[1.0, 2.0, 4.0, 8.0]]))
    assert torch.equal(xyxy_to_cxcywh(xyxy), torch.tensor([[3.0, 6.0, 4.0, 8.0]]))
    assert torch.equal(xywh_to_xyxy(torch.tensor([[1.0, 2.0, 4.0, 8.0]])), xyxy)
    assert torch.equal(cxcywh_to_xyxy(torch.tensor([[3.0, 6.0, 4.0, 8.0]])), xyxy)


def test_format_round_trips_keep_leading_dims():
    boxes = _random_boxes(2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(xywh_to_xyxy(xyxy_to_xywh(boxes)), boxes, atol=1e-5)
    assert torch.allclose(cxcywh_to_xyxy(xyxy_to_cxcywh(boxes)), boxes, atol=1e-5)
    assert xyxy_to_cxcywh(boxes).shape == (2, 3, 4)


def test_box_area():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 1.0, 5.0]])
    assert torch.equal(box_area(boxes), torch.tensor([6.0, 0.0]))


def test_clip_boxes_with_tuple_and_per_box_sizes():
    boxes = torch.tensor([[-5.0, -1.0, 30.0, 8.0], [2.0, 3.0, 4.0, 50.0]])
    assert torch.equal(clip_boxes(boxes, (10, 20)), torch.tensor([[0.0, 0.0, 20.0, 8.0], [2.0, 3.0, 4.0, 10.0]]))
    sizes = torch.tensor([[5, 25], [40, 3]])  # (h, w) per box, int64 like ImageBatch.image_sizes
    expected = torch.tensor([[0.0, 0.0, 25.0, 5.0], [2.0, 3.0, 3.0, 40.0]])
    assert torch.equal(clip_boxes(boxes, sizes), expected)


def test_remove_small_boxes_is_a_mask():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 5.0], [0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 5.0, 0.5], [0, 0, 2.0, 2.0]])
    assert remove_small_boxes(boxes, 2.0).tolist() == [False, True, False, True]


def test_box_iou_hand_value_and_float32_under_autocast():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [5.0, 5.0, 6.0, 6.0]])
    assert torch.allclose(box_iou(a, b), torch.tensor([[1 / 7, 0.0]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = box_iou(a.bfloat16(), b.bfloat16())
    assert out.dtype == torch.float32


def test_batched_box_iou_matches_per_image_iou():
    gen = torch.Generator().manual_seed(1)
    a, b = _random_boxes(2, 3, generator=gen), _random_boxes(2, 5, generator=gen)
    out = batched_box_iou(a, b)
    assert out.shape == (2, 3, 5) and out.dtype == torch.float32
    for i in range(2):
        assert torch.allclose(out[i], tv_box_iou(a[i], b[i]), atol=1e-6)


def test_batched_box_iou_zero_padding_gives_zero_not_nan():
    a = torch.zeros(1, 2, 4)
    a[0, 0] = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0]]])
    out = batched_box_iou(a, b)
    assert torch.equal(out, torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert batched_box_iou(a.bfloat16(), b.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError):
        batched_box_iou(a[0], b[0])


def test_batched_box_iou_of_a_nan_box_is_zero():
    # a diverged model's NaN proposals must not turn the matcher's IoU into NaN
    a = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [0.0, math.nan, 2.0, 2.0]]])
    b = torch.tensor([[[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]]])
    assert torch.equal(batched_box_iou(a, b), torch.tensor([[[1.0, 1.0 / 7.0], [0.0, 0.0]]]))


def test_validate_boxes():
    validate_boxes(torch.zeros(0, 4))
    validate_boxes(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), require_positive=True)
    with pytest.raises(ValueError, match=r"gt_boxes must have shape \[\.\.\., 4\], got \(2, 3\)"):
        validate_boxes(torch.zeros(2, 3), "gt_boxes")
    with pytest.raises(ValueError, match="non-finite"):
        validate_boxes(torch.tensor([[0.0, 0.0, math.nan, 1.0]]))
    with pytest.raises(ValueError, match="floating"):
        validate_boxes(torch.zeros(1, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="x2 > x1"):
        validate_boxes(torch.tensor([[0.0, 0.0, 1.0, 1.0], [3.0, 0.0, 1.0, 1.0]]), require_positive=True)


def test_xywh_to_xyxy_of_coco_json_boxes():
    json_boxes = [[1.0, 2.0, 4.0, 8.0], [0.5, 0.25, 2.0, 3.0]]
    out = xywh_to_xyxy(torch.tensor(json_boxes))
    assert out.dtype == torch.float32 and out.tolist() == [[1.0, 2.0, 5.0, 10.0], [0.5, 0.25, 2.5, 3.25]]
