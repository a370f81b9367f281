import torch
from torchvision import tv_tensors

from detkit.data import build_transforms, collate_detection


def sample(h=10, w=20):
    image = tv_tensors.Image(torch.arange(3 * h * w, dtype=torch.uint8).reshape(3, h, w))
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 2:5, 1:4] = 1
    masks[1, 0:10, 10:20] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            [[1, 2, 4, 5], [10, 0, 20, 10]],
            format="XYXY",
            canvas_size=(h, w),
            dtype=torch.float32,
        ),
        "labels": torch.tensor([3, 1]),
        "iscrowd": torch.tensor([0, 1], dtype=torch.uint8),
        "masks": tv_tensors.Mask(masks),
        "image_id": 7,
        "orig_size": (h, w),
    }
    return image, target


def test_flip_moves_boxes_and_masks():
    image, target = sample()
    tf = build_transforms(True, min_size=None, hflip_prob=1.0)
    out_image, out = tf(image, target)
    # x -> W - x with W = 20: [1, 4] -> [16, 19], [10, 20] -> [0, 10]
    assert out["boxes"].tolist() == [[16, 2, 19, 5], [0, 0, 10, 10]]
    assert out_image.dtype == torch.float32 and torch.allclose(out_image * 255, image.flip(-1).float())
    assert torch.equal(out["masks"], target["masks"].flip(-1))
    _, xs = torch.nonzero(out["masks"][0], as_tuple=True)
    assert (xs.min().item(), xs.max().item() + 1) == (16, 19)
    assert out["labels"].tolist() == [3, 1] and out["image_id"] == 7 and out["orig_size"] == (10, 20)


def test_eval_resize_shortest_side_with_cap():
    image, target = sample(10, 20)
    out_image, out = build_transforms(False, min_size=20, max_size=30)(image, target)
    # shorter side 10 -> 20 would make the longer 40 > 30: scale = 30 / 20 = 1.5
    assert out_image.shape == (3, 15, 30) and out["masks"].shape == (2, 15, 30)
    assert torch.allclose(out["boxes"], torch.tensor([[1.5, 3, 6, 7.5], [15, 0, 30, 15]]))
    assert out["boxes"].canvas_size == (15, 30)


def test_scale_jitter_picks_from_sizes_and_no_resize_when_none():
    torch.manual_seed(0)
    tf = build_transforms(True, min_size=(10, 20), max_size=None, hflip_prob=0.0, color_jitter=0.5)
    heights = {tf(*sample())[0].shape[1] for _ in range(12)}
    assert heights == {10, 20}
    out_image, _ = build_transforms(False, min_size=None)(*sample())
    assert out_image.shape == (3, 10, 20)
    assert build_transforms(False, min_size=(10, 20))(*sample())[0].shape == (3, 20, 40)


def test_sanitize_drops_degenerate_boxes_with_labels_masks_iscrowd():
    image, target = sample()
    target["boxes"] = tv_tensors.BoundingBoxes([[1, 2, 4, 5], [10, 3, 10.5, 10]], format="XYXY", canvas_size=(10, 20))
    _, out = build_transforms(False, min_size=None)(image, target)
    assert out["boxes"].tolist() == [[1, 2, 4, 5]]
    assert out["labels"].tolist() == [3] and out["iscrowd"].tolist() == [0] and len(out["masks"]) == 1


def test_collate_gives_lists_of_plain_tensors():
    a, ta = build_transforms(False, min_size=None)(*sample(10, 20))
    b, tb = sample(6, 8)
    tb["boxes"] = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(6, 8))
    tb["labels"], tb["iscrowd"] = (
        torch.zeros(0, dtype=torch.int64),
        torch.zeros(0, dtype=torch.uint8),
    )
    tb["masks"] = tv_tensors.Mask(torch.zeros(0, 6, 8, dtype=torch.uint8))
    images, targets = collate_detection([(a, ta), (b, tb)])
    assert [tuple(i.shape) for i in images] == [(3, 10, 20), (3, 6, 8)]
    assert all(type(i) is torch.Tensor and i.dtype == torch.float32 for i in images)
    assert torch.allclose(images[1] * 255, b.float())  # uint8 input scaled
    for t in targets:
        for key in ("boxes", "labels", "masks", "iscrowd"):
            assert type(t[key]) is torch.Tensor
        assert t["boxes"].dtype == torch.float32 and t["boxes"].shape[1] == 4
        assert t["labels"].dtype == torch.int64 and t["masks"].dtype == torch.uint8
    assert targets[0]["boxes"].tolist() == [[1, 2, 4, 5], [10, 0, 20, 10]] and targets[1]["boxes"].shape == (0, 4)
    assert targets[0]["image_id"] == 7 and targets[1]["orig_size"] == (6, 8)
