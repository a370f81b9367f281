"""WithProposals: cached proposals attached to samples and moved with the image's transforms."""

import os
import pickle

import cv2
import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from detkit.data import ShapesDataset, build_transforms, collate_detection
from detkit.data.proposals import WithProposals, dataset_images
from detkit.proposals import ProposalCache
from detkit.proposals.cache import image_records

PARAMS = {"method": "test"}


class _Boxes(torch.utils.data.Dataset):
    """Two 60 x 80 images with fixed gt boxes, returned like CocoDetection (transforms applied last)."""

    num_classes = 2

    def __init__(self, transforms=None):
        self.transforms = transforms
        self.boxes = {
            10: torch.tensor([[5.0, 5.0, 25.0, 45.0], [30.0, 10.0, 78.0, 40.0]]),
            11: torch.tensor([[0.0, 0.0, 80.0, 60.0]]),
        }

    def __len__(self):
        return 2

    def __getitem__(self, index):
        image_id = 10 + index
        image = tv_tensors.Image(torch.rand(3, 60, 80))
        boxes = self.boxes[image_id]
        target = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(60, 80)),
            "labels": torch.ones(len(boxes), dtype=torch.int64),
            "image_id": image_id,
            "orig_size": (60, 80),
        }
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target


def _cache(path, entries):
    """A cache of `_Boxes` images (no files: sizes unknown) holding `entries` {image id: boxes}."""
    with ProposalCache(path, PARAMS, images=[[i, f"{i}.png", None] for i in entries]) as cache:
        for image_id, boxes in entries.items():
            cache.put(image_id, np.asarray(boxes, dtype=np.float32))
    return path


def test_untransformed_samples_get_the_cached_boxes(tmp_path):
    path = _cache(tmp_path / "p.bin", {10: [[1, 2, 30, 40], [0, 0, 90, 70], [10, 10, 10.5, 30]], 11: [[3, 3, 9, 9]]})
    ds = WithProposals(_Boxes(), path)
    image, target = ds[0]
    # the second box is clipped to the 80 x 60 image, the third (0.5 px wide) dropped
    assert target["proposals"].dtype == torch.float32
    assert target["proposals"].tolist() == [[1, 2, 30, 40], [0, 0, 80, 60]]
    assert target["image_id"] == 10 and image.shape == (3, 60, 80)
    assert ds[1][1]["proposals"].tolist() == [[3, 3, 9, 9]]
    assert len(ds) == 2 and ds.num_classes == 2  # attributes come from the wrapped data set
    assert WithProposals(_Boxes(), ProposalCache(path, readonly=True), max_proposals=1)[0][1]["proposals"].shape == (
        1,
        4,
    )


def test_proposals_follow_resize_and_flip_like_the_gt_boxes(tmp_path):
    inner = _Boxes()
    path = _cache(tmp_path / "gt.bin", {i: b.numpy() for i, b in inner.boxes.items()})  # proposals = gt boxes
    transforms = v2.Compose(
        [v2.ToImage(), v2.Resize((30, 50)), v2.RandomHorizontalFlip(p=1.0), v2.ToDtype(torch.float32, scale=True)]
    )
    inner.transforms = transforms
    ds = WithProposals(inner, path)
    assert inner.transforms is transforms  # the caller's data set is left alone
    for i in range(2):
        image, target = ds[i]
        assert image.shape == (3, 30, 50)
        assert torch.allclose(target["proposals"], target["boxes"].as_subclass(torch.Tensor))
    # hand-checked: x scales by 50 / 80, y by 1 / 2, then x -> 50 - x
    assert torch.allclose(ds[1][1]["proposals"], torch.tensor([[0.0, 0.0, 50.0, 30.0]]))
    assert torch.allclose(ds[0][1]["proposals"][0], torch.tensor([50 - 25 * 0.625, 2.5, 50 - 5 * 0.625, 22.5]))


def test_sanitize_filters_only_the_ground_truth(tmp_path):
    # as many proposals as gt boxes: SanitizeBoundingBoxes must not apply the gt's mask to them
    inner = _Boxes(v2.Compose([v2.ToImage(), v2.SanitizeBoundingBoxes(min_size=25)]))
    path = _cache(tmp_path / "p.bin", {10: [[0, 0, 10, 10], [0, 0, 40, 40]], 11: [[1, 1, 5, 5]]})
    image, target = WithProposals(inner, path)[0]
    assert target["boxes"].shape == (1, 4) and target["labels"].shape == (1,)  # the 20-px-wide gt box is gone
    assert target["proposals"].tolist() == [[0, 0, 10, 10], [0, 0, 40, 40]]


