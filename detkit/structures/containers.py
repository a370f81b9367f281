"""Packed batch containers: images, ground-truth targets and detections.

Inside the hot path a batch of per-image box sets is one packed tensor plus a `batch_idx`
column (the layout `torchvision.ops.roi_align` takes; helpers in `detkit.structures.packed`).
`PackedTargets.padded()` turns the packed ground truth into a dense `[N, Gmax, ...]` layout
for vectorised matching.

Shape shorthand:
    N     images in the batch
    Hp,Wp padded batch height / width
    G     ground-truth boxes over the whole batch (packed); K_i of them in image i
    Gmax  largest per-image ground-truth count (max K_i)
    D     detections over the whole batch (packed)
    H_i,W_i  mask height / width of image i
    Kp    keypoints per object (Keypoint R-CNN)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from detkit.structures.packed import PackedRows, count_per_image, position_in_image

__all__ = ["Detections", "ImageBatch", "PackedTargets", "pad_images"]


def _move(x, device, non_blocking: bool):
    if x is None:
        return None
    if isinstance(x, Tensor):
        return x.to(device, non_blocking=non_blocking)
    return [t.to(device, non_blocking=non_blocking) for t in x]


def pad_images(images: Sequence[Tensor], *, size_divisible: int = 1, pad_value: float = 0.0) -> Tensor:
    """Stack `Tensor[C, H_i, W_i]` images into `Tensor[N, C, Hp, Wp]`, padded at bottom/right.

    Hp, Wp are the largest H and W rounded up to a multiple of `size_divisible`.
    """
    stride = max(int(size_divisible), 1)
    max_h = max(int(img.shape[-2]) for img in images)
    max_w = max(int(img.shape[-1]) for img in images)
    max_h = (max_h + stride - 1) // stride * stride
    max_w = (max_w + stride - 1) // stride * stride
    first = images[0]
    shape = (len(images), first.shape[0], max_h, max_w)
    batch = first.new_zeros(shape) if pad_value == 0 else first.new_full(shape, pad_value)
    for img, slot in zip(images, batch):
        slot[:, : img.shape[-2], : img.shape[-1]].copy_(img)
    return batch


@dataclass
class ImageBatch:
    """A padded, normalised image batch.

    Attributes:
        tensor: `Tensor[N, 3, Hp, Wp]` padded, normalised images.
        image_sizes: `Tensor[N, 2]` int64 (h, w) of each image after resizing, before padding.
        original_sizes: `Tensor[N, 2]` int64 (h, w) of each image as loaded (predictions are
            mapped back to this size).
    """

    tensor: Tensor
    image_sizes: Tensor
    original_sizes: Tensor

    def __post_init__(self) -> None:
        if self.tensor.dim() != 4:
            raise ValueError(f"ImageBatch.tensor must be [N, C, H, W], got {tuple(self.tensor.shape)}")
        n = self.tensor.shape[0]
        for name in ("image_sizes", "original_sizes"):
            value = getattr(self, name)
            if value.shape != (n, 2):
                raise ValueError(f"ImageBatch.{name} must be [{n}, 2], got {tuple(value.shape)}")

    @property
    def num_images(self) -> int:
        return self.tensor.shape[0]

    @property
    def padded_size(self) -> tuple[int, int]:
        """(Hp, Wp) of the padded batch."""
        return int(self.tensor.shape[-2]), int(self.tensor.shape[-1])

    def to(self, device, non_blocking: bool = False) -> ImageBatch:
        return dataclasses.replace(
            self,
            tensor=self.tensor.to(device, non_blocking=non_blocking),
            image_sizes=self.image_sizes.to(device, non_blocking=non_blocking),
            original_sizes=self.original_sizes.to(device, non_blocking=non_blocking),
        )

    @classmethod
    def from_tensors(
        cls,
        images: Sequence[Tensor],
        *,
        size_divisible: int = 1,
        pad_value: float = 0.0,
        original_sizes: Tensor | None = None,
    ) -> ImageBatch:
        """Pad already resized and normalised `Tensor[C, H_i, W_i]` images at bottom/right.

        The padded size is the largest H and W rounded up to a multiple of `size_divisible`.
        `original_sizes` defaults to the given sizes.
        """
        if len(images) == 0:
            raise ValueError("ImageBatch.from_tensors needs at least one image")
        for i, img in enumerate(images):
            if img.dim() != 3:
                raise ValueError(f"images[{i}] must be [C, H, W], got {tuple(img.shape)}")
        sizes = torch.tensor([[img.shape[-2], img.shape[-1]] for img in images], dtype=torch.int64)
        batch = pad_images(images, size_divisible=size_divisible, pad_value=pad_value)
        first = images[0]
        sizes = sizes.to(first.device)
        orig = sizes.clone() if original_sizes is None else original_sizes.to(device=first.device, dtype=torch.int64)
        return cls(tensor=batch, image_sizes=sizes, original_sizes=orig)


@dataclass(kw_only=True)
class PackedTargets(PackedRows):
    """Ground truth of a batch, packed along one dimension.

    `targets[index]` applies one row index to boxes, labels and batch_idx (see
    `detkit.structures.packed.PackedRows`; targets with masks cannot be indexed by row);
    `targets.clip(sizes)` / `targets.resize(a, b)` clip or rescale the boxes (resize: and keypoints).

    Attributes:
        boxes: `Tensor[G, 4]` float32 XYXY in resized-image pixels.
        labels: `Tensor[G]` int64 class ids (1..num_classes; 0 is background).
        batch_idx: `Tensor[G]` int64 image index of each box (sorted when built by `from_list`).
        num_images: N (images may have no boxes, so it cannot be read off `batch_idx`).
        masks: per-image masks `list[Tensor[K_i, H_i, W_i]]` uint8 (mask sizes may differ per
            image, so they are not packed), or None. Row k of `masks[i]` belongs to the k-th
            box of image i, i.e. packed row `padded_index()[i, k]`.
        keypoints: `Tensor[G, Kp, 3]` float32 (x, y, v) per box in the boxes' pixels, v as COCO
            (0 not labelled, 1 and 2 labelled), or None.
        max_per_image: the largest number of boxes of one image when known on the host (set by
            `from_list`), so that `padded()` needs no host sync; None to count it.
    """

    row_fields: ClassVar[tuple[str, ...]] = ("boxes", "labels", "batch_idx", "keypoints")
    image_fields: ClassVar[tuple[str, ...]] = ("masks",)

    boxes: Tensor
    labels: Tensor
    batch_idx: Tensor
    num_images: int
    masks: list[Tensor] | None = None
    max_per_image: int | None = None
    keypoints: Tensor | None = None

    def __post_init__(self) -> None:
        g = self.boxes.shape[0]
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"PackedTargets.boxes must be [G, 4], got {tuple(self.boxes.shape)}")
        if self.labels.shape != (g,) or self.batch_idx.shape != (g,):
            raise ValueError(
                f"PackedTargets.labels and batch_idx must be [{g}], got "
                f"{tuple(self.labels.shape)} and {tuple(self.batch_idx.shape)}"
            )
        if self.masks is not None and len(self.masks) != self.num_images:
            raise ValueError(f"PackedTargets.masks must hold {self.num_images} tensors, got {len(self.masks)}")
        if self.keypoints is not None and (
            self.keypoints.dim() != 3 or self.keypoints.shape[0] != g or self.keypoints.shape[2] != 3
        ):
            raise ValueError(f"PackedTargets.keypoints must be [{g}, Kp, 3], got {tuple(self.keypoints.shape)}")

    def __getitem__(self, index) -> PackedTargets:
        # a row index may change every image's count: `padded()` counts again
        return dataclasses.replace(super().__getitem__(index), max_per_image=None)

    @property
    def device(self) -> torch.device:
        return self.boxes.device

    @classmethod
    def from_list(cls, targets: Sequence[Mapping[str, Tensor]], *, device=None) -> PackedTargets:
        """Pack torchvision-style per-image dicts (`boxes`, `labels`, optional `masks` and `keypoints`).

        Validates every entry and raises ValueError naming the image index and key. Boxes are
        cast to float32, labels to int64, masks to uint8, keypoints (`Tensor[K, Kp, 3]` (x, y, v))
        to float32. `device` defaults to the device of
        the first image's boxes (CPU when the list is empty).
        """
        boxes_list, labels_list, masks_list, keypoints_list = [], [], [], []
        given: dict[str, bool] = {}
        for i, target in enumerate(targets):
            if not isinstance(target, Mapping):
                raise ValueError(f"targets[{i}] must be a dict, got {type(target).__name__}")  # noqa: TRY004
            for key in ("boxes", "labels"):
                if key not in target:
                    raise ValueError(f"targets[{i}] is missing the key '{key}'")
                if not isinstance(target[key], Tensor):
                    raise ValueError(f"targets[{i}]['{key}'] must be a Tensor, got {type(target[key]).__name__}")  # noqa: TRY004
            boxes, labels = target["boxes"], target["labels"]
            if boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
                raise ValueError(
                    f"targets[{i}]['boxes'] must be a float Tensor[K, 4], got shape {tuple(boxes.shape)} "
                    f"and dtype {boxes.dtype}"
                )
            k = boxes.shape[0]
            if labels.shape != (k,) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
                raise ValueError(
                    f"targets[{i}]['labels'] must be an integer Tensor[{k}], got shape {tuple(labels.shape)} "
                    f"and dtype {labels.dtype}"
                )
            for key in ("masks", "keypoints"):  # optional, for every image or for none
                given.setdefault(key, target.get(key) is not None)
                if given[key] != (target.get(key) is not None):
                    raise ValueError(f"targets[{i}]['{key}'] must be given for all images or for none")
            if given["masks"]:
                masks = target["masks"]
                if not isinstance(masks, Tensor) or masks.dim() != 3 or masks.shape[0] != k:
                    shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
                    raise ValueError(f"targets[{i}]['masks'] must be a Tensor[{k}, H, W], got shape {shape}")
                masks_list.append(masks)
            if given["keypoints"]:
                kps = target["keypoints"]
                kp = keypoints_list[0].shape[1] if keypoints_list else None
                if (
                    not isinstance(kps, Tensor)
                    or kps.dim() != 3
                    or kps.shape[0] != k
                    or kps.shape[2] != 3
                    or (kp is not None and kps.shape[1] != kp)
                ):
                    shape = tuple(kps.shape) if isinstance(kps, Tensor) else type(kps).__name__
                    raise ValueError(
                        f"targets[{i}]['keypoints'] must be a Tensor[{k}, {kp or 'Kp'}, 3] (x, y, v), got shape {shape}"
                    )
                keypoints_list.append(kps)
            boxes_list.append(boxes)
            labels_list.append(labels)

        if device is None:
            device = boxes_list[0].device if boxes_list else torch.device("cpu")
        n = len(boxes_list)
        counts = [b.shape[0] for b in boxes_list]
        # made on the device (an upload from the host would wait for the GPU)
        batch_idx = torch.cat(
            [torch.full((k,), i, dtype=torch.int64, device=device) for i, k in enumerate(counts)]
            or [torch.zeros((0,), dtype=torch.int64, device=device)]
        )
        if n:
            boxes = torch.cat([b.to(device=device, dtype=torch.float32) for b in boxes_list])
            labels = torch.cat([lab.to(device=device, dtype=torch.int64) for lab in labels_list])
        else:
            boxes = torch.zeros((0, 4), dtype=torch.float32, device=device)
            labels = torch.zeros((0,), dtype=torch.int64, device=device)
        finite = torch.isfinite(boxes).all(1)
        if boxes.numel() and not bool(finite.all()):  # one host sync for the whole batch
            raise ValueError(f"targets[{int(batch_idx[~finite][0])}]['boxes'] contains non-finite values")
        masks = [m.to(device=device, dtype=torch.uint8) for m in masks_list] if given.get("masks") else None
        keypoints = None
        if given.get("keypoints"):
            keypoints = torch.cat([kp.to(device=device, dtype=torch.float32) for kp in keypoints_list])
            vis = keypoints[..., 2]
            bad = ~(torch.isfinite(keypoints).all(-1) & ((vis == 0) | (vis == 1) | (vis == 2))).all(-1)
            if bool(bad.any()):  # one host sync
                raise ValueError(
                    f"targets[{int(batch_idx[bad][0])}]['keypoints'] must hold finite (x, y, v) with v in 0, 1, 2"
                )
        return cls(
            boxes=boxes,
            labels=labels,
            batch_idx=batch_idx,
            num_images=n,
            masks=masks,
            max_per_image=max(counts, default=0),
            keypoints=keypoints,
        )

    def to(self, device, non_blocking: bool = False) -> PackedTargets:
        return dataclasses.replace(
            self,
            boxes=_move(self.boxes, device, non_blocking),
            labels=_move(self.labels, device, non_blocking),
            batch_idx=_move(self.batch_idx, device, non_blocking),
            masks=_move(self.masks, device, non_blocking),
            keypoints=_move(self.keypoints, device, non_blocking),
        )

    def per_image_counts(self) -> Tensor:
        """Number of boxes per image: `Tensor[N]` int64."""
        return count_per_image(self.batch_idx, self.num_images)

    def position_in_image(self) -> Tensor:
        """Slot of every packed box in its image's padded row: `Tensor[G]` int64."""
        return position_in_image(self.batch_idx, self.per_image_counts())

    def _padded_layout(self, min_slots: int = 0) -> tuple[Tensor, int]:
        counts = self.per_image_counts()
        if self.max_per_image is not None:  # known on the host: no sync
            gmax = self.max_per_image
        else:
            gmax = int(counts.max()) if counts.numel() else 0
        return position_in_image(self.batch_idx, counts), max(gmax, min_slots)

    def padded(self, min_slots: int = 0) -> tuple[Tensor, Tensor, Tensor]:
        """Dense per-image layout for vectorised matching.

        Returns:
            boxes `Tensor[N, Gmax, 4]` (zeros in padding), labels `Tensor[N, Gmax]` (0 in
            padding), valid `Tensor[N, Gmax]` bool (False in padding). Box k of image i (in
            packed order) sits at `[i, k]`. One host sync (Gmax) unless `max_per_image` is
            set. With `min_slots`, Gmax is at least that (matching with `min_slots=1` keeps
            gathers by a matched index valid when no image of the batch has a box).
        """
        pos, gmax = self._padded_layout(min_slots)
        n = self.num_images
        boxes = self.boxes.new_zeros((n, gmax, 4))
        labels = self.labels.new_zeros((n, gmax))
        valid = torch.zeros((n, gmax), dtype=torch.bool, device=self.boxes.device)
        boxes[self.batch_idx, pos] = self.boxes
        labels[self.batch_idx, pos] = self.labels
        valid[self.batch_idx, pos] = True
        return boxes, labels, valid

    def padded_index(self) -> Tensor:
        """Packed row of every padded slot: `Tensor[N, Gmax]` int64, -1 in padding.

        Maps a matcher's `matched_idx` (index into Gmax) back to packed rows:
        `padded_index().gather(1, matched_idx)`.
        """
        pos, gmax = self._padded_layout()
        index = torch.full((self.num_images, gmax), -1, dtype=torch.int64, device=self.boxes.device)
        index[self.batch_idx, pos] = torch.arange(self.batch_idx.numel(), device=self.boxes.device)
        return index


