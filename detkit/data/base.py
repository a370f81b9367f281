"""What the data sets of annotated image files (COCO, Pascal VOC) share: reading one sample.

Shape shorthand: H x W image size.
"""

from __future__ import annotations

import logging
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from .io import ImageReadError, read_image_rgb

__all__ = ["AnnotatedImages", "Transform"]

Transform = Callable[[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]


class AnnotatedImages(torch.utils.data.Dataset, ABC):
    """Base of the data sets whose samples are image files with annotations.

    ``dataset[index]`` reads the image of ``_records[index]`` (``np.ndarray[H, W, 3]`` uint8 RGB),
    checks its size against the annotated one, builds the target with ``_target(record)`` and
    passes ``(tv_tensors.Image uint8, target)`` to ``transforms``; without transforms the image
    is returned as float32 in 0..1.

    An unreadable image raises :class:`ImageReadError`. With ``skip_invalid`` it is remembered,
    counted in ``stats["unreadable_images"]`` and logged once; then ``dataset[index]`` is None
    (``collate_detection`` drops it, so an evaluation never sees an image twice), or with
    ``substitute_unreadable`` (training, where a batch must not shrink) the next readable index
    (wrapping around).

    A subclass calls ``super().__init__`` first (``source`` names its annotations in messages),
    then sets ``_records`` (records with ``path``, ``height``, ``width`` and ``image_id``) and
    ``stats``, and defines ``_target`` and ``_annotation_of`` (the file that annotates a record).
    """

    _records: Sequence[Any]
    stats: dict[str, int]

    def __init__(
        self,
        *,
        transforms: Transform | None,
        skip_invalid: bool,
        substitute_unreadable: bool,
        source: str,
        log: logging.Logger,
    ) -> None:
        self.transforms = transforms
        self.skip_invalid = skip_invalid
        self.substitute_unreadable = substitute_unreadable
        self._source = source
        self._log = log
        self._bad_indices: set[int] = set()

    @abstractmethod
    def _target(self, record: Any) -> dict[str, Any]:
        """The target dict of ``record`` (before ``transforms``)."""

    @abstractmethod
    def _annotation_of(self, record: Any) -> str:
        """The file that annotates ``record``, for messages."""

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]] | None:
        index = operator.index(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        loaded = self._load(index)
        if loaded is None:  # unreadable, skip_invalid: collate_detection drops the sample
            return None
        record, img = loaded
        image = tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1).contiguous())
        target = self._target(record)
        if self.transforms is not None:
            return self.transforms(image, target)
        return TF.to_dtype(image, torch.float32, scale=True), target

    def _read(self, record: Any) -> np.ndarray:
        img = read_image_rgb(record.path)
        if img.shape[:2] != (record.height, record.width):
            rotated = img.shape[:2] == (record.width, record.height)
            raise ImageReadError(
                record.path,
                f"size {img.shape[1]}x{img.shape[0]} differs from {record.width}x{record.height} "
                f"in {self._annotation_of(record)} (image id {record.image_id})"
                + ("; its EXIF orientation rotates it: annotate the rotated image or drop the tag" if rotated else ""),
            )
        return img

    def _load(self, index: int) -> tuple[Any, np.ndarray] | None:
        """``(record, image)`` of ``index``, or of the next readable index (``substitute_unreadable``);
        None for an unreadable image with ``skip_invalid``."""
        n = len(self._records)
        for step in range(n if self.substitute_unreadable else 1):
            j = (index + step) % n
            if j in self._bad_indices:
                continue
            record = self._records[j]
            try:
                return record, self._read(record)
            except ImageReadError as e:
                if not self.skip_invalid:
                    raise
                self._bad_indices.add(j)
                self.stats["unreadable_images"] += 1
                action = "using the next image instead" if self.substitute_unreadable else "skipped"
                self._log.warning("%s (image id %s); %s (skip_invalid=True)", e, record.image_id, action)
        if not self.substitute_unreadable:
            return None
        raise RuntimeError(f"{self._source}: no readable image left")
