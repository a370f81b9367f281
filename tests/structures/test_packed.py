"""Packed-tensor helpers on tiny hand-checked cases."""

import pytest
import torch

from detkit.structures import Detections, PackedTargets, hw_to_whwh, pad_images
from detkit.structures.packed import (
    count_per_image,
    count_values,
    image_starts,
    pack_to_padded,
    position_in_image,
    resize_boxes,
    scale_factors,
    take_rows,
    top_k_per_image,
)


def test_counts_starts_and_positions():
    batch_idx = torch.tensor([0, 0, 2, 2, 2])
    counts = count_per_image(batch_idx, 4)
    assert counts.tolist() == [2, 0, 3, 0]
    assert image_starts(counts).tolist() == [0, 2, 2, 5]
    assert position_in_image(batch_idx, counts, grouped=True).tolist() == [0, 1, 0, 1, 2]
    unsorted = torch.tensor([2, 0, 2, 1, 0])  # any order: rank among the rows of the same image
    assert position_in_image(unsorted, count_per_image(unsorted, 3)).tolist() == [0, 0, 1, 0, 1]
    empty = torch.zeros(0, dtype=torch.int64)
    assert count_per_image(empty, 2).tolist() == [0, 0]
    assert position_in_image(empty, count_per_image(empty, 2)).numel() == 0


def test_pack_to_padded():
    boxes = torch.arange(12.0).reshape(3, 4)  # rows 0 in image 0; rows 1, 2 in image 2; image 1 empty
    batch_idx = torch.tensor([0, 2, 2])
    padded, valid, slot = pack_to_padded(boxes, batch_idx, 3)
    assert padded.shape == (3, 2, 4) and slot.tolist() == [0, 0, 1]
    assert valid.tolist() == [[True, False], [False, False], [True, True]]
    assert torch.equal(padded[0, 0], boxes[0]) and torch.equal(padded[2], boxes[1:])
    assert padded[0, 1].eq(0).all() and padded[1].eq(0).all()
    assert torch.equal(padded[batch_idx, slot], boxes)  # slot maps back
    # other trailing shapes, no rows at all
    scores, valid, _ = pack_to_padded(torch.tensor([0.5, 0.75]), torch.tensor([1, 1]), 2)
    assert scores.tolist() == [[0.0, 0.0], [0.5, 0.75]] and valid.tolist() == [[False, False], [True, True]]
    padded, valid, slot = pack_to_padded(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 2)
    assert padded.shape == (2, 0, 4) and valid.shape == (2, 0) and slot.numel() == 0


def test_top_k_per_image():
    # indices already in score order (as batched_nms returns them), images interleaved
    order = torch.tensor([7, 3, 9, 1, 4, 8, 2])
    batch_idx = torch.tensor([1, 0, 1, 1, 0, 1, 2])
    out = top_k_per_image(order, batch_idx, 2)
    assert out.tolist() == [3, 4, 7, 9, 2]  # grouped by image, best first inside each
    assert top_k_per_image(order, batch_idx, 10).tolist() == [3, 4, 7, 9, 1, 8, 2]
    assert top_k_per_image(order, batch_idx, 0).numel() == 0
    empty = torch.zeros(0, dtype=torch.int64)
    assert top_k_per_image(empty, empty, 3).numel() == 0


def test_take_rows_and_hw_to_whwh():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1, 1], [2, 2], [3, 3]])
    a2, b2 = take_rows(torch.tensor([2, 0]), a, b)
    assert a2.tolist() == [3.0, 1.0] and b2.tolist() == [[3, 3], [1, 1]]
    (a3,) = take_rows(a > 1.5, a)
    assert a3.tolist() == [2.0, 3.0]
    assert hw_to_whwh(torch.tensor([[10, 20], [3, 4]])).tolist() == [[20, 10, 20, 10], [4, 3, 4, 3]]


def test_resize_boxes_scales_each_image_and_round_trips_up_to_float_rounding():
    small = torch.tensor([[100, 200], [50, 50]])  # (h, w)
    large = torch.tensor([[200, 300], [100, 25]])
    assert scale_factors(small, large).tolist() == [[1.5, 2.0, 1.5, 2.0], [0.5, 2.0, 0.5, 2.0]]
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [4.0, 6.0, 8.0, 10.0], [0.0, 0.0, 50.0, 50.0]])
    batch_idx = torch.tensor([0, 1, 1])
    out = resize_boxes(boxes, batch_idx, small, large)
    assert out.tolist() == [[15.0, 40.0, 45.0, 80.0], [2.0, 12.0, 4.0, 20.0], [0.0, 0.0, 25.0, 100.0]]
    # factors like 800 / 333 are not exact in float32: the way back is close, not equal
    odd = torch.tensor([[333, 517]])
    wide = torch.tensor([[800, 1242]])
    b = torch.rand(200, 4, generator=torch.Generator().manual_seed(0)) * 300
    zeros = torch.zeros(200, dtype=torch.int64)
    back = resize_boxes(resize_boxes(b, zeros, odd, wide), zeros, wide, odd)
    torch.testing.assert_close(back, b, rtol=1e-6, atol=1e-4)