@dataclass(kw_only=True)
class Detections(PackedRows):
    """Detections of a batch, packed along one dimension.

    `dets[index]` applies one row index to boxes, scores, labels, batch_idx and mask_probs
    (see `detkit.structures.packed.PackedRows`); `dets.clip(sizes)` / `dets.resize(a, b)`
    clip or rescale the boxes (resize: and keypoints).

    Attributes:
        boxes: `Tensor[D, 4]` XYXY.
        scores: `Tensor[D]`.
        labels: `Tensor[D]` int64 class ids.
        batch_idx: `Tensor[D]` int64 image index of each detection.
        num_images: N (so images without detections still get an entry in `split()`).
        mask_probs: `Tensor[D, ...]` per detection, in the box's frame (e.g. `[D, M, M]` mask
            probabilities of the detection's class), or None.
        masks: `list[Tensor]` of N per-image tensors (e.g. uint8 `[D_i, H_i, W_i]` masks pasted
            into the original images, which differ in size), or None.
        keypoints: `Tensor[D, Kp, 3]` float32 (x, y, 1) in the boxes' pixels, or None.
        keypoints_scores: `Tensor[D, Kp]` the heatmap logit at each keypoint, or None.
    """

    row_fields: ClassVar[tuple[str, ...]] = (
        "boxes",
        "scores",
        "labels",
        "batch_idx",
        "mask_probs",
        "keypoints",
        "keypoints_scores",
    )
    image_fields: ClassVar[tuple[str, ...]] = ("masks",)

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    batch_idx: Tensor
    num_images: int
    mask_probs: Tensor | None = None
    masks: list[Tensor] | None = None
    keypoints: Tensor | None = None
    keypoints_scores: Tensor | None = None

    def __post_init__(self) -> None:
        d = self.boxes.shape[0]
        if self.boxes.dim() != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"Detections.boxes must be [D, 4], got {tuple(self.boxes.shape)}")
        for name in ("scores", "labels", "batch_idx"):
            if getattr(self, name).shape != (d,):
                raise ValueError(f"Detections.{name} must be [{d}], got {tuple(getattr(self, name).shape)}")
        if self.mask_probs is not None and self.mask_probs.shape[0] != d:
            raise ValueError(f"Detections.mask_probs must have {d} rows, got {tuple(self.mask_probs.shape)}")
        if isinstance(self.masks, Tensor):
            raise ValueError(  # noqa: TRY004
                "Detections.masks is a list of per-image mask tensors; per-detection masks go in mask_probs"
            )
        if self.masks is not None and len(self.masks) != self.num_images:
            raise ValueError(f"Detections.masks list must hold {self.num_images} tensors, got {len(self.masks)}")
        for name in ("keypoints", "keypoints_scores"):
            value = getattr(self, name)
            if value is not None and value.shape[0] != d:
                raise ValueError(f"Detections.{name} must have {d} rows, got {tuple(value.shape)}")

    def to(self, device, non_blocking: bool = False) -> Detections:
        return dataclasses.replace(
            self,
            boxes=_move(self.boxes, device, non_blocking),
            scores=_move(self.scores, device, non_blocking),
            labels=_move(self.labels, device, non_blocking),
            batch_idx=_move(self.batch_idx, device, non_blocking),
            mask_probs=_move(self.mask_probs, device, non_blocking),
            masks=_move(self.masks, device, non_blocking),
            keypoints=_move(self.keypoints, device, non_blocking),
            keypoints_scores=_move(self.keypoints_scores, device, non_blocking),
        )

    def split(self) -> list[dict[str, Tensor]]:
        """One dict per image with `boxes`, `scores`, `labels`, and `masks` when set, else
        `mask_probs` when set, and `keypoints` / `keypoints_scores` when set.

        Within an image detections keep their packed order. One host sync (the counts).
        """
        order = torch.argsort(self.batch_idx, stable=True)
        counts = count_per_image(self.batch_idx, self.num_images).tolist()
        fields = {"boxes": self.boxes, "scores": self.scores, "labels": self.labels}
        if self.masks is None and self.mask_probs is not None:
            fields["mask_probs"] = self.mask_probs
        if self.keypoints is not None:
            fields["keypoints"], fields["keypoints_scores"] = self.keypoints, self.keypoints_scores
        pieces = {key: value[order].split(counts) for key, value in fields.items()}
        out = [{key: pieces[key][i] for key in fields} for i in range(self.num_images)]
        if self.masks is not None:
            for entry, mask in zip(out, self.masks):
                entry["masks"] = mask
        return out
