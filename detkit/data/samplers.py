"""Batch samplers that group images of similar aspect ratio (less padding per batch)."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Sequence

from torch.utils.data import Sampler

__all__ = [
    "AspectRatioGroupedBatchSampler",
    "aspect_ratio_groups",
]


def aspect_ratio_groups(aspect_ratios: Sequence[float], boundaries: Sequence[float] = (1.0,)) -> list[int]:
    """Group id of every width/height ratio: the number of ``boundaries`` <= it.

    The default ``(1.0,)`` gives two groups: portrait (w/h < 1) -> 0, landscape/square -> 1.
    """
    bounds = sorted(float(b) for b in boundaries)
    return [bisect.bisect_right(bounds, float(r)) for r in aspect_ratios]


class AspectRatioGroupedBatchSampler(Sampler[list[int]]):
    """Batch indices of ``sampler`` so that images in a batch share an aspect-ratio group.

    Indices are taken in the inner sampler's order and collected per group; a group's batch
    is yielded as soon as it is full. At the end of an epoch the leftovers (fewer than
    ``batch_size`` per group) are flushed group by group in batches of ``batch_size`` (the
    last ``ceil(leftovers / batch_size)`` batches may mix groups), so every index is yielded
    exactly once and the number of batches, ``ceil(len(sampler) / batch_size)``
    (``floor`` with ``drop_last``), depends only on ``len(sampler)``. That keeps the batch
    count equal across ranks when the inner sampler is a ``DistributedSampler``, which
    distributed training needs.

    Args:
        sampler: inner sampler of dataset indices (e.g. ``RandomSampler``, ``DistributedSampler``).
        aspect_ratios: width/height of every dataset image (``dataset.aspect_ratios()``).
        batch_size: images per batch.
        drop_last: drop the final incomplete batch.
        group_boundaries: aspect-ratio bin edges (see :func:`aspect_ratio_groups`).
    """

    def __init__(
        self,
        sampler: Iterable[int],
        aspect_ratios: Sequence[float],
        batch_size: int,
        drop_last: bool = False,
        group_boundaries: Sequence[float] = (1.0,),
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.sampler = sampler
        self.aspect_ratios = list(aspect_ratios)
        self.batch_size = int(batch_size)
        self.drop_last = bool(drop_last)
        self.group_boundaries = tuple(group_boundaries)
        self._groups = aspect_ratio_groups(self.aspect_ratios, self.group_boundaries)

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = {}
        for idx in self.sampler:
            buf = buffers.setdefault(self._groups[idx], [])
            buf.append(idx)
            if len(buf) == self.batch_size:
                yield buf
                buffers[self._groups[idx]] = []
        leftovers = [i for g in sorted(buffers) for i in buffers[g]]
        for start in range(0, len(leftovers), self.batch_size):
            batch = leftovers[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Forward to the inner sampler (``DistributedSampler`` reshuffles per epoch)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
