"""Attach cached region proposals (selective search) to the samples of a detection data set.

`WithProposals(dataset, cache)` returns the dataset's `(image, target)` with
`target["proposals"]`: float32 `Tensor[P, 4]` XYXY in the pixels of the returned image.

Proposals are read before the dataset's transforms and moved through them with the image
(as a second `tv_tensors.BoundingBoxes`), so resizing, flips and other geometric transforms
of `torchvision.transforms.v2` apply to them exactly as to the ground-truth boxes. For
that the wrapper takes over the dataset's `transforms` attribute: it reads the untransformed
sample from a shallow copy of the dataset whose `transforms` is None, then runs the
transforms itself. `SanitizeBoundingBoxes` steps (top level or inside `v2.Compose`) run
without the proposals (they would filter them with the ground truth's mask); instead the
proposals are clipped to the image and boxes below 1 px dropped at the end.

A data set without a `transforms` attribute must return images in the pixels the
proposals were computed on (its `target["orig_size"]`, when present, is checked).

At construction the cache is checked against the data set (see `ProposalCache.check_images`):
it must have been made for these images (ids, file names, file sizes) and hold proposals for
all of them, so a cache of another split or of regenerated data, or one with missing ids,
fails with a one-line error before the first step, not with a KeyError mid-epoch.

Shape shorthand: P proposals of one image.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from detkit.proposals.cache import ProposalCache

__all__ = ["WithProposals", "dataset_images"]


def dataset_images(dataset) -> list[tuple[int, str]] | None:
    """`(image_id, path)` of every image of a data set with `image_ids`, `image_root` and
    `image_info(index)["file_name"]` (`CocoDetection`, `ShapesDataset`, `VocDetection`), else None."""
    ids, root, info = (getattr(dataset, k, None) for k in ("image_ids", "image_root", "image_info"))
    if ids is None or root is None or info is None:
        return None
    return [(int(i), os.path.join(root, info(k)["file_name"])) for k, i in enumerate(ids)]


def _apply(transform, image, target):
    """Run `transform` on (image, target), keeping `target["proposals"]` out of SanitizeBoundingBoxes."""
    if isinstance(transform, v2.Compose):
        for t in transform.transforms:
            image, target = _apply(t, image, target)
        return image, target
    if isinstance(transform, v2.SanitizeBoundingBoxes):
        target = dict(target)
        proposals = target.pop("proposals")
        image, target = transform(image, target)
        return image, {**target, "proposals": proposals}
    return transform(image, target)


class WithProposals(Dataset):
    """Wrap a detection data set so that each target carries its cached proposals.

    Args:
        dataset: returns `(image, target)` with `target["image_id"]` (the cache key), e.g.
            `CocoDetection`, `ShapesDataset`, `VocDetection`.
        cache: a `ProposalCache` or the path of one (opened read-only), filled by
            `detkit proposals` / `detkit.proposals.compute_proposals` on the same images.
        max_proposals: keep the first (best-ranked) this many boxes per image; None keeps all.

    Other attributes (`num_classes`, `class_names`, `ann_file`, `aspect_ratios()`, ...) are
    those of `dataset`. The cache is checked against the data set's images at construction
    (ValueError); a data set without `image_ids` is checked when each image is read (KeyError).
    """

    def __init__(self, dataset, cache: ProposalCache | str | os.PathLike, *, max_proposals: int | None = 2000):
        if max_proposals is not None and (not isinstance(max_proposals, int) or max_proposals < 1):
            raise ValueError(f"max_proposals must be a positive int or None, got {max_proposals!r}")
        self.max_proposals = max_proposals
        if isinstance(cache, ProposalCache):
            self._cache, self.cache_path, self._owns_cache = cache, os.fspath(cache.path), False
        elif isinstance(cache, (str, os.PathLike)):
            self._cache, self.cache_path, self._owns_cache = None, os.fspath(cache), True
            self.cache  # noqa: B018  (open now: a missing file fails here, not in a worker)
        else:
            raise TypeError(f"cache must be a ProposalCache or a path, got {type(cache).__name__}")
        self._check(dataset)
        self.transforms = getattr(dataset, "transforms", None)
        if self.transforms is not None:
            dataset = copy.copy(dataset)
            dataset.transforms = None
        self.dataset = dataset

    @property
    def cache(self) -> ProposalCache:
        if self._cache is None:  # opened lazily in each DataLoader worker
            self._cache = ProposalCache(self.cache_path, readonly=True)
        return self._cache

    def _hint(self, dataset) -> str:
        ann = getattr(dataset, "ann_file", None) or "ANNOTATIONS.json"
        root = getattr(dataset, "image_root", None) or "IMAGE_DIR"
        return f"; compute them with `detkit proposals --annotations {ann} --image-root {root} --output CACHE`"

    def _check(self, dataset) -> None:
        images = dataset_images(dataset)
        if images is not None:
            self.cache.check_images(images, hint=self._hint(dataset))
            return
        ids = getattr(dataset, "image_ids", None)
        missing = [] if ids is None else [int(i) for i in ids if int(i) not in self.cache]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (f" ... ({len(missing)} in all)" if len(missing) > 20 else "")
            raise ValueError(
                f"proposal cache {self.cache_path} has no proposals for {len(missing)} of {len(ids)} images "
                f"(image ids {shown}){self._hint(dataset)}"
            )

    def __getattr__(self, name: str) -> Any:
        dataset = self.__dict__.get("dataset")
        if name.startswith("__") or dataset is None:
            raise AttributeError(name)
        return getattr(dataset, name)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self._owns_cache:
            state["_cache"] = None  # reopened in the receiving process
        elif self._cache is not None:
            self._cache.close()  # a connection cannot be pickled; it reopens on use
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.dataset)

    def _lookup(self, image_id) -> torch.Tensor:
        try:
            boxes = self.cache.get(image_id)
        except KeyError:
            hint = self._hint(self.dataset)
            raise KeyError(f"image id {image_id} has no proposals in {self.cache_path}{hint}") from None
        if self.max_proposals is not None:
            boxes = boxes[: self.max_proposals]
        return torch.from_numpy(boxes.copy())

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        sample = self.dataset[index]
        if sample is None:  # an unreadable image skipped by the data set (skip_invalid)
            return None
        image, target = sample
        if "image_id" not in target:
            raise ValueError(f"{type(self.dataset).__name__} targets need an 'image_id' to look up their proposals")
        image_id = int(target["image_id"])
        boxes = self._lookup(image_id)
        height, width = (int(v) for v in image.shape[-2:])
        orig = target.get("orig_size")
        if self.transforms is None and orig is not None and tuple(int(v) for v in orig) != (height, width):
            raise ValueError(
                f"image id {image_id}: the image is {height}x{width} but its proposals are for {tuple(orig)}; "
                "give the data set its transforms through a `transforms` attribute so the wrapper can move the boxes"
            )
        if self.transforms is not None:
            target = dict(target)
            target["proposals"] = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width))
            image, target = _apply(self.transforms, image, target)
            boxes = target["proposals"].as_subclass(torch.Tensor)
            height, width = (int(v) for v in image.shape[-2:])
        boxes = boxes.float().clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        keep = ((boxes[:, 2:] - boxes[:, :2]) >= 1).all(1)
        return image, {**target, "proposals": boxes[keep]}

    def __repr__(self) -> str:
        cache = str(self.cache_path)
        return f"{type(self).__name__}({self.dataset!r}, cache={cache!r}, max_proposals={self.max_proposals})"
