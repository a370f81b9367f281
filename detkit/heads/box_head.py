"""Box heads (RoI features -> vector) and the box predictor (class logits + box deltas).

Shape shorthand: R RoIs, C channels, S pooled resolution, K classes (without background).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


class ClassRows(NamedTuple):
    """How the rows (dim 0) of a class-specific parameter map to classes.

    `per_class` consecutive rows per class; with `background` the first `per_class` rows are the
    background's, then classes 1..K follow, else classes 1..K start at row 0. Class logits over
    K+1 classes: `ClassRows(1, True)`; class-specific deltas `Tensor[(K+1)*4, D]`: `ClassRows(4, True)`;
    mask logits (one channel per class): `ClassRows(1, False)`.
    """

    per_class: int
    background: bool


class TwoFCHead(nn.Module):
    """Flatten Tensor[R, C, S, S] -> fc6 -> ReLU -> fc7 -> ReLU -> Tensor[R, fc_dim]."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024, *, dropout: float = 0.0):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_channels = fc_dim

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(self.fc6(x.flatten(1)).relu_())
        return self.dropout(self.fc7(x).relu_())


class BoxPredictor(nn.Module):
    """Linear class logits Tensor[R, K+1] (index 0 = background) and class-specific deltas Tensor[R, (K+1)*4]."""

    def __init__(self, in_channels: int, num_classes: int, *, class_agnostic_box: bool = False):
        super().__init__()
        self.num_classes = num_classes
        self.cls_score = nn.Linear(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 if class_agnostic_box else (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def class_rows(self) -> dict[str, ClassRows]:
        """The class-specific parameters (class-agnostic box deltas are not) and their row layouts."""
        rows = {"cls_score.weight": ClassRows(1, True), "cls_score.bias": ClassRows(1, True)}
        if self.bbox_pred.out_features != 4:
            rows |= {"bbox_pred.weight": ClassRows(4, True), "bbox_pred.bias": ClassRows(4, True)}
        return rows

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)