def _dets(**extra):
    return Detections(
        boxes=torch.tensor([[-5.0, 2.0, 30.0, 12.0], [1.0, 1.0, 4.0, 4.0], [0.0, 0.0, 50.0, 90.0]]),
        scores=torch.tensor([0.875, 0.75, 0.625]),
        labels=torch.tensor([1, 2, 3]),
        batch_idx=torch.tensor([0, 1, 1]),
        num_images=2,
        **extra,
    )


def test_packed_rows_index_every_field_at_once():
    dets = _dets(mask_probs=torch.arange(3.0).reshape(3, 1, 1))
    sub = dets[torch.tensor([2, 0])]
    assert sub.scores.tolist() == [0.625, 0.875] and sub.labels.tolist() == [3, 1] and sub.batch_idx.tolist() == [1, 0]
    assert sub.mask_probs.flatten().tolist() == [2.0, 0.0] and torch.equal(sub.boxes, dets.boxes[[2, 0]])
    assert sub.num_images == 2
    assert dets[dets.scores > 0.7].labels.tolist() == [1, 2]  # bool masks and slices too
    assert dets[1:].batch_idx.tolist() == [1, 1]
    assert _dets()[torch.tensor([1])].mask_probs is None  # unset fields stay unset
    pasted = _dets(masks=[torch.zeros(1, 20, 30), torch.zeros(2, 40, 40)])
    with pytest.raises(ValueError, match="Detections with per-image masks cannot be indexed by row"):
        pasted[torch.tensor([0])]


def test_packed_targets_index_every_row_field_as_packed_rows():
    targets = PackedTargets.from_list(
        [
            {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([3, 1])},
            {"boxes": torch.tensor([[2.0, 2.0, 5.0, 6.0]]), "labels": torch.tensor([2])},
        ]
    )
    assert targets.max_per_image == 2
    sub = targets[targets.labels != 1]
    assert sub.labels.tolist() == [3, 2] and sub.batch_idx.tolist() == [0, 1]
    assert sub.boxes.tolist() == [[0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 5.0, 6.0]]
    assert sub.num_images == 2 and sub.max_per_image is None  # counted again by padded()
    boxes, labels, valid = sub.padded()
    assert boxes.shape == (2, 1, 4) and labels.tolist() == [[3], [2]] and valid.all()
    repeated = targets[torch.tensor([2, 2, 2])]  # more rows of one image than before
    assert repeated.padded()[0].shape == (2, 3, 4)
    resized = targets.resize(torch.tensor([[10, 10], [10, 10]]), torch.tensor([[20, 10], [10, 5]]))
    assert resized.boxes.tolist() == [[0.0, 0.0, 4.0, 8.0], [1.0, 2.0, 9.0, 18.0], [1.0, 2.0, 2.5, 6.0]]
    masks = [torch.zeros(2, 10, 10, dtype=torch.uint8), torch.zeros(1, 10, 10, dtype=torch.uint8)]
    with pytest.raises(ValueError, match="PackedTargets with per-image masks cannot be indexed by row"):
        PackedTargets(
            boxes=targets.boxes, labels=targets.labels, batch_idx=targets.batch_idx, num_images=2, masks=masks
        )[:1]


def test_count_values_counts_each_value():
    levels = torch.tensor([2, 0, 2, 1, 2])  # e.g. the FPN level of each RoI
    assert count_values(levels, 4).tolist() == [1, 1, 3, 0]
    assert count_values(levels[:0], 2).tolist() == [0, 0]


def test_packed_rows_clip_and_resize():
    dets = _dets()
    sizes = torch.tensor([[10, 20], [60, 40]])  # (h, w) of image 0 and 1
    clipped = dets.clip(sizes)
    assert clipped.boxes.tolist() == [[0.0, 2.0, 20.0, 10.0], [1.0, 1.0, 4.0, 4.0], [0.0, 0.0, 40.0, 60.0]]
    assert torch.equal(clipped.scores, dets.scores)
    resized = dets.resize(sizes, sizes * 2)
    assert torch.equal(resized.boxes, dets.boxes * 2)


def test_detections_hold_pasted_masks_apart_from_probabilities():
    with pytest.raises(ValueError, match="mask_probs must have 3 rows"):
        _dets(mask_probs=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="per-detection masks go in mask_probs"):
        _dets(masks=torch.zeros(3, 4, 4))
    out = _dets(mask_probs=torch.zeros(3, 4, 4), masks=[torch.zeros(1, 8, 8), torch.ones(2, 9, 9)]).split()
    assert set(out[1]) == {"boxes", "scores", "labels", "masks"} and out[1]["masks"].shape == (2, 9, 9)


def test_pad_images():
    images = [torch.ones(3, 5, 7), torch.full((3, 2, 9), 2.0)]
    batch = pad_images(images, size_divisible=4, pad_value=-1.0)
    assert batch.shape == (2, 3, 8, 12)
    assert batch[0, :, :5, :7].eq(1).all() and batch[0, :, 5:].eq(-1).all() and batch[0, :, :, 7:].eq(-1).all()
    assert batch[1, :, :2, :9].eq(2).all() and batch[1, :, 2:].eq(-1).all()
    assert pad_images(images).shape == (2, 3, 5, 9)
