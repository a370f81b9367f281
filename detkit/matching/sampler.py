"""Balanced positive/negative sampling of labelled predictions, vectorised over the batch.

Shape shorthand:
    N  images
    P  predictions (anchors or proposals) per image
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BalancedSampler"]


def _random_subset(candidates: Tensor, keys: Tensor, counts: Tensor, max_count: int) -> Tensor:
    """Mask `Tensor[N, P]` of `counts[n]` candidates per row drawn uniformly (smallest random keys).

    Uses top-k with k = `max_count` instead of a full sort of each row: O(P log k).
    """
    k = min(max_count, candidates.shape[1])
    if k == 0:
        return torch.zeros_like(candidates)
    masked = torch.where(candidates, keys, 2.0)  # keys lie in [0, 1)
    chosen = torch.topk(masked, k, dim=1, largest=False).indices  # [N, k], in increasing key order
    take = torch.arange(k, device=keys.device)[None, :] < counts  # first counts[n] of each row
    mask = torch.zeros_like(candidates)
    return mask.scatter_(1, chosen, take) & candidates


class BalancedSampler:
    """Sample a fixed-size, positive-balanced subset of predictions per image.

    Per image, at most `int(batch_size_per_image * positive_fraction)` positives are drawn
    uniformly at random from the positives (label 1); negatives (label 0) fill up to
    `batch_size_per_image`, as many as there are: `num_neg = min(batch - num_pos, available)`
    (same as torchvision's `BalancedPositiveNegativeSampler`). Ignored (-1) and invalid
    (padding) entries are never drawn.

    Args:
        batch_size_per_image: sampled predictions per image (at most).
        positive_fraction: largest fraction of positives in the sample.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float):
        if batch_size_per_image <= 0:
            raise ValueError(f"batch_size_per_image must be positive, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(f"positive_fraction must lie in [0, 1], got {positive_fraction}")
        self.batch_size_per_image = int(batch_size_per_image)
        self.positive_fraction = float(positive_fraction)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def __call__(
        self,
        labels: Tensor,
        *,
        valid: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Draw the samples.

        Args:
            labels: `Tensor[N, P]` with 1 positive, 0 negative, -1 ignore.
            valid: `Tensor[N, P]` bool, False for padding entries (never sampled).
            generator: random generator on `labels.device`, for reproducible draws.

        Returns:
            pos_mask, neg_mask: `Tensor[N, P]` bool, disjoint.
        """
        if labels.dim() != 2:
            raise ValueError(f"labels must be [N, P], got {tuple(labels.shape)}")
        positive = labels == 1
        negative = labels == 0
        if valid is not None:
            if valid.shape != labels.shape:
                raise ValueError(f"valid must be {tuple(labels.shape)}, got {tuple(valid.shape)}")
            positive = positive & valid
            negative = negative & valid
        if labels.shape[1] == 0:
            return positive, negative

        max_pos = int(self.batch_size_per_image * self.positive_fraction)
        num_pos = positive.sum(dim=1, keepdim=True).clamp(max=max_pos)  # [N, 1]
        num_neg = (self.batch_size_per_image - num_pos).clamp(max=negative.sum(dim=1, keepdim=True))  # [N, 1]

        keys = torch.rand(labels.shape, generator=generator, device=labels.device)
        pos_mask = _random_subset(positive, keys, num_pos, max_pos)
        neg_mask = _random_subset(negative, keys, num_neg, self.batch_size_per_image)
        return pos_mask, neg_mask
