"""The label map: which data set category each class label of a detector stands for.

Labels are 1..K (0 is the background); label `k` is the data set's category `category_ids[k-1]`,
named `names[k-1]`. A detector is trained against one label map; the same map must be used
wherever its outputs meet data again (validation, test, prediction, resuming), so checkpoints
record it and the joints compare it with the data's through `LabelMap.reconcile`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["LabelMap", "LabelMapMismatchError"]


class LabelMapMismatchError(ValueError):
    """A detector's label map and a data set's categories are not the same classes."""


@dataclass(frozen=True)
class LabelMap:
    """`category_ids[k-1]` / `names[k-1]` of label k (k = 1..K)."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "category_ids", tuple(int(c) for c in self.category_ids))
        object.__setattr__(self, "names", tuple(str(n) for n in self.names))
        if len(self.category_ids) != len(self.names):
            raise ValueError(f"label map: {len(self.category_ids)} category ids but {len(self.names)} names")
        if len(set(self.category_ids)) != len(self.category_ids):
            raise ValueError(f"label map: repeated category ids {list(self.category_ids)}")

    @classmethod
    def from_categories(cls, categories: Sequence[Mapping]) -> LabelMap:
        """From COCO `categories` entries (`id`, `name`): labels follow the ids in ascending order."""
        cats = sorted(categories, key=lambda c: int(c["id"]))
        return cls(tuple(int(c["id"]) for c in cats), tuple(str(c["name"]) for c in cats))

    @classmethod
    def from_label_to_category_id(cls, mapping: Mapping[int, int], names: Sequence[str] | None) -> LabelMap:
        """From `{label: category_id}` (labels 1..K) and the names in label order (None: the ids as names)."""
        labels = sorted(int(k) for k in mapping)
        if labels != list(range(1, len(labels) + 1)):
            raise ValueError(f"label map: labels must be 1..{len(labels)}, got {labels}")
        ids = tuple(int(mapping[k]) for k in sorted(mapping, key=int))
        if names is None:
            names = [str(c) for c in ids]
        if len(names) != len(ids):
            raise ValueError(f"label map: {len(ids)} labels but {len(names)} class names")
        return cls(ids, tuple(names))

    @classmethod
    def from_names(cls, names: Sequence[str], data: LabelMap, *, what: str = "the data") -> LabelMap:
        """The map of a detector that knows only its class names (label order): `data`'s category id of
        each name. `LabelMapMismatchError` (both shown) when the names are not `data`'s."""
        if sorted(names) != sorted(data.names):
            raise _mismatch("[" + ", ".join(names) + "]", data, what)
        by_name = dict(zip(data.names, data.category_ids))
        return cls(tuple(by_name[n] for n in names), tuple(names))

    def __len__(self) -> int:
        return len(self.category_ids)

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return {k + 1: c for k, c in enumerate(self.category_ids)}

    def describe(self) -> str:
        """`{3: disk, 7: square}`: category id and name in label order, as errors show it."""
        return "{" + ", ".join(f"{c}: {n}" for c, n in zip(self.category_ids, self.names)) + "}"

    def reconcile(self, data: LabelMap, *, what: str = "the data") -> LabelMap | None:
        """How a detector trained with this map reads `data`'s categories.

        Returns None when the maps are equal; the map to write results with (this map's label
        order, `data`'s category ids) when the names are the same classes with other ids; raises
        `LabelMapMismatchError` (both maps shown) when the classes differ.
        """
        if self == data:
            return None
        if sorted(self.names) == sorted(data.names) and len(set(self.names)) == len(self.names):
            by_name = dict(zip(data.names, data.category_ids))
            return LabelMap(tuple(by_name[n] for n in self.names), self.names)
        raise _mismatch(self.describe(), data, what)


def _mismatch(shown: str, data: LabelMap, what: str) -> LabelMapMismatchError:
    return LabelMapMismatchError(
        f"the checkpoint's classes {shown} are not {what}'s categories {data.describe()} (category id: name): "
        "use data with the checkpoint's categories, or fine-tune on the new ones with --model.weights CHECKPOINT"
    )
