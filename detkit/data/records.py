"""Compact per-image records of a detection data set: a few numpy arrays, no per-image objects.

Shape shorthand: N images, M annotations over all images, K annotations of one image, P keypoints
per instance.

A list of per-image Python objects (dicts, dataclasses, small arrays) costs ~1 KB per image
plus the objects of every annotation, and every DataLoader worker that reads them touches
their reference counts, so copy-on-write copies those pages into each worker: memory grows
with the number of workers and the length of the epoch. :class:`RecordStore` keeps the same
information in flat arrays (annotations packed with per-image offsets, strings and other
variable-size data in one byte buffer each): reading a record touches no shared page, and
workers keep sharing the parent's memory. Records are rebuilt on access as :class:`Record`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detkit.utils.gc_pause import paused_gc

__all__ = ["ByteBuffer", "Record", "RecordStore", "clean_coco_store"]


@dataclass(slots=True)
class Record:
    """One image's record: what :class:`RecordStore` stores, rebuilt on access."""

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    boxes: np.ndarray  # [K, 4] float32 XYXY
    labels: np.ndarray  # [K] int64
    iscrowd: np.ndarray  # [K] uint8
    segmentations: list = field(default_factory=list)  # K COCO segmentations (with masks only)
    keypoints: np.ndarray | None = None  # [K, P, 3] float32 (x, y, v) (keypoint data only)


def _bytes_to_json(value: Any) -> dict:
    if isinstance(value, bytes):  # compressed RLE counts
        return {"__bytes__": value.decode("latin-1")}
    raise TypeError(f"segmentation value of type {type(value).__name__} cannot be stored")


def _json_to_bytes(obj: dict) -> Any:
    return obj["__bytes__"].encode("latin-1") if obj.keys() == {"__bytes__"} else obj


def _dump_segmentations(segs: list) -> bytes:
    """COCO segmentations (polygons, RLE with str or bytes counts) as JSON bytes: safe to read back."""
    return json.dumps(segs, default=_bytes_to_json, separators=(",", ":")).encode("utf-8")


def _load_segmentations(data: bytes) -> list:
    return json.loads(data, object_hook=_json_to_bytes)


