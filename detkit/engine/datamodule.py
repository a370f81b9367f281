"""Lightning data modules for the synthetic shapes, COCO-format and Pascal VOC data sets.

Constructors only store arguments (no file access), so a config can be parsed and
instantiated anywhere; files are read in `prepare_data` / `setup`. Every module exposes
`num_classes`, `class_names`, `val_dataset`, `val_ann_file` (COCO json of the evaluation
split) and `label_to_category_id` (the last three after `setup`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, RandomSampler

from detkit.data import (
    SHAPES_CLASSES,
    VOC_CLASSES,
    AspectRatioGroupedBatchSampler,
    CocoDetection,
    ShapesDataset,
    VocDetection,
    build_transforms,
    collate_detection,
    ensure_shapes,
    load_coco_json,
)

__all__ = ["CocoDataModule", "DetectionDataModule", "ShapesDataModule", "VocDataModule"]


class _DatasetGroupedBatchSampler(AspectRatioGroupedBatchSampler):
    """Aspect-ratio grouping that reads the ratios from the inner sampler's data set.

    Its `(sampler, batch_size, drop_last)` signature lets Lightning re-create it around a
    `DistributedSampler` under DDP.
    """

    def __init__(self, sampler, batch_size: int, drop_last: bool = False):
        dataset = getattr(sampler, "dataset", None)
        if dataset is None:
            dataset = getattr(sampler, "data_source", None)
        if dataset is None or not hasattr(dataset, "aspect_ratios"):
            raise TypeError("the inner sampler must expose a data set with aspect_ratios() (.dataset or .data_source)")
        super().__init__(sampler, dataset.aspect_ratios(), batch_size, drop_last=drop_last)


class DetectionDataModule(LightningDataModule):
    """Shared loaders; subclasses build `train_dataset` / `val_dataset` in `setup`.

    The test and predict loaders use the validation split. `train_proposals` /
    `val_proposals` name proposal caches written by `detkit proposals` (selective search):
    targets then carry `proposals` for R-CNN / Fast R-CNN (at most `max_proposals` per image).
    """

    def __init__(
        self,
        batch_size: int,
        num_workers: int,
        aspect_ratio_grouping: bool = False,
        val_batch_size: int | None = None,
        train_proposals: str | None = None,
        val_proposals: str | None = None,
        max_proposals: int = 2000,
    ):
        super().__init__()
        self.train_proposals, self.val_proposals, self.max_proposals = train_proposals, val_proposals, max_proposals
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.train_dataset: Any = None
        self.val_dataset: Any = None

    # --- metadata ---------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def val_ann_file(self) -> str | None:
        return None if self.val_dataset is None else self.val_dataset.ann_file

    @property
    def label_to_category_id(self) -> dict[int, int] | None:
        return None if self.val_dataset is None else dict(self.val_dataset.label_to_category_id)

    def _check_resize(self, min_size: int | Sequence[int] | None, max_size: int | None) -> None:
        """The detector's transform resizes every image (train, validation, test, predict); the data
        pipeline never does. `min_size` / `max_size` given to the data module must equal the model's
        (checked once the trainer holds the model); a difference is a one-line error that says to
        remove them and set the sizes in `model.model_kwargs`."""
        if min_size is None and max_size is None:
            return
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        transform = getattr(getattr(module, "model", None), "transform", None)
        if transform is None:
            return

        def plain(size):  # a list from YAML and a tuple from a builder compare equal
            return size if size is None or isinstance(size, int) else [int(v) for v in size]

        given = {"min_size": plain(min_size), "max_size": max_size}
        wrong = {k: v for k, v in given.items() if v is not None and v != plain(getattr(transform, k, v))}
        if wrong:
            asked = ", ".join(f"{k}={v}" for k, v in wrong.items())
            have = ", ".join(f"{k}={plain(getattr(transform, k))}" for k in wrong)
            keep = ", ".join(f"{k}: {v}" for k, v in given.items() if v is not None)
            raise ValueError(
                f"data {asked} differs from the model's {have}: the model resizes every image (training, "
                "validation and prediction alike), the data never does; remove data.min_size / data.max_size "
                f"and set the sizes in model.model_kwargs (for the data's: {keep})"
            )

    @staticmethod
    def _require_images(dataset, ann_file: str, what: str) -> None:
        """A one-line error for a split without any image (instead of the sampler's num_samples=0)."""
        if len(dataset) == 0:
            raise ValueError(
                f"{ann_file}: no {what} image left (images without annotations are dropped unless data.keep_empty "
                "is true; see stats in the log)"
            )

    def _with_proposals(self, dataset, cache: str | None):
        """`dataset` whose targets carry `proposals` from a `detkit proposals` cache (R-CNN / Fast R-CNN)."""
        if cache is None:
            return dataset
        if not os.path.isfile(cache):
            raise FileNotFoundError(f"proposal cache not found: {cache} (compute it with `detkit proposals`)")
        from detkit.data.proposals import WithProposals

        return WithProposals(dataset, cache, max_proposals=self.max_proposals)

    # --- loaders ----------------------------------------------------------------
    def _loader_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "collate_fn": collate_detection,
            "pin_memory": torch.cuda.is_available(),
        }
        if self.num_workers > 0:
            kwargs["persistent_workers"] = True
        return kwargs

    def _require(self, dataset, stage: str):
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup({stage!r}) must run before its dataloaders are requested")
        return dataset

    def train_dataloader(self) -> DataLoader:
        dataset = self._require(self.train_dataset, "fit")
        if self.aspect_ratio_grouping:
            sampler = _DatasetGroupedBatchSampler(RandomSampler(dataset), self.batch_size)
            return DataLoader(dataset, batch_sampler=sampler, **self._loader_kwargs())
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        dataset = self._require(self.val_dataset, "validate")
        return DataLoader(dataset, batch_size=self.val_batch_size, shuffle=False, **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class ShapesDataModule(DetectionDataModule):
    """The synthetic shapes data set (generated under `root` on first use, then cached).

    Images keep their size (`image_size` squared); training adds horizontal flips and
    optional colour jitter. `keypoints`: the data set with each shape's 4 extreme points as COCO
    keypoints (a cache of its own: give it another `root`, e.g. `data/shapes_keypoints`).
    """

    def __init__(
        self,
        root: str = "data/shapes",
        num_train: int = 2000,
        num_val: int = 200,
        image_size: int = 128,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 0,
        with_masks: bool = False,
        hflip_prob: float = 0.5,
        color_jitter: float = 0.0,
        val_batch_size: int | None = None,
        train_proposals: str | None = None,
        val_proposals: str | None = None,
        max_proposals: int = 2000,
        keypoints: bool = False,
    ):
        super().__init__(batch_size, num_workers, False, val_batch_size, train_proposals, val_proposals, max_proposals)
        self.keypoints = keypoints
        if num_train < 1 or num_val < 1:
            raise ValueError("num_train and num_val must be >= 1")
        self.root = root
        self.num_train, self.num_val = num_train, num_val
        self.image_size, self.seed = image_size, seed
        self.with_masks = with_masks
        self.hflip_prob, self.color_jitter = hflip_prob, color_jitter

    @property
    def class_names(self) -> list[str]:
        return list(SHAPES_CLASSES)

    def prepare_data(self) -> None:
        splits = {"train": self.num_train, "val": self.num_val}
        ensure_shapes(self.root, splits, self.image_size, self.seed, keypoints=self.keypoints)

    def _dataset(self, split: str, num_images: int, train: bool) -> ShapesDataset:
        dataset = ShapesDataset(
            self.root,
            split,
            num_images=num_images,
            image_size=self.image_size,
            seed=self.seed,
            with_masks=self.with_masks,
            keypoints=self.keypoints,
        )
        dataset.transforms = build_transforms(
            train, min_size=None, max_size=None, hflip_prob=self.hflip_prob, color_jitter=self.color_jitter,
            flip_map=dataset.flip_map,
        )  # fmt: skip
        return dataset

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_dataset is None:
            train = self._dataset("train", self.num_train, True)
            self.train_dataset = self._with_proposals(train, self.train_proposals)
        if self.val_dataset is None:
            self.val_dataset = self._with_proposals(self._dataset("val", self.num_val, False), self.val_proposals)


class CocoDataModule(DetectionDataModule):
    """COCO-format annotation files with their image folders.

    Images reach the detector at their own size: its transform resizes them (its
    `min_size` / `max_size`, set in `model.model_kwargs`) for training, validation and
    prediction alike, and maps detections back to the original pixels. Training adds flips.

    At `setup` both splits' annotations are validated and every referenced image file is
    checked to exist (a directory listing, no decoding), so bad data fails before the first step.

    Args:
        num_classes: expected number of categories. Give it so that configs can be checked
            without the data; when None it is read from `val_annotations`.
        min_size, max_size: optional; when given they must equal the model's (checked at
            setup). The data pipeline does not resize.
        keep_empty: keep training images without (non-crowd) annotations as negatives
            (default False: they are dropped, as in torchvision's and Detectron2's COCO recipes).
        check_files: check at setup that every image file exists.
    """

    def __init__(
        self,
        train_images: str,
        train_annotations: str,
        val_images: str,
        val_annotations: str,
        batch_size: int = 2,
        num_workers: int = 4,
        min_size: int | list[int] | None = None,
        max_size: int | None = None,
        with_masks: bool = False,
        skip_invalid: bool = False,
        aspect_ratio_grouping: bool = True,
        hflip_prob: float = 0.5,
        num_classes: int | None = None,
        val_batch_size: int | None = None,
        train_proposals: str | None = None,
        val_proposals: str | None = None,
        max_proposals: int = 2000,
        keep_empty: bool = False,
        check_files: bool = True,
    ):
        super().__init__(batch_size, num_workers, aspect_ratio_grouping, val_batch_size)
        self.train_proposals, self.val_proposals, self.max_proposals = train_proposals, val_proposals, max_proposals
        self.train_images, self.train_annotations = train_images, train_annotations
        self.val_images, self.val_annotations = val_images, val_annotations
        self.min_size, self.max_size = min_size, max_size
        self.with_masks, self.skip_invalid, self.hflip_prob = with_masks, skip_invalid, hflip_prob
        self.keep_empty, self.check_files = keep_empty, check_files
        self._num_classes = num_classes
        self._class_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        if self._num_classes is not None:
            return self._num_classes
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            for path in (self.val_annotations, self.train_annotations):
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"annotation file not found: {path}")
            cats = sorted(load_coco_json(self.val_annotations)["categories"], key=lambda c: c["id"])
            self._class_names = [c["name"] for c in cats]
        return self._class_names

    @staticmethod
    def _check_paths(*pairs: tuple[str, str]) -> None:
        for images, ann in pairs:
            if not os.path.isfile(ann):
                raise FileNotFoundError(f"annotation file not found: {ann}")
            if not os.path.isdir(images):
                raise FileNotFoundError(f"image folder not found: {images}")

    def setup(self, stage: str | None = None) -> None:
        self._check_resize(self.min_size, self.max_size)
        if stage in (None, "fit") and self.train_dataset is None:
            self._check_paths((self.train_images, self.train_annotations))
            train = CocoDetection(
                self.train_images,
                self.train_annotations,
                with_masks=self.with_masks,
                skip_invalid=self.skip_invalid,
                substitute_unreadable=True,  # a training batch never shrinks (see README)
                keep_empty=self.keep_empty,
                check_files=self.check_files,
            )
            train.transforms = build_transforms(
                True, min_size=None, max_size=None, hflip_prob=self.hflip_prob, flip_map=train.flip_map
            )
            self._require_images(train, self.train_annotations, "training")
            self.train_dataset = self._with_proposals(train, self.train_proposals)
        if self.val_dataset is None:
            self._check_paths((self.val_images, self.val_annotations))
            val = CocoDetection(
                self.val_images,
                self.val_annotations,
                with_masks=self.with_masks,
                skip_invalid=self.skip_invalid,
                check_files=self.check_files,
                transforms=build_transforms(False, min_size=None, max_size=None),
            )
            self._require_images(val, self.val_annotations, "validation")
            if val.stats["annotations"] == 0:
                rank_zero_warn(
                    f"{self.val_annotations} has no (non-crowd) annotations: COCO AP is undefined (-1) and no "
                    "AP-named checkpoint is written; only last.ckpt is kept"
                )
            self.val_dataset = self._with_proposals(val, self.val_proposals)
            self._class_names = list(self.val_dataset.class_names)
        if self.train_dataset is not None and list(self.train_dataset.class_names) != self.class_names:
            raise ValueError(f"{self.train_annotations} and {self.val_annotations} have different categories")
        if self._num_classes is not None and self._num_classes != len(self.class_names):
            raise ValueError(
                f"num_classes={self._num_classes} but {self.val_annotations} has {len(self.class_names)} categories"
            )