def test_shapes_with_standard_transforms_and_collate(tmp_path):
    train = build_transforms(True, min_size=96, max_size=None, hflip_prob=0.5)
    shapes = ShapesDataset(tmp_path / "shapes", "val", num_images=3, image_size=64, transforms=train)
    raw = ShapesDataset(tmp_path / "shapes", "val", num_images=3, image_size=64)
    with ProposalCache(tmp_path / "gt.bin", PARAMS, images=image_records(dataset_images(raw))) as cache:
        for i in range(len(raw)):
            _, t = raw[i]
            cache.put(int(t["image_id"]), t["boxes"].numpy())
    ds = WithProposals(shapes, tmp_path / "gt.bin")
    torch.manual_seed(0)
    samples = [ds[i] for i in range(3) for _ in range(2)]
    images, targets = collate_detection(samples)
    for image, target in zip(images, targets):
        assert image.shape == (3, 96, 96) and image.dtype == torch.float32
        assert type(target["proposals"]) is torch.Tensor
        assert torch.allclose(target["proposals"], target["boxes"])


def test_missing_entry_names_the_image_and_the_command(tmp_path):
    ds = WithProposals(_Boxes(), _cache(tmp_path / "p.bin", {10: [[0, 0, 5, 5]]}))
    with pytest.raises(KeyError, match=r"image id 11 has no proposals in .*p\.bin.*detkit proposals --annotations"):
        ds[1]
    with pytest.raises(FileNotFoundError):
        WithProposals(_Boxes(), tmp_path / "missing.bin")


def test_resized_images_without_visible_transforms_are_refused(tmp_path):
    class Resized(torch.utils.data.Dataset):  # resizes inside, no `transforms` attribute
        def __getitem__(self, index):
            image, target = _Boxes()[index]
            return image[:, :30], target

        def __len__(self):
            return 2

    ds = WithProposals(Resized(), _cache(tmp_path / "p.bin", {10: [[0, 0, 5, 5]]}))
    with pytest.raises(ValueError, match=r"image is 30x80 but its proposals are for \(60, 80\)"):
        ds[0]


def test_pickles_for_dataloader_workers(tmp_path):
    path = _cache(tmp_path / "p.bin", {10: [[1, 2, 30, 40]], 11: [[3, 3, 9, 9]]})
    for cache in (path, ProposalCache(path, readonly=True)):
        ds = WithProposals(_Boxes(), cache)
        ds[0]  # opens a read handle
        clone = pickle.loads(pickle.dumps(ds))
        assert clone[1][1]["proposals"].tolist() == [[3, 3, 9, 9]]
        assert ds[0][1]["proposals"].tolist() == [[1, 2, 30, 40]]  # the original still reads


def _shapes(root, split, n):
    return ShapesDataset(root, split, num_images=n, image_size=64)


def _gt_cache(path, dataset, *, skip=()):
    """A cache recording `dataset`'s images, with its ground-truth boxes as proposals."""
    with ProposalCache(path, PARAMS, images=image_records(dataset_images(dataset))) as cache:
        for i in range(len(dataset)):
            image_id = dataset.image_ids[i]
            if image_id not in skip:
                cache.put(image_id, dataset[i][1]["boxes"].numpy())
    return path


def test_a_cache_of_another_split_or_of_regenerated_data_is_refused(tmp_path):
    """Train ids 1..4 cover val ids 1..2: only the recorded file sizes tell the splits apart."""
    train, val = _shapes(tmp_path / "shapes", "train", 4), _shapes(tmp_path / "shapes", "val", 2)
    cache = _gt_cache(tmp_path / "train.bin", train)
    with pytest.raises(ValueError, match=r"made for other images .*2 of 2 images differ.*image id 1: cache 000000.png"):
        WithProposals(val, cache)
    assert len(WithProposals(val, _gt_cache(tmp_path / "val.bin", val))) == 2
    path = os.path.join(val.image_root, val.image_info(1)["file_name"])  # regenerate one image
    cv2.imwrite(path, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"1 of 2 images differ.*image id 2"):
        WithProposals(val, tmp_path / "val.bin")


def test_missing_proposals_are_listed_at_set_up(tmp_path):
    val = _shapes(tmp_path / "shapes", "val", 5)
    cache = _gt_cache(tmp_path / "val.bin", val, skip={2, 4})
    with pytest.raises(ValueError, match=r"no proposals for 2 of 5 images \(image ids 2, 4\); compute them with"):
        WithProposals(val, cache)
