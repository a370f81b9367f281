import pytest
import torch

from detkit.structures import Detections, ImageBatch, PackedTargets


def _targets(with_masks=False):
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 5.0]]), "labels": torch.tensor([3, 1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {
            "boxes": torch.tensor([[2.0, 2.0, 6.0, 7.0]], dtype=torch.float64),
            "labels": torch.tensor([2], dtype=torch.int32),
        },
    ]
    if with_masks:
        targets[0]["masks"] = torch.ones(2, 6, 5, dtype=torch.bool)
        targets[1]["masks"] = torch.zeros(0, 4, 4, dtype=torch.uint8)
        targets[2]["masks"] = torch.ones(1, 8, 9, dtype=torch.uint8)
    return targets


def test_from_list_packs_and_casts():
    packed = PackedTargets.from_list(_targets())
    assert packed.num_images == 3
    assert packed.boxes.dtype == torch.float32 and packed.boxes.shape == (3, 4)
    assert packed.labels.dtype == torch.int64 and packed.labels.tolist() == [3, 1, 2]
    assert packed.batch_idx.tolist() == [0, 0, 2]
    assert packed.per_image_counts().tolist() == [2, 0, 1]
    assert packed.masks is None


def test_from_list_keeps_masks_per_image():
    packed = PackedTargets.from_list(_targets(with_masks=True))
    assert [tuple(m.shape) for m in packed.masks] == [(2, 6, 5), (0, 4, 4), (1, 8, 9)]
    assert all(m.dtype == torch.uint8 for m in packed.masks)
    moved = packed.to("cpu")
    assert moved.masks[2].shape == (1, 8, 9) and moved.num_images == 3


def test_padded_layout():
    packed = PackedTargets.from_list(_targets())
    boxes, labels, valid = packed.padded()
    assert boxes.shape == (3, 2, 4) and labels.shape == (3, 2) and valid.shape == (3, 2)
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    assert labels.tolist() == [[3, 1], [0, 0], [2, 0]]
    assert torch.equal(boxes[0], packed.boxes[:2])
    assert torch.equal(boxes[2, 0], packed.boxes[2]) and torch.equal(boxes[2, 1], torch.zeros(4))
    assert boxes[1].abs().sum() == 0
    assert packed.padded_index().tolist() == [[0, 1], [-1, -1], [2, -1]]


def test_padded_layout_with_unsorted_batch_idx():
    packed = PackedTargets(
        boxes=torch.arange(12, dtype=torch.float32).reshape(3, 4),
        labels=torch.tensor([5, 6, 7]),
        batch_idx=torch.tensor([1, 0, 1]),
        num_images=2,
    )
    boxes, labels, valid = packed.padded()
    assert labels.tolist() == [[6, 0], [5, 7]]
    assert valid.tolist() == [[True, False], [True, True]]
    assert torch.equal(boxes[1, 1], packed.boxes[2])
    assert packed.position_in_image().tolist() == [0, 0, 1]


def test_padded_with_no_boxes_and_empty_batch():
    packed = PackedTargets.from_list([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2)
    boxes, labels, valid = packed.padded()
    assert boxes.shape == (2, 0, 4) and labels.shape == (2, 0) and valid.shape == (2, 0)
    empty = PackedTargets.from_list([])
    assert empty.num_images == 0 and empty.padded()[0].shape == (0, 0, 4)


@pytest.mark.parametrize(
    "index,key,value,message",
    [
        (1, "boxes", torch.zeros(2, 5), r"targets\[1\]\['boxes'\] must be a float Tensor\[K, 4\], got shape \(2, 5\)"),
        (0, "boxes", torch.zeros(2, 4, dtype=torch.int64), r"targets\[0\]\['boxes'\].*dtype torch.int64"),
        (
            0,
            "labels",
            torch.zeros(3, dtype=torch.int64),
            r"targets\[0\]\['labels'\] must be an integer Tensor\[2\], got shape \(3,\)",
        ),
        (0, "labels", torch.zeros(2), r"targets\[0\]\['labels'\].*torch.float32"),
        (
            2,
            "masks",
            torch.zeros(2, 4, 4),
            r"targets\[2\]\['masks'\] must be a Tensor\[1, H, W\], got shape \(2, 4, 4\)",
        ),
    ],
)
def test_from_list_errors_name_index_and_key(index, key, value, message):
    targets = _targets(with_masks=key == "masks")
    targets[index][key] = value
    with pytest.raises(ValueError, match=message):
        PackedTargets.from_list(targets)


def test_from_list_rejects_missing_keys_and_partial_masks():
    with pytest.raises(ValueError, match=r"targets\[0\] is missing the key 'labels'"):
        PackedTargets.from_list([{"boxes": torch.zeros(0, 4)}])
    targets = _targets(with_masks=True)
    del targets[1]["masks"]
    with pytest.raises(ValueError, match="all images or for none"):
        PackedTargets.from_list(targets)


def test_detections_split_keeps_empty_images():
    dets = Detections(
        boxes=torch.arange(16, dtype=torch.float32).reshape(4, 4),
        scores=torch.tensor([0.9, 0.8, 0.7, 0.6]),
        labels=torch.tensor([1, 2, 3, 4]),
        batch_idx=torch.tensor([2, 0, 2, 0]),
        num_images=3,
        mask_probs=torch.arange(4, dtype=torch.float32).reshape(4, 1, 1),
    )
    out = dets.to("cpu").split()
    assert len(out) == 3
    assert out[0]["labels"].tolist() == [2, 4] and out[2]["labels"].tolist() == [1, 3]
    assert out[1]["boxes"].shape == (0, 4) and out[1]["mask_probs"].shape == (0, 1, 1)
    assert torch.equal(out[2]["boxes"], dets.boxes[[0, 2]])
    assert out[0]["mask_probs"].flatten().tolist() == [1.0, 3.0]
    assert set(out[0]) == {"boxes", "scores", "labels", "mask_probs"}


def test_detections_split_with_per_image_mask_list():
    masks = [torch.zeros(1, 3, 3), torch.zeros(0, 5, 2)]
    dets = Detections(
        boxes=torch.zeros(1, 4),
        scores=torch.ones(1),
        labels=torch.ones(1, dtype=torch.long),
        batch_idx=torch.zeros(1, dtype=torch.long),
        num_images=2,
        masks=masks,
    )
    out = dets.split()
    assert out[0]["masks"].shape == (1, 3, 3) and out[1]["masks"].shape == (0, 5, 2)
    no_masks = Detections(
        boxes=dets.boxes, scores=dets.scores, labels=dets.labels, batch_idx=dets.batch_idx, num_images=2
    )
    assert "masks" not in no_masks.split()[0]


def test_image_batch_from_tensors_pads_and_records_sizes():
    images = [torch.ones(3, 5, 7), torch.full((3, 9, 4), 2.0)]
    batch = ImageBatch.from_tensors(images, size_divisible=4)
    assert batch.tensor.shape == (2, 3, 12, 8)
    assert batch.image_sizes.tolist() == [[5, 7], [9, 4]] and batch.image_sizes.dtype == torch.int64
    assert torch.equal(batch.original_sizes, batch.image_sizes)
    assert batch.tensor[0, :, :5, :7].eq(1).all() and batch.tensor[0, :, 5:].eq(0).all()
    assert batch.tensor[1, :, :9, :4].eq(2).all() and batch.tensor[1, :, :, 4:].eq(0).all()
    assert batch.to("cpu").padded_size == (12, 8) and batch.num_images == 2
    with pytest.raises(ValueError, match="image_sizes"):
        ImageBatch(tensor=torch.zeros(2, 3, 4, 4), image_sizes=torch.zeros(1, 2), original_sizes=torch.zeros(2, 2))
