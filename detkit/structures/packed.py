"""Packed-tensor helpers: the batch as rows of all images one after another.

A packed batch stores the boxes (RoIs, detections, ground truth) of every image in one
tensor, with a `batch_idx` column `Tensor[R]` int64 naming each row's image (the layout
`torchvision.ops.roi_align` takes). These helpers count and locate rows per image, move
between the packed and a padded per-image layout, keep the first k rows of each image,
rescale boxes between image sizes, and index every row field of a packed container at once.
None of them loops over images in Python or waits for the device unless its docstring says so.

Shape shorthand:
    N      images in the batch
    R      packed rows over the whole batch; R_i of them in image i
    P_max  largest per-image row count (max R_i)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

from detkit.structures.boxes import clip_boxes, hw_to_whwh

__all__ = [
    "PackedRows",
    "count_per_image",
    "count_values",
    "image_starts",
    "pack_to_padded",
    "position_in_image",
    "resize_boxes",
    "resize_keypoints",
    "scale_factors",
    "take_rows",
    "top_k_per_image",
]


def count_values(values: Tensor, num_values: int) -> Tensor:
    """How many entries of `values` (integers in 0..num_values-1) equal each of 0..num_values-1:
    `Tensor[num_values]` int64, without a host sync (`torch.bincount` reads its maximum on the
    host on CUDA)."""
    return (values == torch.arange(num_values, device=values.device)[:, None]).sum(1)


def count_per_image(batch_idx: Tensor, num_images: int) -> Tensor:
    """Rows per image `Tensor[N]` int64 of `batch_idx` values in 0..N-1, without a host sync."""
    return count_values(batch_idx, num_images)


def image_starts(counts: Tensor) -> Tensor:
    """First packed row of each image `Tensor[N]` when the rows are grouped by image.

    counts `Tensor[N]` (from `count_per_image`) -> exclusive cumulative sum, e.g. [2, 0, 3] -> [0, 2, 2].
    """
    return torch.cumsum(counts, 0) - counts


def position_in_image(batch_idx: Tensor, counts: Tensor, *, grouped: bool = False) -> Tensor:
    """Rank of each packed row among the rows of its image, in packed order: `Tensor[R]` int64.

    batch_idx `Tensor[R]`, counts `Tensor[N]` rows per image. Works for any order of
    `batch_idx` (a stable sort); with `grouped=True` the rows must already be grouped by
    image (non-decreasing `batch_idx`) and the sort is skipped.
    """
    starts = image_starts(counts)
    rows = torch.arange(batch_idx.numel(), device=batch_idx.device)
    if grouped:
        return rows - starts[batch_idx]
    order = torch.argsort(batch_idx, stable=True)
    pos = torch.empty_like(batch_idx)
    pos[order] = rows - starts[batch_idx[order]]
    return pos


def pack_to_padded(boxes: Tensor, batch_idx: Tensor, num_images: int) -> tuple[Tensor, Tensor, Tensor]:
    """Packed rows into a padded per-image layout, for matching all images at once.

    Args:
        boxes: `Tensor[R, ...]` (e.g. `[R, 4]` boxes), grouped by image (non-decreasing `batch_idx`).
        batch_idx: `Tensor[R]` int64 image of each row.
        num_images: N.
    Returns:
        padded `Tensor[N, P_max, ...]` (zeros in padding), valid `Tensor[N, P_max]` bool and
        slot `Tensor[R]` (each row's position in its image: row r sits at `padded[batch_idx[r], slot[r]]`).
        One host sync (P_max).
    """
    counts = count_per_image(batch_idx, num_images)
    slot = position_in_image(batch_idx, counts, grouped=True)
    p_max = int(counts.max()) if num_images else 0
    padded = boxes.new_zeros((num_images, p_max, *boxes.shape[1:]))
    valid = torch.zeros((num_images, p_max), dtype=torch.bool, device=boxes.device)
    padded[batch_idx, slot] = boxes
    valid[batch_idx, slot] = True
    return padded, valid, slot


def top_k_per_image(order: Tensor, batch_idx: Tensor, k: int) -> Tensor:
    """Keep the first `k` entries of each image in `order` (already sorted by score).

    Args:
        order: `Tensor[M]` row indices, best first (e.g. the output of `batched_nms`).
        batch_idx: `Tensor[M]` the image of each entry of `order` (i.e. `batch_idx_of_rows[order]`).
        k: entries kept per image.
    Returns:
        `Tensor[M']` indices from `order`, grouped by image, in score order inside each image.
    """
    if order.numel() == 0:
        return order
    # stable sort by image keeps the score order inside each image
    by_image = torch.sort(batch_idx, stable=True)
    sorted_idx = by_image.values
    first = torch.searchsorted(sorted_idx, sorted_idx, right=False)  # first entry of each entry's image
    rank = torch.arange(sorted_idx.numel(), device=order.device) - first
    return order[by_image.indices[rank < k]]


def take_rows(index: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Apply one row index (integer or bool `Tensor`) to parallel tensors: `t[index]` for each."""
    return tuple(t[index] for t in tensors)


def scale_factors(from_sizes: Tensor, to_sizes: Tensor) -> Tensor:
    """Per-image (sx, sy, sx, sy) factors mapping XYXY boxes from `from_sizes` to `to_sizes`.

    `Tensor[N, 2]` (h, w) -> `Tensor[N, 4]`, computed in float32 as torchvision does.
    """
    return hw_to_whwh(to_sizes.float() / from_sizes.float())  # (rh, rw) -> (rw, rh, rw, rh)


def resize_boxes(boxes: Tensor, batch_idx: Tensor, from_sizes: Tensor, to_sizes: Tensor) -> Tensor:
    """Scale packed boxes `Tensor[R, 4]` (image index `batch_idx`) between image sizes `Tensor[N, 2]` (h, w).

    Float32 multiplication by `to / from`: a round trip is exact only up to float rounding.
    """
    return boxes * scale_factors(from_sizes, to_sizes)[batch_idx]


def resize_keypoints(keypoints: Tensor, batch_idx: Tensor, from_sizes: Tensor, to_sizes: Tensor) -> Tensor:
    """Scale packed keypoints `Tensor[R, K, 3]` (x, y, v) between image sizes as `resize_boxes` scales boxes:
    x and y by the same float32 factors, v kept."""
    factors = scale_factors(from_sizes, to_sizes)[batch_idx, None, :2]  # [R, 1, 2] (sx, sy)
    return torch.cat([keypoints[..., :2] * factors, keypoints[..., 2:]], dim=-1)


Packed = TypeVar("Packed", bound="PackedRows")


class PackedRows:
    """Mixin for dataclasses whose fields named in `row_fields` hold one row per packed box.

    `container[index]` applies one index (integer `Tensor`, bool `Tensor` or slice) to every
    row field that is set, like detectron2's `Instances.__getitem__`, so parallel tensors can
    not drift apart. The other fields are copied as they are, except the per-image fields named
    in `image_fields` (e.g. per-image masks, whose rows a row index cannot follow): indexing a
    container with one of them set is a ValueError. Subclasses name their box field `boxes` and
    their image-index field `batch_idx`.
    """

    row_fields: ClassVar[tuple[str, ...]] = ()
    image_fields: ClassVar[tuple[str, ...]] = ()

    def __getitem__(self: Packed, index) -> Packed:
        for name in self.image_fields:
            if getattr(self, name) is not None:
                raise ValueError(
                    f"{type(self).__name__} with per-image {name} cannot be indexed by row: index before setting {name}"
                )
        rows = {name: getattr(self, name) for name in self.row_fields}
        return dataclasses.replace(self, **{name: v[index] for name, v in rows.items() if v is not None})

    def clip(self: Packed, image_sizes: Tensor) -> Packed:
        """Boxes clamped to their image's rectangle; `image_sizes` `Tensor[N, 2]` (h, w)."""
        return dataclasses.replace(self, boxes=clip_boxes(self.boxes, image_sizes[self.batch_idx]))

    def resize(self: Packed, from_sizes: Tensor, to_sizes: Tensor) -> Packed:
        """Boxes (and `keypoints` `Tensor[R, K, 3]`, in a container that has them set) scaled from images of
        `from_sizes` to `to_sizes` (`Tensor[N, 2]` (h, w)); see `resize_boxes` / `resize_keypoints`."""
        changes = {"boxes": resize_boxes(self.boxes, self.batch_idx, from_sizes, to_sizes)}
        if getattr(self, "keypoints", None) is not None:
            changes["keypoints"] = resize_keypoints(self.keypoints, self.batch_idx, from_sizes, to_sizes)
        return dataclasses.replace(self, **changes)
