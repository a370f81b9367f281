"""Detection transforms on torchvision.transforms.v2 (boxes and masks move with the image).

Samples are ``(image, target)`` pairs as returned by the detkit data sets: ``image`` a
``tv_tensors.Image``, ``target`` a dict with ``boxes`` (``tv_tensors.BoundingBoxes``),
``labels``, ``iscrowd`` and optionally ``masks`` (``tv_tensors.Mask``) and ``keypoints``
(``Tensor[K, P, 3]`` float32, x, y, v; P keypoints per instance).

Keypoints: v2 moves ``tv_tensors.KeyPoints`` (x, y only) through resizes, so the pipeline splits
``keypoints`` into ``KeyPoints[K, P, 2]`` and the visibility ``[K, P]`` first and joins them at the
end; v2 neither swaps left / right keypoints in a flip nor uses the box convention for them (its
kernel maps x to W - 1 - x, pixel indices; boxes map to W - x), so :class:`RandomHorizontalFlip`
mirrors keypoints itself: x -> W - x, the coordinates of boxes, then swaps them by ``flip_map``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["PER_BOX_KEYS", "RandomHorizontalFlip", "build_transforms", "per_box_tensors"]

# Per-instance target entries that must stay aligned with ``boxes`` when boxes are dropped.
# (``masks`` are tv_tensors.Mask and are filtered by SanitizeBoundingBoxes on their own.)
PER_BOX_KEYS = ("labels", "iscrowd", "difficult", "area", "keypoints", "keypoints_visibility")


def _target_of(sample: Any) -> dict | None:
    if isinstance(sample, dict):
        return sample
    if isinstance(sample, (tuple, list)):
        return next((s for s in sample if isinstance(s, dict)), None)
    return None


class _SplitKeypoints(v2.Transform):
    """``keypoints`` ``[K, P, 3]`` -> ``KeyPoints[K, P, 2]`` (moved by v2) + ``keypoints_visibility`` ``[K, P]``."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        target = _target_of(sample)
        if target is not None and "keypoints" in target and "keypoints_visibility" not in target:
            kp = target["keypoints"].as_subclass(torch.Tensor)
            canvas = target["boxes"].canvas_size
            target["keypoints_visibility"] = kp[..., 2].clone()
            target["keypoints"] = tv_tensors.KeyPoints(kp[..., :2].contiguous(), canvas_size=canvas)
        return sample


class _JoinKeypoints(v2.Transform):
    """The inverse of ``_SplitKeypoints``: ``keypoints`` ``[K, P, 3]`` (x = y = 0 where v = 0)."""

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        target = _target_of(sample)
        if target is not None and "keypoints_visibility" in target:
            vis = target.pop("keypoints_visibility").as_subclass(torch.Tensor)
            xy = target["keypoints"].as_subclass(torch.Tensor).float() * (vis > 0).unsqueeze(-1)
            target["keypoints"] = torch.cat([xy, vis.unsqueeze(-1).float()], dim=-1)
        return sample


