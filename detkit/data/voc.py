"""Pascal VOC detection data set (``Annotations/*.xml``, ``JPEGImages``, ``ImageSets/Main``).

Shape shorthand: K objects of one image, H x W image size.

VOC boxes are 1-based and inclusive; they become 0-based XYXY with ``(x1 - 1, y1 - 1, x2, y2)``.

XML safety: annotation files are parsed with ``xml.etree.ElementTree`` (defusedxml is not a
dependency). ElementTree never resolves external entities or fetches DTDs, but entity
expansion attacks ("billion laughs", quadratic blowup) depend on the Expat version linked
into Python (the Python docs call versions below 2.7.2 possibly vulnerable). VOC files never
declare a DTD, so files containing ``<!DOCTYPE`` or ``<!ENTITY`` are rejected before parsing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from detkit.utils.io import atomic_write

from .base import AnnotatedImages, Transform
from .coco import resolve_under_root
from .io import ImageReadError

__all__ = ["VOC_CLASSES", "VocDetection", "parse_voc_xml"]

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
"""The 20 Pascal VOC class names, in label order (label `i + 1` is `VOC_CLASSES[i]`)."""

_MAX_XML_BYTES = 1 << 20
_EXIF_ORIENTATION = 0x0112  # values 5..8 turn the image by 90 degrees


def image_header_size(path: str) -> tuple[int, int]:
    """``(width, height)`` of an image file as :func:`read_image_rgb` returns it (EXIF
    orientation applied), from its header: PIL opens the file without decoding the pixels.

    Raises:
        ImageReadError: missing file or no recognisable image header.
    """
    try:
        with Image.open(path) as im:
            width, height = im.size
            if im.format == "JPEG" and im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except FileNotFoundError:
        raise ImageReadError(path, "file not found") from None
    except OSError as e:  # PIL.UnidentifiedImageError included
        raise ImageReadError(path, f"no readable image header ({e})") from None
    return width, height


def _text(node: ET.Element, path: str, where: str) -> str:
    found = node.find(path)
    if found is None or found.text is None or not found.text.strip():
        raise ValueError(f"{where}: missing <{path}>")
    return found.text.strip()


def _number(node: ET.Element, path: str, where: str) -> float:
    raw = _text(node, path, where)
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{where}: <{path}> is not a number ({raw!r})") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}: <{path}> is not finite ({raw!r})")
    return value


def parse_voc_xml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse one VOC annotation file.

    Returns:
        ``{"filename", "width", "height", "objects": [{"name", "difficult", "bbox"}]}`` with
        ``bbox`` as written in the file (1-based inclusive ``xmin, ymin, xmax, ymax``).

    Raises:
        ValueError: unreadable/oversized/DTD-declaring XML or missing fields, naming the file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_XML_BYTES + 1)
    except OSError as e:
        raise ValueError(f"{path}: cannot read annotation ({e.strerror or e})") from e
    if len(data) > _MAX_XML_BYTES:
        raise ValueError(f"{path}: annotation larger than {_MAX_XML_BYTES} bytes")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise ValueError(f"{path}: DTD / entity declarations are not allowed in VOC annotations")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ValueError(f"{path}: malformed XML ({e})") from e
    size = root.find("size")
    if size is None:
        raise ValueError(f"{path}: missing <size>")
    width, height = _number(size, "width", path), _number(size, "height", path)
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise ValueError(f"{path}: invalid image size {width}x{height}")
    filename = root.findtext("filename")
    objects = []
    for k, obj in enumerate(root.findall("object")):
        where = f"{path}: object {k}"
        bnd = obj.find("bndbox")
        if bnd is None:
            raise ValueError(f"{where}: missing <bndbox>")
        objects.append(
            {
                "name": _text(obj, "name", where),
                "difficult": (obj.findtext("difficult") or "0").strip() == "1",
                "bbox": [_number(bnd, t, where) for t in ("xmin", "ymin", "xmax", "ymax")],
            }
        )
    return {
        "filename": filename.strip() if filename else None,
        "width": int(width),
        "height": int(height),
        "objects": objects,
    }


@dataclass(slots=True)
class _VocRecord:
    name: str
    image_id: int
    path: str
    height: int
    width: int
    boxes: np.ndarray  # [K, 4] float32 XYXY, 0-based, clipped; all valid objects
    labels: np.ndarray  # [K] int64
    difficult: np.ndarray  # [K] bool
    keep: np.ndarray  # [K] bool, objects that go into the training target


def _image_ids(names: Sequence[str]) -> list[int]:
    """Integer ids: the digits of names like ``000005`` / ``2008_000008`` when unique, else 1..N."""
    if all(re.fullmatch(r"\d+(_\d+)?", n) for n in names):
        ids = [int(n.replace("_", "")) for n in names]
        if len(set(ids)) == len(ids):
            return ids
    return list(range(1, len(names) + 1))


class VocDetection(AnnotatedImages):
    """Pascal VOC data set with detkit targets (same format as :class:`CocoDetection`).

    ``target``: ``boxes`` (``tv_tensors.BoundingBoxes`` XYXY float32 ``[K, 4]``), ``labels``
    int64 ``[K]`` in ``1..num_classes``, ``iscrowd`` uint8 ``[K]`` (zeros), ``difficult`` bool
    ``[K]``, ``image_id`` int, ``orig_size`` ``(H, W)``. Difficult objects are left out unless
    ``use_difficult=True``.

    Malformed objects (unknown class, ``xmax < xmin``, box outside the image) raise
    ``ValueError`` naming the file -- or are skipped and counted with ``skip_invalid=True``
    (also whole files that cannot be parsed). The XML ``<size>`` is compared with the image
    file's header when the annotations are parsed (no decoding): a mismatch is a ValueError
    naming both files, a missing image or unreadable header an :class:`ImageReadError`
    -- with ``skip_invalid`` the image is left out and counted (``stats["invalid_images"]``
    / ``stats["unreadable_images"]``). Images that fail to decode later raise
    :class:`ImageReadError`,
    or with ``skip_invalid`` are skipped and counted: ``__getitem__`` returns None, which
    :func:`collate_detection` drops (an evaluation never sees an image twice); with
    ``substitute_unreadable=True`` (training) the next readable index is used instead.

    Args:
        root: a VOC year folder (``.../VOCdevkit/VOC2007``).
        image_set: name of ``ImageSets/Main/<image_set>.txt``.
        transforms: callable ``(image, target) -> (image, target)``.
        class_names: class names; label ``i + 1`` is ``class_names[i]``.
        use_difficult: keep difficult objects in the targets.
        skip_invalid: skip bad objects / files with a logged warning instead of raising.
        substitute_unreadable: with ``skip_invalid``, return the next readable image in
            place of an unreadable one instead of None.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_set: str = "train",
        *,
        transforms: Transform | None = None,
        class_names: Sequence[str] = VOC_CLASSES,
        use_difficult: bool = False,
        skip_invalid: bool = False,
        substitute_unreadable: bool = False,
    ) -> None:
        super().__init__(
            transforms=transforms, skip_invalid=skip_invalid, substitute_unreadable=substitute_unreadable,
            source=f"{os.fspath(root)} ({image_set})", log=log,
        )  # fmt: skip
        self.root = os.fspath(root)
        self.image_set = image_set
        self.class_names = list(class_names)
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("duplicate class names")
        self.use_difficult = use_difficult
        # VOC has no category ids of its own: COCO-style ids equal the labels.
        self.label_to_category_id = {i + 1: i + 1 for i in range(len(self.class_names))}
        self.category_id_to_label = dict(self.label_to_category_id)
        self._name_to_label = {n: i + 1 for i, n in enumerate(self.class_names)}
        self.ann_file: str | None = None
        self.stats: dict[str, int] = dict.fromkeys(
            ("images", "objects", "difficult_excluded", "clipped_boxes", "invalid_annotations",
             "invalid_images", "unreadable_images"),
            0,
        )  # fmt: skip
        self._skipped: list[str] = []

        split_file = resolve_under_root(self.root, os.path.join("ImageSets", "Main", f"{image_set}.txt"))
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"VOC image set not found: {split_file}")
        with open(split_file, encoding="utf-8") as f:
            names = [line.split()[0] for line in f if line.strip()]
        ids = _image_ids(names)
        self._records: list[_VocRecord] = []
        for name, image_id in zip(names, ids):
            rec = self._parse(name, image_id)
            if rec is not None:
                self._records.append(rec)
        self.image_ids = [r.image_id for r in self._records]
        self.image_root = os.path.join(self.root, "JPEGImages")
        self.stats["images"] = len(self._records)
        self.stats["objects"] = int(sum(r.keep.sum() for r in self._records))
        if self._skipped:
            log.warning(
                "%s (%s): skipped %d invalid objects, %d invalid files and %d unreadable images (skip_invalid=True); "
                "first: %s", self.root, image_set, self.stats["invalid_annotations"], self.stats["invalid_images"],
                self.stats["unreadable_images"], "; ".join(self._skipped[:3]),
            )  # fmt: skip

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _fail(self, msg: str, key: str) -> None:
        if not self.skip_invalid:
            raise ValueError(msg)
        self.stats[key] += 1
        self._skipped.append(msg)

    def _parse(self, name: str, image_id: int) -> _VocRecord | None:
        try:
            xml_path = resolve_under_root(self.root, os.path.join("Annotations", f"{name}.xml"))
            image_path = resolve_under_root(self.root, os.path.join("JPEGImages", f"{name}.jpg"))
            ann = parse_voc_xml(xml_path)
        except ValueError as e:
            self._fail(str(e), "invalid_images")
            return None
        w, h = ann["width"], ann["height"]
        try:
            actual = image_header_size(image_path)
        except ImageReadError as e:
            if not self.skip_invalid:
                raise
            self.stats["unreadable_images"] += 1
            self._skipped.append(str(e))
            return None
        if actual != (w, h):
            self._fail(
                f"{xml_path}: <size> {w}x{h} differs from the image {image_path} ({actual[0]}x{actual[1]})",
                "invalid_images",
            )
            return None
        boxes, labels, difficult = [], [], []
        for k, obj in enumerate(ann["objects"]):
            where = f"{xml_path}: object {k} ({obj['name']!r})"
            if obj["name"] not in self._name_to_label:
                self._fail(f"{where}: unknown class name", "invalid_annotations")
                continue
            xmin, ymin, xmax, ymax = obj["bbox"]
            x1, y1, x2, y2 = (
                xmin - 1.0,
                ymin - 1.0,
                xmax,
                ymax,
            )  # 1-based inclusive -> 0-based XYXY
            if x2 <= x1 or y2 <= y1:
                self._fail(f"{where}: negative box size {obj['bbox']}", "invalid_annotations")
                continue
            cx1, cy1, cx2, cy2 = (
                max(x1, 0.0),
                max(y1, 0.0),
                min(x2, float(w)),
                min(y2, float(h)),
            )
            if cx2 <= cx1 or cy2 <= cy1:
                self._fail(
                    f"{where}: box {obj['bbox']} lies outside the {w}x{h} image",
                    "invalid_annotations",
                )
                continue
            if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
                self.stats["clipped_boxes"] += 1
            boxes.append([cx1, cy1, cx2, cy2])
            labels.append(self._name_to_label[obj["name"]])
            difficult.append(obj["difficult"])
        difficult_arr = np.asarray(difficult, dtype=bool)
        keep = np.ones_like(difficult_arr) if self.use_difficult else ~difficult_arr
        self.stats["difficult_excluded"] += int((~keep).sum())
        return _VocRecord(
            name=name,
            image_id=image_id,
            path=image_path,
            height=h,
            width=w,
            boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64),
            difficult=difficult_arr,
            keep=keep,
        )

    def aspect_ratios(self) -> list[float]:
        """Width / height of every image, from the XML (no decoding)."""
        return [r.width / r.height for r in self._records]

    def image_info(self, index: int) -> dict[str, Any]:
        """The COCO-style ``images`` entry of ``index`` (as :meth:`to_coco_json` writes it)."""
        rec = self._records[index]
        return {"id": rec.image_id, "file_name": f"{rec.name}.jpg", "width": rec.width, "height": rec.height}

    def _annotation_of(self, rec: _VocRecord) -> str:
        return os.path.join(self.root, "Annotations", f"{rec.name}.xml")

    def _target(self, rec: _VocRecord) -> dict[str, Any]:
        keep = rec.keep
        return {
            "boxes": tv_tensors.BoundingBoxes(
                torch.from_numpy(rec.boxes[keep]), format="XYXY", canvas_size=(rec.height, rec.width)
            ),
            "labels": torch.from_numpy(rec.labels[keep]),
            "iscrowd": torch.zeros(int(keep.sum()), dtype=torch.uint8),
            "difficult": torch.from_numpy(rec.difficult[keep]),
            "image_id": rec.image_id,
            "orig_size": (rec.height, rec.width),
        }

    def to_coco_json(self, path: str | os.PathLike, *, difficult_as_crowd: bool = True) -> str:
        """Write the split's ground truth as a COCO json (for the COCO evaluator).

        All valid objects are written, difficult ones included, each with a ``difficult`` flag
        (0/1) that the VOC metric (:mod:`detkit.evaluation.voc_eval`, ``--metric voc07``) reads.
        With ``difficult_as_crowd`` (default) they also get ``iscrowd=1``, so that the COCO
        metric treats them as ignore regions, as is common: a detection inside one is ignored
        even at IoU <= 0.5, where the VOC rule counts it as a false positive. Without it the
        COCO metric counts difficult objects as ordinary positives. Image ids equal the
        targets' ``image_id``. Sets and returns ``self.ann_file``.
        """
        images, annotations = [], []
        for index, rec in enumerate(self._records):
            images.append(self.image_info(index))
            for box, label, diff in zip(rec.boxes.tolist(), rec.labels.tolist(), rec.difficult.tolist()):
                x1, y1, x2, y2 = box
                w, h = x2 - x1, y2 - y1
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": rec.image_id,
                        "category_id": self.label_to_category_id[label],
                        "bbox": [x1, y1, w, h],
                        "area": w * h,
                        "iscrowd": int(bool(diff) and difficult_as_crowd),
                        "difficult": int(diff),
                    }
                )
        coco = {
            "info": {"description": f"Pascal VOC {self.root} ({self.image_set})"},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": self.label_to_category_id[i + 1], "name": n} for i, n in enumerate(self.class_names)],
        }
        path = atomic_write(path, json.dumps(coco).encode("utf-8"), fsync=False)
        self.ann_file = path
        return path
