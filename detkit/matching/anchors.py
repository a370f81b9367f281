"""Anchor generation on a grid of feature-map locations, one tensor per pyramid level.

Shape shorthand:
    L    pyramid levels
    A_l  anchors per location on level l (sizes x aspect ratios)
    H_l, W_l  feature-map height / width on level l

Anchors follow torchvision's `AnchorGenerator` exactly: zero-centred cell anchors rounded to
integers, shifted by `arange(W) * stride` (no half-stride offset), location-major order
(all A_l anchors of location (y, x) before those of (y, x + 1)). Given the padded image size,
each level's stride is (Hp // H_l, Wp // W_l) as in torchvision: at 800 x 1216, P6 is
13 x 19 and its strides are (61, 64), not the nominal 64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["AnchorGenerator", "make_cell_anchors"]

_MAX_CACHE = 16


def make_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> Tensor:
    """Zero-centred anchors `Tensor[len(aspect_ratios) * len(sizes), 4]` float32, XYXY.

    Aspect ratio = height / width; ratio-major order (all sizes of the first ratio first);
    corners rounded to integers.
    """
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
    return (torch.stack((-ws, -hs, ws, hs), dim=1) / 2).round()


def _is_sequence(x) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str)


class AnchorGenerator(nn.Module):
    """Anchors for every location of L feature maps.

    Args:
        sizes: per level, the anchor sizes (sqrt of area, image pixels), e.g. `((32,), (64,))`.
        aspect_ratios: per level, the height/width ratios; a single flat sequence is used for
            every level, e.g. `(0.5, 1.0, 2.0)`.
        strides: per level, the feature-map stride in image pixels.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]],
        aspect_ratios: Sequence[Sequence[float]] | Sequence[float],
        strides: Sequence[int],
    ) -> None:
        super().__init__()
        if not sizes or not all(_is_sequence(s) and len(s) > 0 for s in sizes):
            raise ValueError(f"sizes must be a non-empty sequence of non-empty sequences per level, got {sizes!r}")
        num_levels = len(sizes)
        if aspect_ratios and not _is_sequence(aspect_ratios[0]):
            aspect_ratios = (tuple(aspect_ratios),) * num_levels
        if len(aspect_ratios) != num_levels or len(strides) != num_levels:
            raise ValueError(
                f"sizes, aspect_ratios and strides need one entry per level: got {num_levels}, "
                f"{len(aspect_ratios)} and {len(strides)}"
            )
        for ratios in aspect_ratios:
            if len(ratios) == 0 or any(not (r > 0 and math.isfinite(r)) for r in ratios):
                raise ValueError(f"aspect ratios must be positive and finite, got {ratios!r}")
        self.sizes = tuple(tuple(float(s) for s in level) for level in sizes)
        self.aspect_ratios = tuple(tuple(float(r) for r in level) for level in aspect_ratios)
        self.strides = tuple(int(s) for s in strides)
        for level, (s, r) in enumerate(zip(self.sizes, self.aspect_ratios)):
            self.register_buffer(f"cell_anchors_{level}", make_cell_anchors(s, r), persistent=False)
        self._cache: dict[tuple, list[Tensor]] = {}

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def cell_anchors(self) -> list[Tensor]:
        """Zero-centred anchors per level: `list[Tensor[A_l, 4]]` float32."""
        return [getattr(self, f"cell_anchors_{level}") for level in range(self.num_levels)]

    def num_anchors_per_location(self) -> list[int]:
        """A_l for every level."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def _apply(self, fn, *args, **kwargs):
        self._cache = {}
        return super()._apply(fn, *args, **kwargs)

    def level_strides(
        self, feature_sizes: Sequence[tuple[int, int]], image_size: tuple[int, int] | None = None
    ) -> list[tuple[int, int]]:
        """(stride_y, stride_x) per level: `image_size` (padded Hp, Wp) // (H_l, W_l) as torchvision
        computes them, or the configured strides when `image_size` is None."""
        if image_size is None:
            return [(s, s) for s in self.strides]
        hp, wp = (int(v) for v in image_size)
        return [(hp // max(int(h), 1), wp // max(int(w), 1)) for h, w in feature_sizes]

    def grid_anchors(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        device: torch.device,
        image_size: tuple[int, int] | None = None,
    ) -> list[Tensor]:
        """Uncached float32 anchors: `list[Tensor[H_l * W_l * A_l, 4]]` (strides: `level_strides`)."""
        if len(feature_sizes) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature sizes, got {len(feature_sizes)}")
        out = []
        strides = self.level_strides(feature_sizes, image_size)
        for (h, w), (stride_y, stride_x), cell in zip(feature_sizes, strides, self.cell_anchors()):
            cell = cell.to(device)
            shifts_x = torch.arange(w, dtype=torch.float32, device=device) * stride_x
            shifts_y = torch.arange(h, dtype=torch.float32, device=device) * stride_y
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 1, 4)  # [H*W, 1, 4]
            out.append((shifts + cell[None]).reshape(-1, 4))  # [H*W*A, 4]
        return out

    def forward(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        *,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        image_size: tuple[int, int] | None = None,
    ) -> list[Tensor]:
        """Anchors per level, XYXY image pixels: `list[Tensor[H_l * W_l * A_l, 4]]`.

        `image_size` (padded Hp, Wp) sets each level's stride to Hp // H_l, Wp // W_l as in
        torchvision (the RPN passes it); without it the configured strides are used.
        Results are cached per (feature sizes, strides, device, dtype); the cache is a plain
        dict (not state) holding at most 16 entries and is cleared when the module is moved.
        """
        device = torch.device(device)
        sizes = tuple((int(h), int(w)) for h, w in feature_sizes)
        strides = tuple(self.level_strides(sizes, image_size))
        key = (sizes, strides, str(device), dtype)
        anchors = self._cache.get(key)
        if anchors is None:
            anchors = [a.to(dtype) for a in self.grid_anchors(sizes, device, image_size)]
            if len(self._cache) >= _MAX_CACHE:
                self._cache.clear()
            self._cache[key] = anchors
        return list(anchors)