class VocDataModule(DetectionDataModule):
    """Pascal VOC (`root` = a `VOCdevkit/VOC20xx` folder), evaluated with COCO metrics.

    The evaluation split is written as COCO json by `VocDetection.to_coco_json` (difficult
    objects as crowd for the COCO metric, plus a `difficult` flag for the VOC metric) under
    `gt_dir` (default: `<run log folder>/voc_gt`, e.g. `runs/NAME/version_0/voc_gt`).
    With `skip_invalid`, unreadable training images are replaced by the next readable one (a
    batch never shrinks); unreadable validation images are skipped and counted.
    Every listed image is kept for training, also one whose objects are all difficult (a
    negative). As with COCO, the model's transform resizes images; `min_size` / `max_size`,
    when given, must equal the model's.
    """

    def __init__(
        self,
        root: str,
        train_set: str = "trainval",
        val_set: str = "test",
        batch_size: int = 2,
        num_workers: int = 4,
        min_size: int | list[int] | None = None,
        max_size: int | None = None,
        use_difficult: bool = False,
        skip_invalid: bool = False,
        aspect_ratio_grouping: bool = True,
        hflip_prob: float = 0.5,
        class_names: Sequence[str] = VOC_CLASSES,
        gt_dir: str | None = None,
        val_batch_size: int | None = None,
        train_proposals: str | None = None,
        val_proposals: str | None = None,
        max_proposals: int = 2000,
    ):
        super().__init__(batch_size, num_workers, aspect_ratio_grouping, val_batch_size)
        self.train_proposals, self.val_proposals, self.max_proposals = train_proposals, val_proposals, max_proposals
        self.root, self.train_set, self.val_set = root, train_set, val_set
        self.min_size, self.max_size = min_size, max_size
        self.use_difficult, self.skip_invalid, self.hflip_prob = use_difficult, skip_invalid, hflip_prob
        self._class_names = list(class_names)
        self.gt_dir = gt_dir

    @property
    def class_names(self) -> list[str]:
        return list(self._class_names)

    def _gt_path(self) -> str:
        folder = self.gt_dir
        if folder is None:
            trainer = self.trainer
            # under the run's log folder (runs/<name>/version_N/voc_gt), next to its eval/ results
            root = (trainer.log_dir or trainer.default_root_dir) if trainer is not None else "."
            folder = os.path.join(root, "voc_gt")
        name = os.path.basename(os.path.normpath(self.root)) or "voc"
        return os.path.join(folder, f"{name}_{self.val_set}.json")

    def setup(self, stage: str | None = None) -> None:
        self._check_resize(self.min_size, self.max_size)
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"VOC folder not found: {self.root}")
        if stage in (None, "fit") and self.train_dataset is None:
            train = VocDetection(
                self.root,
                self.train_set,
                class_names=self._class_names,
                use_difficult=self.use_difficult,
                skip_invalid=self.skip_invalid,
                substitute_unreadable=True,
                transforms=build_transforms(True, min_size=None, max_size=None, hflip_prob=self.hflip_prob),
            )
            self.train_dataset = self._with_proposals(train, self.train_proposals)
        if self.val_dataset is None:
            val = VocDetection(
                self.root,
                self.val_set,
                class_names=self._class_names,
                skip_invalid=self.skip_invalid,
                transforms=build_transforms(False, min_size=None, max_size=None),
            )
            val.to_coco_json(self._gt_path())
            self.val_dataset = self._with_proposals(val, self.val_proposals)