class ByteBuffer:
    """N byte strings in one uint8 array with int64 offsets: item i is `data[offsets[i]:offsets[i + 1]]`."""

    def __init__(self, items: Iterable[bytes]):
        items = list(items)
        lengths = np.fromiter((len(b) for b in items), dtype=np.int64, count=len(items))
        self.offsets = np.zeros(len(items) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.data = np.frombuffer(b"".join(items), dtype=np.uint8)

    @classmethod
    def from_strings(cls, strings: Iterable[str]) -> ByteBuffer:
        return cls(s.encode("utf-8", "surrogatepass") for s in strings)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> bytes:
        return self.data[self.offsets[index] : self.offsets[index + 1]].tobytes()

    def string(self, index: int) -> str:
        return self[index].decode("utf-8", "surrogatepass")

    def take(self, indices: np.ndarray) -> ByteBuffer:
        return ByteBuffer(self[int(i)] for i in indices)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.offsets.nbytes


class RecordStore(Sequence):
    """Records of N images in flat numpy arrays (see the module docstring).

    `store[i]` is a :class:`Record` (fresh arrays, safe to modify); `len(store)` is N.
    Arrays: `image_ids`, `heights`, `widths` `[N]`; `starts` `[N + 1]` offsets of each image's
    annotations in `boxes` `[M, 4]` float32, `labels` `[M]` int64, `iscrowd` `[M]` uint8.
    `keypoints` `[M, P, 3]` float32 (x, y, v) when the data has keypoints (else None).
    Strings (`file_name`, `path`), the segmentations of each image (JSON, only when
    stored) and the image's json entry (when given) live in one :class:`ByteBuffer` each.
    """

    def __init__(
        self,
        *,
        image_ids: np.ndarray,
        heights: np.ndarray,
        widths: np.ndarray,
        starts: np.ndarray,
        boxes: np.ndarray,
        labels: np.ndarray,
        iscrowd: np.ndarray,
        file_names: ByteBuffer,
        paths: ByteBuffer,
        segmentations: ByteBuffer | None = None,
        image_entries: ByteBuffer | None = None,
        keypoints: np.ndarray | None = None,
    ):
        n = len(image_ids)
        if not (len(heights) == len(widths) == len(file_names) == len(paths) == n and len(starts) == n + 1):
            raise ValueError("RecordStore: per-image arrays differ in length")
        if not (len(boxes) == len(labels) == len(iscrowd) == int(starts[-1])):
            raise ValueError("RecordStore: per-annotation arrays differ in length")
        if keypoints is not None and len(keypoints) != len(labels):
            raise ValueError("RecordStore: keypoints and labels differ in length")
        for extra in (segmentations, image_entries):
            if extra is not None and len(extra) != n:
                raise ValueError("RecordStore: per-image buffers differ in length")
        self.image_ids, self.heights, self.widths, self.starts = image_ids, heights, widths, starts
        self.boxes, self.labels, self.iscrowd = boxes, labels, iscrowd
        self.file_names, self.paths = file_names, paths
        self.segmentations, self.image_entries = segmentations, image_entries
        self.keypoints = keypoints

    @classmethod
    def from_records(
        cls,
        records: Sequence[Any],
        *,
        with_segmentations: bool = False,
        image_entries: Mapping[int, dict] | None = None,
        num_keypoints: int | None = None,
    ) -> RecordStore:
        """Pack objects with the fields of :class:`Record` (e.g. a list of them).

        `with_segmentations` stores each record's `segmentations`; `image_entries` maps image
        ids to json-serialisable entries kept for :meth:`image_entry`; `num_keypoints` P stores
        each record's `keypoints` `[K, P, 3]`.
        """
        n = len(records)
        counts = np.fromiter((len(r.labels) for r in records), dtype=np.int64, count=n)
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])

        def packed(name: str, dtype, shape: tuple) -> np.ndarray:
            parts = [np.asarray(getattr(r, name), dtype=dtype).reshape(-1, *shape) for r in records]
            return np.concatenate(parts) if parts else np.zeros((0, *shape), dtype=dtype)

        return cls(
            image_ids=np.fromiter((r.image_id for r in records), dtype=np.int64, count=n),
            heights=np.fromiter((r.height for r in records), dtype=np.int32, count=n),
            widths=np.fromiter((r.width for r in records), dtype=np.int32, count=n),
            starts=starts,
            boxes=packed("boxes", np.float32, (4,)),
            labels=packed("labels", np.int64, ()),
            iscrowd=packed("iscrowd", np.uint8, ()),
            file_names=ByteBuffer.from_strings(r.file_name for r in records),
            paths=ByteBuffer.from_strings(r.path for r in records),
            segmentations=(
                ByteBuffer(_dump_segmentations(r.segmentations) for r in records) if with_segmentations else None
            ),
            image_entries=(
                None
                if image_entries is None
                else ByteBuffer.from_strings(json.dumps(image_entries[r.image_id]) for r in records)
            ),
            keypoints=None if num_keypoints is None else packed("keypoints", np.float32, (num_keypoints, 3)),
        )

    def __len__(self) -> int:
        return len(self.image_ids)

    def _index(self, index: int) -> int:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"record index {index} out of range for {n} records")
        return index

    def __getitem__(self, index: int) -> Record:  # type: ignore[override]
        i = self._index(int(index))
        lo, hi = int(self.starts[i]), int(self.starts[i + 1])
        segs = _load_segmentations(self.segmentations[i]) if self.segmentations is not None else []
        return Record(
            image_id=int(self.image_ids[i]),
            file_name=self.file_names.string(i),
            path=self.paths.string(i),
            height=int(self.heights[i]),
            width=int(self.widths[i]),
            boxes=self.boxes[lo:hi].copy(),
            labels=self.labels[lo:hi].copy(),
            iscrowd=self.iscrowd[lo:hi].copy(),
            segmentations=segs,
            keypoints=None if self.keypoints is None else self.keypoints[lo:hi].copy(),
        )

    def __iter__(self) -> Iterator[Record]:
        return (self[i] for i in range(len(self)))

    def image_entry(self, index: int) -> dict:
        """The json entry of the image at `index` (a fresh dict); KeyError when none was stored."""
        if self.image_entries is None:
            raise KeyError("RecordStore was built without image entries")
        return json.loads(self.image_entries.string(self._index(int(index))))

    def num_annotations(self) -> np.ndarray:
        """Annotations per image: `[N]` int64."""
        return np.diff(self.starts)

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image."""
        return (self.widths / self.heights).tolist()

    def select(self, indices: Sequence[int] | np.ndarray) -> RecordStore:
        """A store with the records at `indices`, in that order."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        counts = self.num_annotations()[idx]
        starts = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        ann = (
            np.concatenate([np.arange(self.starts[i], self.starts[i + 1]) for i in idx])
            if len(idx)
            else np.zeros(0, dtype=np.int64)
        )
        return RecordStore(
            image_ids=self.image_ids[idx],
            heights=self.heights[idx],
            widths=self.widths[idx],
            starts=starts,
            boxes=self.boxes[ann],
            labels=self.labels[ann],
            iscrowd=self.iscrowd[ann],
            file_names=self.file_names.take(idx),
            paths=self.paths.take(idx),
            segmentations=None if self.segmentations is None else self.segmentations.take(idx),
            image_entries=None if self.image_entries is None else self.image_entries.take(idx),
            keypoints=None if self.keypoints is None else self.keypoints[ann],
        )

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays and buffers."""
        arrays = (self.image_ids, self.heights, self.widths, self.starts, self.boxes, self.labels, self.iscrowd)
        arrays += () if self.keypoints is None else (self.keypoints,)
        buffers = (self.file_names, self.paths, self.segmentations, self.image_entries)
        return sum(a.nbytes for a in arrays) + sum(b.nbytes for b in buffers if b is not None)


def _ints(values: Sequence[Any]) -> np.ndarray | None:
    """`values` as int64 when every one is a Python int (not a bool), else None."""
    if not set(map(type, values)) <= {int}:
        return None
    return np.array(values, dtype=np.int64)


def _simple_relative(name: Any) -> bool:
    """A file name that joins to `root/name` unchanged: relative, no empty, '.' or '..' parts."""
    return type(name) is str and "\x00" not in name and all(p not in ("", ".", "..") for p in name.split("/"))


def clean_coco_store(
    data: Mapping[str, Any],
    *,
    image_root: str,
    category_id_to_label: Mapping[int, int],
    keep_empty: bool,
    include_crowd: bool,
    with_masks: bool = False,
) -> tuple[RecordStore, dict[str, int]] | None:
    """Records of a COCO json with vectorised checks, or None when any entry needs the
    per-annotation checks (then the caller's slow path raises or skips with its messages).
    With `with_masks`, polygon segmentations are checked and stored (RLE: None).

    For a file without problems the records and counts equal `CocoDetection`'s own: images
    sorted by id, annotations in file order, zero-size boxes dropped (counted in
    `degenerate_boxes`), boxes partly outside clipped (`clipped_boxes`), crowd annotations
    dropped unless `include_crowd` (`crowd_excluded`), empty images dropped unless
    `keep_empty` (`empty_images_dropped`).
    """
    with paused_gc():
        return _clean_coco_store(data, image_root, category_id_to_label, keep_empty, include_crowd, with_masks)


def _checked_polygons(segs: list, widths: np.ndarray, heights: np.ndarray) -> bool:
    """Whether every entry of `segs` is a valid COCO polygon list for an image of that size
    (the rules of the per-annotation check: >= 3 points, numbers, not far outside)."""
    if not all(type(seg) is list and seg for seg in segs):
        return False
    polys = list(itertools.chain.from_iterable(segs))
    if not all(type(p) is list for p in polys):
        return False
    lengths = np.fromiter(map(len, polys), dtype=np.int64, count=len(polys))
    if (lengths % 2).any() or (lengths < 6).any():
        return False
    values = list(itertools.chain.from_iterable(polys))
    if not set(map(type, values)) <= {int, float}:
        return False
    coords = np.array(values, dtype=np.float64)
    if not np.isfinite(coords).all():
        return False
    per_ann = np.fromiter(map(len, segs), dtype=np.int64, count=len(segs))
    owner = np.repeat(np.repeat(np.arange(len(segs)), per_ann), lengths)  # annotation of each value
    w, h = widths[owner[0::2]], heights[owner[1::2]]  # every polygon has even length: x, y alternate
    xs, ys = coords[0::2], coords[1::2]
    return not ((xs < -w).any() or (xs > 2 * w).any() or (ys < -h).any() or (ys > 2 * h).any())


def _clean_coco_store(data, image_root, category_id_to_label, keep_empty, include_crowd, with_masks):
    images, anns = data["images"], data["annotations"]
    try:
        img_rows = [(img["id"], img["height"], img["width"], img["file_name"]) for img in images]
        ann_rows = [(a["id"], a["image_id"], a["category_id"], a.get("iscrowd", 0), a["bbox"]) for a in anns]
    except (KeyError, TypeError, AttributeError):
        return None
    img_cols = list(zip(*img_rows)) or [(), (), (), ()]
    ann_cols = list(zip(*ann_rows)) or [(), (), (), (), ()]
    image_ids, heights, widths = (_ints(c) for c in img_cols[:3])
    ann_ids, ann_images, ann_cats, crowd = (_ints(c) for c in ann_cols[:4])
    if any(a is None for a in (image_ids, heights, widths, ann_ids, ann_images, ann_cats, crowd)):
        return None
    names, bboxes = img_cols[3], ann_cols[4]
    if len(np.unique(image_ids)) != len(image_ids) or len(np.unique(ann_ids)) != len(ann_ids):
        return None
    if (heights <= 0).any() or (widths <= 0).any() or ((crowd != 0) & (crowd != 1)).any():
        return None
    if not all(map(_simple_relative, names)):
        return None
    if not all(type(b) is list and len(b) == 4 for b in bboxes):
        return None
    if not set(map(type, (v for b in bboxes for v in b))) <= {int, float}:
        return None
    xywh = np.array(bboxes, dtype=np.float64).reshape(-1, 4)
    if not np.isfinite(xywh).all() or (xywh[:, 2:] < 0).any():
        return None
    cat_ids = np.array(sorted(category_id_to_label), dtype=np.int64)
    cat_pos = np.searchsorted(cat_ids, ann_cats).clip(max=max(len(cat_ids) - 1, 0))
    order_ids = np.argsort(image_ids, kind="stable")
    sorted_ids = image_ids[order_ids]
    img_pos = np.searchsorted(sorted_ids, ann_images).clip(max=max(len(sorted_ids) - 1, 0))
    if len(anns) and (
        not len(cat_ids)
        or not len(sorted_ids)
        or (cat_ids[cat_pos] != ann_cats).any()
        or (sorted_ids[img_pos] != ann_images).any()
    ):
        return None

    stats = dict.fromkeys(("degenerate_boxes", "clipped_boxes", "crowd_excluded", "empty_images_dropped"), 0)
    excluded = (crowd == 1) & (not include_crowd)
    stats["crowd_excluded"] = int(excluded.sum())
    degenerate = ~excluded & ((xywh[:, 2] == 0) | (xywh[:, 3] == 0))
    stats["degenerate_boxes"] = int(degenerate.sum())
    kept = ~excluded & ~degenerate
    h = heights[order_ids][img_pos].astype(np.float64)
    w = widths[order_ids][img_pos].astype(np.float64)
    x, y = xywh[:, 0], xywh[:, 1]
    x2, y2 = x + xywh[:, 2], y + xywh[:, 3]
    clipped = np.stack([x.clip(0, None), y.clip(0, None), x2.clip(0, None), y2.clip(0, None)], 1)
    clipped = np.minimum(clipped, np.stack([w, h, w, h], 1))
    if ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))[kept].any():
        return None  # a box outside its image: an error the slow path reports
    stats["clipped_boxes"] = int((kept & (clipped != np.stack([x, y, x2, y2], 1)).any(1)).sum())

    keep_idx = np.flatnonzero(kept)
    by_image = keep_idx[np.argsort(img_pos[keep_idx], kind="stable")]  # image order, file order inside
    if with_masks:
        try:
            segs = [anns[i]["segmentation"] for i in by_image.tolist()]
        except KeyError:
            return None
        if not _checked_polygons(segs, w[by_image], h[by_image]):
            return None
        segs_of = dict(zip(by_image.tolist(), segs))
    counts = np.bincount(img_pos[by_image], minlength=len(sorted_ids))
    image_sel = np.arange(len(sorted_ids))
    if not keep_empty:
        non_crowd = np.bincount(img_pos[by_image], weights=crowd[by_image] == 0, minlength=len(sorted_ids))
        image_sel = np.flatnonzero(non_crowd > 0)
        stats["empty_images_dropped"] = len(sorted_ids) - len(image_sel)
        by_image = by_image[np.isin(img_pos[by_image], image_sel)]
        counts = counts[image_sel]
    starts = np.zeros(len(image_sel) + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    labels = np.array([category_id_to_label[int(c)] for c in cat_ids], dtype=np.int64)[cat_pos[by_image]]
    src = order_ids[image_sel]  # json index of each kept image, by id
    root = os.path.abspath(image_root)
    store = RecordStore(
        image_ids=image_ids[src],
        heights=heights[src].astype(np.int32),
        widths=widths[src].astype(np.int32),
        starts=starts,
        boxes=clipped[by_image].astype(np.float32),
        labels=labels,
        iscrowd=crowd[by_image].astype(np.uint8),
        file_names=ByteBuffer.from_strings(names[i] for i in src.tolist()),
        paths=ByteBuffer.from_strings(os.path.join(root, names[i]) for i in src.tolist()),
        image_entries=ByteBuffer.from_strings(map(json.dumps, (images[i] for i in src.tolist()))),
        segmentations=(
            ByteBuffer(
                _dump_segmentations([segs_of[j] for j in by_image[lo:hi].tolist()])
                for lo, hi in zip(starts[:-1].tolist(), starts[1:].tolist())
            )
            if with_masks
            else None
        ),
    )
    return store, stats
