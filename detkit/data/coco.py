"""COCO-format detection and instance segmentation data set.

Shape shorthand: K instances of one image, H x W image size, P keypoints per instance.

Targets follow the detkit convention: ``boxes`` XYXY float32 in absolute pixels (COCO json is
XYWH; converted and clipped when the annotations are read), ``labels`` int64 in ``1..num_classes``
(0 is the background), categories mapped to contiguous labels in the order of their ids.
Keypoints (COCO ``keypoints`` [x, y, v] * P) are in the same pixel coordinates as the boxes.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torchvision import tv_tensors

from detkit.utils.coco_format import annotation_box
from detkit.utils.gc_pause import paused_gc

from .base import AnnotatedImages, Transform
from .records import Record, RecordStore, clean_coco_store

__all__ = [
    "AnnotationFormatError",
    "CocoDetection",
    "missing_files",
    "decode_rles",
    "decode_segmentation",
    "keypoint_flip_map",
    "load_coco_json",
    "resolve_under_root",
    "segmentation_to_rle",
]

log = logging.getLogger(__name__)


class AnnotationFormatError(ValueError):
    """An annotation file is not valid COCO (a ``ValueError``)."""


def load_coco_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO-format json file and check its top-level structure.

    Raises:
        AnnotationFormatError: (a ``ValueError``) the file is not JSON, or lacks the
            ``images`` / ``annotations`` / ``categories`` lists.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f, paused_gc():
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AnnotationFormatError(f"{path}: not a COCO annotation file (invalid JSON: {e})") from e
    if not isinstance(data, dict):
        raise AnnotationFormatError(f"{path}: not a COCO annotation file (top level is not an object)")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise AnnotationFormatError(f"{path}: not a COCO annotation file (missing or non-list keys: {missing})")
    return data


def resolve_under_root(root: str, file_name: Any, *, allow_outside_root: bool = False) -> str:
    """Join ``file_name`` to ``root``; refuse names that escape it.

    The check is lexical (``..`` components, absolute paths): it guards against annotation
    files that point elsewhere; symbolic links inside ``root`` are followed as usual.

    Raises:
        ValueError: empty/non-string name, or a name escaping ``root`` while
            ``allow_outside_root`` is False.
    """
    if not isinstance(file_name, str) or not file_name or "\x00" in file_name:
        raise ValueError(f"invalid file_name {file_name!r}")
    root_abs = os.path.abspath(root)
    path = os.path.normpath(os.path.join(root_abs, file_name))
    if not allow_outside_root and (os.path.isabs(file_name) or os.path.commonpath([root_abs, path]) != root_abs):
        raise ValueError(
            f"file_name {file_name!r} escapes the image root {root_abs!r} (pass allow_outside_root=True to permit this)"
        )
    return path


def missing_files(paths: Iterable[str]) -> list[str]:
    """The `paths` that are not existing files, in their order.

    One directory listing per folder instead of a stat per file (no image is opened), so
    checking the 118k files of COCO train2017 takes well under a second.
    """
    by_folder: dict[str, set[str]] = {}
    missing = []
    for path in paths:
        folder, name = os.path.split(path)
        if folder not in by_folder:
            try:
                with os.scandir(folder or ".") as entries:
                    by_folder[folder] = {e.name for e in entries if e.is_file()}
            except OSError:  # missing folder, not a folder, no permission
                by_folder[folder] = set()
        if name not in by_folder[folder]:
            missing.append(path)
    return missing


def segmentation_to_rle(seg: list | dict, height: int, width: int) -> dict:
    """COCO polygon / uncompressed RLE / compressed RLE -> compressed RLE."""
    if isinstance(seg, list):  # polygons of one instance: rasterise each, union
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(seg, height, width)
    return seg  # compressed RLE (counts as str or bytes)


def decode_rles(rles: list[dict], height: int, width: int) -> np.ndarray:
    """Decode compressed RLEs in one call: ``np.ndarray[K, H, W]`` uint8 in {0, 1}."""
    if not rles:
        return np.zeros((0, height, width), dtype=np.uint8)
    with warnings.catch_warnings():
        # pycocotools 2.0.x passes copy=False to numpy 2 internally (harmless)
        warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
        masks = mask_utils.decode(rles)  # [H, W, K], Fortran order
    return np.ascontiguousarray(masks.transpose(2, 0, 1), dtype=np.uint8)


def decode_segmentation(seg: list | dict, height: int, width: int) -> np.ndarray:
    """Decode a COCO polygon / RLE (compressed or not) segmentation: ``np.ndarray[H, W]`` uint8."""
    return decode_rles([segmentation_to_rle(seg, height, width)], height, width)[0]


class _Invalid(Exception):
    pass


_SIDES = {"left": "right", "right": "left", "l": "r", "r": "l"}


def keypoint_flip_map(names: Sequence[str]) -> list[int]:
    """Index of each keypoint's mirror image under a horizontal flip, from the names.

    A name whose ``_``-separated parts hold ``left`` / ``right`` (or ``l`` / ``r``) is paired with
    the name that has the other side in that place (``left_eye`` <-> ``right_eye``, ``ear_l`` <->
    ``ear_r``, ``left`` <-> ``right``); every other keypoint maps to itself.

    Raises:
        ValueError: a side name without its counterpart, or duplicate names.
    """
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate keypoint names: {names}")
    index = {n: i for i, n in enumerate(names)}
    out = []
    for i, name in enumerate(names):
        parts = name.split("_")
        sides = [j for j, p in enumerate(parts) if p.lower() in _SIDES]
        if not sides:
            out.append(i)
            continue
        j = sides[0]
        swapped = "_".join(parts[:j] + [_SIDES[parts[j].lower()]] + parts[j + 1 :])
        match = next((n for n in names if n.lower() == swapped.lower()), None)
        if match is None:
            raise ValueError(f"keypoint {name!r} has no mirror keypoint {swapped!r} (give flip_map explicitly)")
        out.append(index[match])
    return out


class CocoDetection(AnnotatedImages):
    """COCO-format data set (read through pycocotools) returning detkit targets.

    ``__getitem__`` returns ``(image, target)``: without ``transforms`` the image is a
    ``tv_tensors.Image`` float32 ``[3, H, W]`` in 0..1 (RGB); with ``transforms`` the
    ``(tv_tensors.Image uint8, target)`` pair is passed to them (see
    :func:`detkit.data.build_transforms`). ``target`` holds ``boxes``
    (``tv_tensors.BoundingBoxes`` XYXY float32 ``[K, 4]``), ``labels`` int64 ``[K]``,
    ``iscrowd`` uint8 ``[K]``, ``masks`` (``tv_tensors.Mask`` uint8 ``[K, H, W]``, only with
    ``with_masks=True``), ``keypoints`` (float32 ``[K, P, 3]``: x, y, v with v in {0, 1, 2} as
    COCO; x = y = 0 where v = 0; only for keypoint data), ``image_id`` (the json id) and
    ``orig_size`` ``(H, W)``.

    Keypoint data: the categories name their ``keypoints`` (and ``skeleton``, 1-based pairs as
    COCO); every category that names keypoints must name the same ones. ``keypoint_names``,
    ``skeleton`` (0-based pairs) and ``flip_map`` (see :func:`keypoint_flip_map`) describe them.
    An annotation without ``keypoints`` gets v = 0 everywhere. Refused (or with ``skip_invalid``
    skipped), naming the file and annotation id: a count other than 3 x the names, a v outside
    0 / 1 / 2, non-numbers, and a labelled (v > 0) keypoint outside the image ``[0, W] x [0, H]``:
    a point that cannot be seen is a coordinate error (swapped or normalised x / y, another
    image's size) that clamping would hide while teaching the model a wrong position.

    Annotations are validated at construction. Boxes of zero width or height are dropped and
    counted (``stats["degenerate_boxes"]``); boxes partly outside the image are clipped.
    Malformed annotations (negative size, box fully outside the image, unknown category or
    image id, polygon with fewer than 3 points, bad RLE) and images with a bad ``file_name``
    raise :class:`AnnotationFormatError` (a ``ValueError``) naming the file and annotation id
    -- or, with ``skip_invalid=True``,
    are skipped and counted. Unreadable images are found when loaded: they raise
    :class:`ImageReadError`, or with ``skip_invalid=True`` they are skipped: ``__getitem__``
    returns None, which :func:`collate_detection` drops, so evaluation never sees an image
    twice; with ``substitute_unreadable=True`` (training) the next readable index is used
    instead (deterministic; counts in ``stats`` are per process, i.e. per DataLoader worker).

    Args:
        image_root: folder that ``file_name`` entries are relative to.
        ann_file: COCO-format json.
        transforms: callable ``(image, target) -> (image, target)``.
        with_masks: decode instance masks (segmentations are then validated too).
        keep_empty: keep images without (non-crowd) annotations.
        include_crowd: keep ``iscrowd=1`` annotations in the targets (flagged in ``iscrowd``).
        skip_invalid: skip bad annotations / images with a logged warning instead of raising.
        allow_outside_root: allow ``file_name`` entries outside ``image_root``.
        check_files: at construction, check that every referenced image file exists (a
            directory listing, no decoding): missing files raise ``FileNotFoundError`` naming
            them, or with ``skip_invalid=True`` their images are dropped and counted
            (``stats["missing_files"]``).
        substitute_unreadable: with ``skip_invalid``, return the next readable image in
            place of an unreadable one (fixed batch sizes for training) instead of None.
        keypoints: read keypoints into the targets. None (default): when a category names
            keypoints; True: required (an error when none does); False: never.
        flip_map: mirror index of each keypoint (default: from the names, see
            :func:`keypoint_flip_map`).
    """

    def __init__(
        self,
        image_root: str | os.PathLike,
        ann_file: str | os.PathLike,
        *,
        transforms: Transform | None = None,
        with_masks: bool = False,
        keep_empty: bool = True,
        include_crowd: bool = False,
        skip_invalid: bool = False,
        allow_outside_root: bool = False,
        check_files: bool = False,
        substitute_unreadable: bool = False,
        keypoints: bool | None = None,
        flip_map: Sequence[int] | None = None,
    ) -> None:
        super().__init__(
            transforms=transforms, skip_invalid=skip_invalid, substitute_unreadable=substitute_unreadable,
            source=os.fspath(ann_file), log=log,
        )  # fmt: skip
        self.image_root = os.fspath(image_root)
        self.ann_file = os.fspath(ann_file)
        self.with_masks = with_masks
        self.keep_empty = keep_empty
        self.include_crowd = include_crowd
        self.allow_outside_root = allow_outside_root
        self.stats: dict[str, int] = dict.fromkeys(
            (
                "images",
                "annotations",
                "degenerate_boxes",
                "clipped_boxes",
                "crowd_excluded",
                "invalid_annotations",
                "invalid_images",
                "empty_images_dropped",
                "unreadable_images",
                "missing_files",
            ),
            0,
        )
        self._skipped: list[str] = []

        data = load_coco_json(self.ann_file)
        self._init_categories(data["categories"])
        self._init_keypoints(data["categories"], keypoints, flip_map)
        # a file without problems: vectorised checks straight into compact records (keypoints: checked per annotation)
        clean = None if self.has_keypoints else clean_coco_store(
            data, image_root=self.image_root, category_id_to_label=self.category_id_to_label,
            keep_empty=keep_empty, include_crowd=include_crowd, with_masks=with_masks,
        )  # fmt: skip
        if clean is not None and check_files and missing_files(map(clean[0].paths.string, range(len(clean[0])))):
            clean = None  # the checks below name the missing files
        if clean is not None:
            self._records = clean[0]
            self.stats.update(clean[1], images=len(self._records), annotations=int(self._records.starts[-1]))
        else:
            self.coco = self._build_index(data)
            self._records = self._build_records()
            if check_files:
                self._drop_missing_files()
            # compact storage: flat arrays, no per-image objects for DataLoader workers to copy;
            # the pycocotools index and the json are released
            self._records = RecordStore.from_records(
                self._records, with_segmentations=with_masks, image_entries=self.coco.imgs,
                num_keypoints=self.num_keypoints if self.has_keypoints else None,
            )  # fmt: skip
            del self.coco
        self.image_ids = self._records.image_ids.tolist()
        self._report()

    # ------------------------------------------------------------------ construction
    def _init_categories(self, categories: list) -> None:
        ids = []
        for c in categories:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
                raise AnnotationFormatError(f"{self.ann_file}: malformed category entry {c!r}")
            ids.append(c["id"])
        if len(set(ids)) != len(ids):
            raise AnnotationFormatError(f"{self.ann_file}: duplicate category ids")
        cats = sorted(categories, key=lambda c: c["id"])
        self.class_names: list[str] = [c["name"] for c in cats]
        self.label_to_category_id: dict[int, int] = {i + 1: c["id"] for i, c in enumerate(cats)}
        self.category_id_to_label: dict[int, int] = {c: lab for lab, c in self.label_to_category_id.items()}

    def _init_keypoints(self, categories: list, wanted: bool | None, flip_map: Sequence[int] | None) -> None:
        """`keypoint_names`, `skeleton`, `flip_map` and which labels name keypoints."""
        named = [c for c in sorted(categories, key=lambda c: c["id"]) if c.get("keypoints")]
        self.keypoint_names: list[str] = []
        self.skeleton: list[tuple[int, int]] = []
        self.flip_map: list[int] | None = None
        self._keypoint_labels: set[int] = set()
        self.has_keypoints = bool(named) if wanted is None else bool(wanted)
        if not self.has_keypoints:
            return
        if not named:
            raise AnnotationFormatError(f"{self.ann_file}: keypoints=True but no category names its 'keypoints'")
        first = named[0]
        for c in named:
            names = c["keypoints"]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise AnnotationFormatError(f"{self.ann_file}: category id {c['id']}: 'keypoints' must list names")
            if names != first["keypoints"]:
                raise AnnotationFormatError(
                    f"{self.ann_file}: category id {c['id']} names keypoints {names} but category id "
                    f"{first['id']} names {first['keypoints']} (one keypoint set per data set)"
                )
        self.keypoint_names = list(first["keypoints"])
        num = len(self.keypoint_names)
        for c in named:
            pairs = c.get("skeleton", [])
            if not isinstance(pairs, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(type(v) is int and 1 <= v <= num for v in p) for p in pairs
            ):
                raise AnnotationFormatError(
                    f"{self.ann_file}: category id {c['id']}: 'skeleton' must list [i, j] pairs of 1-based keypoint "
                    f"indices in 1..{num}, got {pairs!r:.100}"
                )
        self.skeleton = [(a - 1, b - 1) for a, b in first.get("skeleton", [])]
        self._keypoint_labels = {self.category_id_to_label[c["id"]] for c in named}
        try:
            self.flip_map = keypoint_flip_map(self.keypoint_names) if flip_map is None else [int(i) for i in flip_map]
        except ValueError as e:
            raise AnnotationFormatError(f"{self.ann_file}: {e}") from None
        if sorted(self.flip_map) != list(range(num)) or any(self.flip_map[j] != i for i, j in enumerate(self.flip_map)):
            raise ValueError(
                f"flip_map {self.flip_map} is not a pairing of the {num} keypoints (a symmetric permutation)"
            )

    @property
    def num_keypoints(self) -> int:
        """P, the keypoints per instance (0 without keypoint data)."""
        return len(self.keypoint_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _build_index(self, data: dict) -> COCO:
        seen: set = set()
        for img in data["images"]:
            iid = img.get("id") if isinstance(img, dict) else None
            if not isinstance(iid, int):
                raise AnnotationFormatError(f"{self.ann_file}: image entry without an integer id: {img!r:.200}")
            if iid in seen:
                raise AnnotationFormatError(f"{self.ann_file}: duplicate image id {iid}")
            seen.add(iid)
        seen = set()
        for ann in data["annotations"]:
            aid = ann.get("id") if isinstance(ann, dict) else None
            if not isinstance(aid, int):
                raise AnnotationFormatError(f"{self.ann_file}: annotation entry without an integer id: {ann!r:.200}")
            if aid in seen:
                raise AnnotationFormatError(f"{self.ann_file}: duplicate annotation id {aid}")
            seen.add(aid)
        usable = []
        for ann in data["annotations"]:
            bad = [k for k in ("image_id", "category_id") if type(ann.get(k)) is not int]  # bools too
            if bad:
                self.stats["invalid_annotations"] += 1
                self._fail(f"{self.ann_file}: annotation id {ann['id']}: {' and '.join(bad)} missing or not an int")
                continue
            usable.append(ann)
        data = {**data, "annotations": usable}
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco

    def _fail(self, msg: str) -> None:
        """Raise, or (skip_invalid) record a skipped item."""
        if not self.skip_invalid:
            raise AnnotationFormatError(msg)
        self._skipped.append(msg)

    def _build_records(self) -> list[Record]:
        records = []
        for ann in self.coco.dataset["annotations"]:
            if ann.get("image_id") not in self.coco.imgs:
                self.stats["invalid_annotations"] += 1
                self._fail(f"{self.ann_file}: annotation id {ann['id']}: unknown image id {ann.get('image_id')!r}")
        for image_id in sorted(self.coco.imgs):
            img = self.coco.imgs[image_id]
            rec = self._image_record(img)
            if rec is None:
                continue
            if not self.keep_empty and not (rec.iscrowd == 0).any():
                self.stats["empty_images_dropped"] += 1
                continue
            records.append(rec)
        self.stats["images"] = len(records)
        self.stats["annotations"] = int(sum(len(r.labels) for r in records))
        return records

    def _image_record(self, img: dict) -> Record | None:
        image_id = img["id"]
        file_name = img.get("file_name")
        height, width = img.get("height"), img.get("width")
        where = f"{self.ann_file}: image id {image_id} ({file_name!r})"
        try:
            if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
                raise _Invalid(f"missing or non-positive width/height ({width!r}x{height!r})")
            try:
                path = resolve_under_root(
                    self.image_root,
                    file_name,
                    allow_outside_root=self.allow_outside_root,
                )
            except ValueError as e:
                raise _Invalid(str(e)) from None
        except _Invalid as e:
            self.stats["invalid_images"] += 1
            self._fail(f"{where}: {e}")
            return None

        boxes, labels, crowd, segs, points = [], [], [], [], []
        for ann in self.coco.imgToAnns.get(image_id, []):
            is_crowd = bool(ann.get("iscrowd", 0))
            if is_crowd and not self.include_crowd:
                self.stats["crowd_excluded"] += 1
                continue
            try:
                box = self._check_annotation(ann, height, width)
                kp = self._check_keypoints(ann, height, width) if self.has_keypoints and box is not None else None
            except _Invalid as e:
                self.stats["invalid_annotations"] += 1
                self._fail(f"{where}: annotation id {ann['id']}: {e}")
                continue
            if box is None:
                continue
            boxes.append(box)
            labels.append(self.category_id_to_label[ann["category_id"]])
            crowd.append(is_crowd)
            if self.with_masks:
                segs.append(ann["segmentation"])
            if kp is not None:
                points.append(kp)
        return Record(
            image_id=image_id,
            file_name=file_name,
            path=path,
            height=height,
            width=width,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            iscrowd=np.asarray(crowd, dtype=np.uint8),
            segmentations=segs,
            keypoints=np.asarray(points, dtype=np.float32).reshape(-1, self.num_keypoints, 3)
            if self.has_keypoints
            else None,
        )

    def _check_keypoints(self, ann: dict, height: int, width: int) -> np.ndarray:
        """`np.ndarray[P, 3]` float32 (x, y, v) of `ann` (v = 0 and x = y = 0 where not labelled)."""
        num = self.num_keypoints
        values = ann.get("keypoints")
        label = self.category_id_to_label[ann["category_id"]]
        if values is None or (label not in self._keypoint_labels and values == []):
            return np.zeros((num, 3), dtype=np.float32)
        if label not in self._keypoint_labels:
            raise _Invalid(f"has keypoints but category id {ann['category_id']} names none")
        if not isinstance(values, list) or len(values) != 3 * num:
            got = len(values) if isinstance(values, list) else type(values).__name__
            raise _Invalid(f"'keypoints' has {got} values; the category names {num} keypoints (expected {3 * num})")
        if not all(type(v) in (int, float) and math.isfinite(v) for v in values):
            raise _Invalid("'keypoints' holds a value that is not a finite number")
        kp = np.asarray(values, dtype=np.float64).reshape(num, 3)
        vis = kp[:, 2]
        bad = ~np.isin(vis, (0, 1, 2))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise _Invalid(f"keypoint {self.keypoint_names[i]!r}: visibility v={vis[i]:g} is not 0, 1 or 2")
        labelled = vis > 0
        outside = labelled & ((kp[:, 0] < 0) | (kp[:, 0] > width) | (kp[:, 1] < 0) | (kp[:, 1] > height))
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise _Invalid(
                f"keypoint {self.keypoint_names[i]!r} ({kp[i, 0]:g}, {kp[i, 1]:g}) lies outside the "
                f"{width}x{height} image"
            )
        kp[~labelled] = 0.0
        return kp.astype(np.float32)

    def _drop_missing_files(self) -> None:
        missing = set(missing_files(r.path for r in self._records))
        if not missing:
            return
        names = [r.file_name for r in self._records if r.path in missing]
        more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
        message = (
            f"{self.ann_file}: {len(names)} image file(s) not found under {self.image_root}: "
            f"{', '.join(names[:3])}{more}"
        )
        if not self.skip_invalid:
            raise FileNotFoundError(message)
        log.warning("%s; their images are left out (skip_invalid=True)", message)
        self.stats["missing_files"] = len(names)
        self._records = [r for r in self._records if r.path not in missing]
        self.stats["images"] = len(self._records)
        self.stats["annotations"] = int(sum(len(r.labels) for r in self._records))

    def _check_annotation(self, ann: dict, height: int, width: int) -> list[float] | None:
        """Validated, clipped XYXY box of ``ann``; None for a dropped zero-size box."""
        try:
            checked = annotation_box(ann, height, width, self.category_id_to_label, with_masks=self.with_masks)
        except ValueError as e:
            raise _Invalid(str(e)) from None
        if checked is None:
            self.stats["degenerate_boxes"] += 1
            return None
        box, clipped = checked
        self.stats["clipped_boxes"] += clipped
        return box

    def _report(self) -> None:
        if self.stats["degenerate_boxes"]:
            log.warning(
                "%s: dropped %d boxes with zero width or height",
                self.ann_file,
                self.stats["degenerate_boxes"],
            )
        if self._skipped:
            log.warning(
                "%s: skipped %d invalid annotations and %d invalid images (skip_invalid=True); first: %s",
                self.ann_file,
                self.stats["invalid_annotations"],
                self.stats["invalid_images"],
                "; ".join(self._skipped[:3]),
            )

    # ------------------------------------------------------------------ access
    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, from the annotation file (no decoding)."""
        return self._records.aspect_ratios()

    def image_info(self, index: int) -> dict[str, Any]:
        """The json ``images`` entry of ``index``."""
        return self._records.image_entry(index)

    def _annotation_of(self, rec: Record) -> str:
        return self.ann_file

    def _target(self, rec: Record) -> dict[str, Any]:
        size = (rec.height, rec.width)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(rec.boxes.copy()), format="XYXY", canvas_size=size),
            "labels": torch.from_numpy(rec.labels.copy()),
            "iscrowd": torch.from_numpy(rec.iscrowd.copy()),
            "image_id": rec.image_id,
            "orig_size": size,
        }
        if self.with_masks:
            masks = decode_rles([segmentation_to_rle(seg, *size) for seg in rec.segmentations], *size)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        if self.has_keypoints:
            target["keypoints"] = torch.from_numpy(rec.keypoints)
        return target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(images={len(self)}, classes={self.num_classes}, "
            f"ann_file={self.ann_file!r}, with_masks={self.with_masks})"
        )