class RandomHorizontalFlip(v2.RandomHorizontalFlip):
    """v2's flip that also mirrors keypoints: x -> W - x (the box convention) and left <-> right.

    Samples without keypoints go through ``v2.RandomHorizontalFlip`` unchanged (the same random
    draw), so pipelines without keypoints give the same results as with v2's own flip.

    Args:
        p: flip probability.
        flip_map: ``flip_map[i]`` is the keypoint that keypoint i becomes when mirrored (e.g.
            left_eye <-> right_eye); None: keypoints keep their index.
    """

    def __init__(self, p: float = 0.5, flip_map: Sequence[int] | None = None) -> None:
        super().__init__(p=p)
        self.flip_map = None if flip_map is None else [int(i) for i in flip_map]

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        target = _target_of(sample)
        kp = None if target is None else target.get("keypoints")
        if not isinstance(kp, tv_tensors.KeyPoints):
            return super().forward(*inputs)
        if torch.rand(1) >= self.p:  # v2's draw
            return sample
        image = F.horizontal_flip(sample[0])  # a keypoint sample is (image, target): v2's kernels, no draw
        rest = {
            k: F.horizontal_flip(v) if isinstance(v, (tv_tensors.BoundingBoxes, tv_tensors.Mask)) else v
            for k, v in target.items()
            if k not in ("keypoints", "keypoints_visibility")
        }
        xy = kp.as_subclass(torch.Tensor).clone()
        xy[..., 0] = kp.canvas_size[1] - xy[..., 0]
        vis = target.get("keypoints_visibility")
        if self.flip_map is not None:
            xy = xy[:, self.flip_map]
            vis = None if vis is None else vis[:, self.flip_map]
        rest["keypoints"] = tv_tensors.KeyPoints(xy, canvas_size=kp.canvas_size)
        if vis is not None:
            rest["keypoints_visibility"] = vis
        return image, rest


def per_box_tensors(sample: Any) -> tuple[torch.Tensor, ...] | None:
    """``labels_getter`` for ``v2.SanitizeBoundingBoxes``: the per-box tensors of the target.

    Accepts ``(image, target)`` or a single dict sample.
    """
    target = sample
    if isinstance(sample, (tuple, list)):
        target = next((s for s in sample if isinstance(s, dict)), None)
    if not isinstance(target, dict):
        return None
    found = tuple(target[k] for k in PER_BOX_KEYS if isinstance(target.get(k), torch.Tensor))
    return found or None


def build_transforms(
    train: bool,
    *,
    min_size: int | Sequence[int] | None = 800,
    max_size: int | None = 1333,
    hflip_prob: float = 0.5,
    color_jitter: float = 0.0,
    flip_map: Sequence[int] | None = None,
) -> v2.Compose:
    """Standard detection pipeline.

    ``ToImage`` -> colour jitter (train) -> shortest-side resize -> horizontal flip (train)
    -> ``ToDtype(float32, scale=True)`` -> clamp + sanitize boxes (labels, iscrowd and
    masks follow the kept boxes).

    Args:
        train: add the random augmentations.
        min_size: target shorter side; a sequence gives scale jitter in training (one value
            drawn per image) and its largest value is used at test time. None: no resize
            (detkit models also resize internally).
        max_size: cap on the longer side after resizing (None: no cap).
        hflip_prob: probability of a horizontal flip (train).
        color_jitter: strength s of ``ColorJitter(brightness=0.4s, contrast=0.4s,
            saturation=0.4s, hue=0.1s)`` (train); 0 disables.
        flip_map: mirror index of each keypoint for the flip (see :class:`RandomHorizontalFlip`).

    Targets with ``keypoints`` ``[K, P, 3]`` come out with them moved, flipped and filtered with
    the boxes (module docstring).
    """
    ops: list[Any] = [v2.ToImage(), _SplitKeypoints()]
    if train and color_jitter > 0:
        s = float(color_jitter)
        ops.append(
            v2.ColorJitter(
                brightness=0.4 * s,
                contrast=0.4 * s,
                saturation=0.4 * s,
                hue=min(0.1 * s, 0.5),
            )
        )
    if min_size is not None:
        sizes = [int(min_size)] if isinstance(min_size, int) else [int(v) for v in min_size]
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"min_size must be positive, got {min_size!r}")
        # RandomShortestSize: scale = min(short / shorter_side, max_size / longer_side)
        ops.append(v2.RandomShortestSize(sizes if train else [max(sizes)], max_size=max_size))
    if train and hflip_prob > 0:
        ops.append(RandomHorizontalFlip(p=hflip_prob, flip_map=flip_map))
    ops += [
        v2.ToDtype(torch.float32, scale=True),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(labels_getter=per_box_tensors),
        _JoinKeypoints(),
    ]
    return v2.Compose(ops)
