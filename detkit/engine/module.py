"""`DetectionModule`: the Lightning system that trains and evaluates any detkit detector.

The detector itself is `self.model` (a plain `nn.Module` from `detkit.models.build_model`),
so checkpoint keys read `model.<detector keys>`. Batches are `(images, targets)` as made by
`detkit.data.collate_detection`: a list of float 0..1 `Tensor[3, H, W]` and one target dict
per image (`boxes`, `labels`, `masks` for mask models, `image_id`).
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import instantiate_class
from torch import Tensor, nn
from torch.optim import lr_scheduler

from detkit import __version__
from detkit.engine.evaluation_writer import Evaluation, EvaluationWriter
from detkit.evaluation import COCOEvaluator, detections_to_coco_results, gather_and_deduplicate
from detkit.evaluation.voc_eval import VOC_METRICS, VOCGroundTruth, evaluate_voc
from detkit.layers import is_norm
from detkit.models import build_model
from detkit.models.base import INFERENCE_PRECISIONS
from detkit.structures.label_map import LabelMap
from detkit.utils.checkpoint import STATS_KEY

__all__ = [
    "DetectionModule",
    "WarmupSchedule",
    "build_warmup_schedule",
    "parameter_groups",
    "resolve_milestones",
    "with_warmup",
]

STAGE_OF_FN = {"fit": "fit", "validate": "val", "test": "test", "predict": "predict"}  # trainer.state.fn -> stage

log = logging.getLogger(__name__)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer groups: weights with `weight_decay`, and norm parameters + biases without.

    Frozen parameters (`requires_grad=False`) are left out; shared parameters appear once.
    """
    decay, no_decay, seen = [], [], set()
    for module in model.modules():
        norm = is_norm(module)
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if norm or name == "bias" else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def _plain(value: Any) -> Any:
    """A jsonargparse Namespace (as LightningCLI hands over) -> plain dicts and lists."""
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resolve_milestones(milestones: Sequence[float], total_steps: float) -> list[int]:
    """Milestones as optimizer-step indices: values <= 1 are fractions of `total_steps`, larger ones steps."""
    out = []
    for m in milestones:
        if m <= 0:
            raise ValueError(f"lr_milestones must be positive, got {m}")
        if m <= 1:
            if not math.isfinite(total_steps):
                raise ValueError(
                    "fractional lr_milestones need a finite training length: set trainer.max_steps or max_epochs"
                )
            out.append(int(round(m * total_steps)))
        else:
            out.append(int(m))
    return sorted(out)


class WarmupSchedule:
    """LR multiplier per optimizer step: linear warm-up, then step decay, cosine or constant.

    Warm-up (as torchvision's references): `factor = warmup_factor * (1 - a) + a` with
    `a = step / warmup_steps` for `step < warmup_steps`; afterwards 1. It multiplies the
    schedule: step: `gamma ** (number of milestones <= step)`; cosine:
    `0.5 * (1 + cos(pi * step / total_steps))`; constant: 1.

    A callable object (not a lambda) so that LambdaLR checkpoints its settings.
    """

    def __init__(
        self,
        *,
        warmup_steps: int = 0,
        warmup_factor: float = 0.001,
        schedule: str = "step",
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        total_steps: float = math.inf,
    ):
        if schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"unknown lr schedule {schedule!r}")
        if schedule == "cosine" and not math.isfinite(total_steps):
            raise ValueError("the cosine schedule needs a finite training length: set trainer.max_steps or max_epochs")
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)
        self.schedule = schedule
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.total_steps = float(total_steps)

    def __call__(self, step: int) -> float:
        factor = 1.0
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            factor = self.warmup_factor * (1.0 - alpha) + alpha
        if self.schedule == "step":
            factor *= self.gamma ** bisect.bisect_right(self.milestones, step)
        elif self.schedule == "cosine":
            factor *= 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))
        return factor


def build_warmup_schedule(optimizer: torch.optim.Optimizer, schedule: WarmupSchedule) -> lr_scheduler.LRScheduler:
    """The curve of `schedule` built from `torch.optim.lr_scheduler`, stepped per optimizer step.

    LinearLR (warm-up) and MultiStepLR / CosineAnnealingLR run side by side in a ChainedScheduler,
    so their factors multiply and milestones count from step 0, as before: existing configs and
    runs keep their learning-rate curves (`schedule(step)` is the closed form of the same curve).
    """
    parts: list[lr_scheduler.LRScheduler] = []
    if schedule.warmup_steps > 0:  # LinearLR needs a start factor > 0
        start = max(schedule.warmup_factor, 1e-8)
        parts.append(lr_scheduler.LinearLR(optimizer, start, 1.0, total_iters=schedule.warmup_steps))
    if schedule.schedule == "step" and schedule.milestones:
        parts.append(lr_scheduler.MultiStepLR(optimizer, schedule.milestones, gamma=schedule.gamma))
    elif schedule.schedule == "cosine":
        parts.append(lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(int(schedule.total_steps), 1)))
    if not parts:
        return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    return parts[0] if len(parts) == 1 else CountingChainedScheduler(parts, optimizer=optimizer)


class CountingChainedScheduler(lr_scheduler.ChainedScheduler):
    """ChainedScheduler that counts its steps in `last_epoch` (checkpointed), as every other scheduler does."""

    def __init__(self, schedulers: Sequence[lr_scheduler.LRScheduler], optimizer: torch.optim.Optimizer):
        super().__init__(schedulers, optimizer=optimizer)
        self.last_epoch = 0

    def step(self) -> None:  # type: ignore[override]
        super().step()
        self.last_epoch += 1


def with_warmup(main: lr_scheduler.LRScheduler, *, warmup_steps: int, warmup_factor: float) -> lr_scheduler.LRScheduler:
    """Linear warm-up (LinearLR, `warmup_factor` -> 1 over `warmup_steps`), followed by `main` (SequentialLR).

    `main` starts when the warm-up ends: its own step count (MultiStepLR milestones, CosineAnnealingLR
    T_max) begins there, as in torchvision's reference scripts.
    """
    if isinstance(main, lr_scheduler.ReduceLROnPlateau):
        raise ValueError("lr_scheduler: ReduceLROnPlateau needs a monitored metric; use a step-based scheduler")
    if warmup_steps <= 0:
        return main
    optimizer = main.optimizer
    warmup = lr_scheduler.LinearLR(optimizer, max(warmup_factor, 1e-8), 1.0, total_iters=int(warmup_steps))
    return lr_scheduler.SequentialLR(optimizer, [warmup, main], milestones=[int(warmup_steps)])


class DetectionModule(LightningModule):
    """Train / validate / test / predict a registered detkit detector.

    Optimiser and LR schedule: any `torch.optim` optimiser and `torch.optim.lr_scheduler` scheduler
    through LightningCLI's own top-level keys, e.g. `detkit fit --optimizer RMSprop
    --optimizer.lr 0.001 --lr_scheduler CosineAnnealingLR --lr_scheduler.T_max 5000`, or in YAML
    `optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.02, momentum: 0.9, nesterov: true,
    weight_decay: 1e-4}}`. detkit still builds the optimiser on its two parameter groups (its
    `weight_decay` only on weights, never on norms and biases) and puts its linear warm-up
    (`warmup_steps`, `warmup_factor`) in front of the scheduler (SequentialLR: the scheduler's
    steps count from the end of the warm-up); they replace `optimizer` / `lr` / `momentum` /
    `weight_decay` / `lr_schedule` / `lr_milestones` / `lr_gamma` below, which remain the shorthand
    used when the keys are absent.

    Classes: the detector's label map (class names and data set category ids of labels 1..K) comes
    from the checkpoint it was loaded from, else from the data of its first fit, and is saved in every
    checkpoint. At validate, test, predict and resume it is compared with the data's categories:
    other classes are a `LabelMapMismatchError` showing both maps (fine-tune with `weights` instead);
    the same names under other ids are mapped by name (one logged line), results then carry the data's
    ids and targets are put in the detector's label order for the losses.

    Args:
        model_name: a name from `detkit.models.list_models()`.
        num_classes: object classes, background excluded (the CLI links it from the data).
        model_kwargs: keyword arguments of the model builder (anchors, sizes, backbone_weights...).
        weights: detector checkpoint to start from (see `build_model`); it may have other classes:
            what fits is kept, the class-specific layers are re-initialised (fine-tuning).
        class_names: the classes' names in label order (the CLI links them from the data). With
            `weights` of other classes, the rows of classes whose names the weights record are
            carried over; the data's categories must have these names.
        optimizer: shorthand "sgd" (momentum) or "adamw"; any other optimiser: the top-level
            `optimizer:` key (see above).
        lr: base learning rate.
        momentum: SGD momentum (AdamW: beta1).
        weight_decay: L2 / decoupled decay; never applied to norm parameters and biases.
        warmup_steps: linear warm-up length in optimizer steps.
        warmup_factor: LR multiplier at step 0 of the warm-up.
        lr_schedule: after warm-up: "step" decay at `lr_milestones`, "cosine" to 0, or "constant".
        lr_milestones: step-decay points: fractions (<= 1) of the total optimizer steps
            (`trainer.estimated_stepping_batches`) or absolute step numbers (> 1).
        lr_gamma: step-decay factor.
        eval_iou_types: COCO evaluation types; default "bbox", plus "segm" for mask models and
            "keypoints" (OKS, logged as `val/kp_AP`, ...) for keypoint models.
        eval_metric: "coco" (COCO metrics only), or "voc07" / "voc2010": also the Pascal VOC
            mAP (IoU > 0.5, difficult objects ignored) of the same detections, logged as
            `val/voc07_mAP` (`val/voc2010_mAP`), per-class AP in metrics.json. The COCO
            metrics stay logged, so `val/AP` monitors keep working.
        max_bad_steps: consecutive steps with a non-finite loss tolerated (each is skipped)
            before training stops with an error.
        num_visualize: validation images drawn with their detections per evaluation.
        compute_val_loss: also compute and log the losses on the validation data.
        visualize_score_threshold: detections drawn on the validation images score at least this.
        save_predictions: write the COCO results json of each evaluation next to its metrics.
        analysis_report: write the `detkit analyze` report (`report/index.html`) of the last
            evaluation (of validate / test, and of the last epoch of a fit) next to its metrics.
        channels_last: keep the model's 4-D weights in channels-last (NHWC) memory format, so
            that convolutions run NHWC on every device: the faster layout for bf16/fp16 on recent
            GPUs (Tensor Cores). On the CPU the batches are already channels-last by default
            (`model_kwargs.memory_format`, "auto"), which is what makes CPU convolutions faster.
        fold_bn: run each fixed batch norm folded into its convolution where no gradient needs
            them (see `detkit.models.configure_kernels`); false: conv and norm as two ops.
        cpu_kernels: detkit's CPU kernels (threaded RoIAlign, strided stem pool, channels-last
            batches); false: the CPU runs the kernels CUDA runs. Both change only float rounding;
            both are recorded in config.yaml and the checkpoints.
        inference_precision: "bf16" computes the detections of validate, test and predict (and
            of the validation during a fit) under bfloat16 autocast (`Detector.predict(...,
            precision=)`: convolutions and matrix products in bfloat16, box arithmetic and NMS
            in float32); "fp32" adds nothing to the trainer's precision. The validation losses
            stay in the trainer's precision. Recorded in config.yaml and the checkpoints.
    """

    def __init__(
        self,
        model_name: str = "faster_rcnn_tiny",
        num_classes: int = 3,
        model_kwargs: dict[str, Any] | None = None,
        weights: str | None = None,
        class_names: list[str] | None = None,
        optimizer: Literal["sgd", "adamw"] = "sgd",
        lr: float = 0.02,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        warmup_steps: int = 500,
        warmup_factor: float = 0.001,
        lr_schedule: Literal["step", "cosine", "constant"] = "step",
        lr_milestones: list[float] = [0.67, 0.89],  # noqa: B006  (list default: shown as-is by the CLI)
        lr_gamma: float = 0.1,
        eval_iou_types: list[Literal["bbox", "segm", "keypoints"]] | None = None,
        eval_metric: Literal["coco", "voc07", "voc2010"] = "coco",
        max_bad_steps: int = 20,
        num_visualize: int = 8,
        compute_val_loss: bool = True,
        visualize_score_threshold: float = 0.5,
        save_predictions: bool = True,
        analysis_report: bool = False,
        channels_last: bool = False,
        fold_bn: bool = True,
        cpu_kernels: bool = True,
        inference_precision: Literal["fp32", "bf16"] = "fp32",
    ):
        super().__init__()
        # `weights` is where training started, not part of the model: a checkpoint holds every weight, so
        # `load_from_checkpoint` must not read that file again (it may be gone); it is kept in STATS_KEY
        self.save_hyperparameters(ignore=["weights"])
        self.initial_weights = None if weights is None else os.fspath(weights)
        if max_bad_steps < 1:
            raise ValueError(f"max_bad_steps must be >= 1, got {max_bad_steps}")
        if inference_precision not in INFERENCE_PRECISIONS:
            raise ValueError(
                f"model.inference_precision must be one of {INFERENCE_PRECISIONS}, got {inference_precision!r}"
            )
        if eval_metric not in ("coco", *VOC_METRICS):
            raise ValueError(f"eval_metric must be coco, voc07 or voc2010, got {eval_metric!r}")
        backbone_weights = (model_kwargs or {}).get("backbone_weights")
        for key, path in (("weights", weights), ("model_kwargs.backbone_weights", backbone_weights)):
            if isinstance(path, (str, os.PathLike)) and not os.path.isfile(path):  # name the key, not only the file
                raise FileNotFoundError(
                    f"model.{key}: file not found: {os.fspath(path)} (null starts without these weights)"
                )
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"model.class_names has {len(class_names)} names but num_classes is {num_classes}")
        try:
            self.model = build_model(
                model_name,
                num_classes=num_classes,
                weights=weights,
                class_names=class_names,
                fold_bn=fold_bn,
                cpu_kernels=cpu_kernels,
                **(model_kwargs or {}),
            )
        except TypeError as e:  # a misspelt model_kwargs key: one line naming it
            raise ValueError(f"model.model_kwargs: {e}") from e
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        has_masks = bool(getattr(self.model, "has_masks", False))  # the model says what it predicts
        has_keypoints = bool(getattr(self.model, "has_keypoints", False))
        if eval_iou_types is None:
            eval_iou_types = ["bbox"] + ["segm"] * has_masks + ["keypoints"] * has_keypoints
        if "segm" in eval_iou_types and not has_masks:
            raise ValueError(f"eval_iou_types contains 'segm' but {model_name} predicts no masks")
        if "keypoints" in eval_iou_types and not has_keypoints:
            raise ValueError(f"eval_iou_types contains 'keypoints' but {model_name} predicts no keypoints")
        self.eval_iou_types = list(eval_iou_types)
        # The detector's label map (names and data set category ids of labels 1..K): from the checkpoint
        # it was loaded from, else from the data of its first fit; other data is compared with it, never
        # written over it (`_join_data`).
        self.class_names: list[str] | None = None if class_names is None else [str(n) for n in class_names]
        self.label_to_category_id: dict[int, int] | None = None
        self.keypoint_layout: dict[str, list] | None = None  # keypoint names and skeleton, see _keypoint_layout
        self._result_category_ids: dict[int, int] | None = None  # the data's ids of labels 1..K (last joint)
        self._target_labels: Tensor | None = None  # data label -> detector label, where their orders differ
        self._told: set[str] = set()
        self.skipped_steps = 0
        self._bad_streak = 0
        self._bad_losses: dict[str, str] = {}
        self._evaluators: dict[str, COCOEvaluator] = {}
        self._voc_gt: dict[str, VOCGroundTruth] = {}
        self._eval = self._new_eval_state()
        self.last_evaluation: Evaluation | None = None  # what EvaluationWriter writes (global-zero rank)
        self._loaded_epoch: int | None = None
        self._optimizer_init: dict[str, Any] | None = None
        self._lr_scheduler_init: dict[str, Any] | None = None
        self._resume_scheduler_steps = 0

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _new_eval_state() -> dict[str, Any]:
        return {"results": [], "image_ids": []}

    def forward(self, images: Sequence[Tensor]) -> list[dict[str, Tensor]]:
        return self.model.predict(images, precision=self.hparams.inference_precision)

    def _data_attr(self, name: str, stage: str) -> Any:
        """`name` from the datamodule, else from the dataset of the stage's first dataloader
        (stage "fit": the training loader, "val", "test", "predict")."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, name, None) is not None:
            return getattr(dm, name)
        trainer = self.trainer
        loaders = {
            "fit": lambda: trainer.train_dataloader,
            "test": lambda: trainer.test_dataloaders,
            "predict": lambda: trainer.predict_dataloaders,
        }.get(stage, lambda: trainer.val_dataloaders)()
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        dataset = getattr(loaders, "dataset", None)
        key = {"val_ann_file": "ann_file"}.get(name, name)
        return getattr(dataset, key, None)

    def _class_names(self) -> list[str] | None:
        """The detector's class names in label order; the data's only while it has none of its own."""
        if self.class_names is None and self._trainer is not None:
            names = getattr(getattr(self._trainer, "datamodule", None), "class_names", None)
            if names is not None:
                self.class_names = [str(n) for n in names]
        return self.class_names

    # ------------------------------------------------------------------ label map joints
    def _data_label_map(self, stage: str) -> LabelMap | None:
        """The data's categories (`class_names` and `label_to_category_id`), None where it does not say."""
        ids = self._data_attr("label_to_category_id", stage)
        names = self._data_attr("class_names", stage)
        if not ids or names is None:
            return None
        return LabelMap.from_label_to_category_id(ids, names)

    def _own_label_map(self, data: LabelMap, what: str) -> LabelMap | None:
        """The detector's label map; where it knows only names (no category ids), the data's ids by name."""
        names, ids = self.class_names, self.label_to_category_id
        if ids:
            if names is None:  # ids alone: compared as ids, named as the data names them
                by_id = dict(zip(data.category_ids, data.names))
                names = [by_id.get(c, f"category {c}") for c in ids.values()]
            return LabelMap.from_label_to_category_id(ids, names)
        return None if names is None else LabelMap.from_names(names, data, what=what)

    def _join_data(self, stage: str) -> None:
        """Compare the detector's label map with the data's categories where the two meet.

        Equal maps: results carry the data's ids. The same names with other ids: mapped by name, said
        once; results carry the data's id of each name, and target labels (data order) are put in the
        detector's label order for the losses. Other classes: `LabelMapMismatchError`, both maps shown.
        A detector without a label map takes the data's when it is fitted (its first training).
        """
        self._result_category_ids, self._target_labels = None, None
        data = self._data_label_map(stage)
        if data is None:
            return
        ann_file = self._data_attr("val_ann_file", "test" if stage == "test" else "val")
        what = os.fspath(ann_file) if ann_file else "the data"
        own = self._own_label_map(data, what)
        if own is None:
            if stage == "fit":  # the classes this detector learns
                self.class_names, self.label_to_category_id = list(data.names), data.label_to_category_id
            self._result_category_ids = data.label_to_category_id
            return
        if stage == "fit" and self.label_to_category_id is None:  # names alone: it learns the data's ids
            self.label_to_category_id = own.label_to_category_id
        mapped = own.reconcile(data, what=what)
        if mapped is None:
            self._result_category_ids = data.label_to_category_id
            return
        self._result_category_ids = mapped.label_to_category_id
        to_own = {name: label for label, name in enumerate(own.names, start=1)}
        order = [0, *(to_own[name] for name in data.names)]
        if order != sorted(order):
            self._target_labels = torch.tensor(order, dtype=torch.int64)
        note = (
            f"the data numbers the checkpoint's classes {own.describe()} as {data.describe()} "
            "(category id: name): mapped by name"
        )
        if note not in self._told and self._is_global_zero():
            log.warning(note)
        self._told.add(note)

    def _is_global_zero(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    def category_ids_for_results(self) -> dict[int, int]:
        """`{label: category id}` to write this detector's results on the current data with: the data's id
        of each label's class (mapped by name where the data numbers the classes otherwise)."""
        if self._result_category_ids is not None:
            return dict(self._result_category_ids)
        if self.label_to_category_id:
            return dict(self.label_to_category_id)
        return {k: k for k in range(1, self.hparams.num_classes + 1)}

    def _in_own_labels(self, targets: list[dict] | None) -> list[dict] | None:
        """Targets with the data's labels put in the detector's label order (where the two differ)."""
        order = self._target_labels
        if order is None or targets is None:
            return targets
        out = []
        for t in targets:
            labels = t["labels"]
            out.append({**t, "labels": order.to(labels.device)[labels]})
        return out

    def on_train_start(self) -> None:
        self._join_data("fit")

    def on_fit_start(self) -> None:
        """Before the sanity check: a keypoint model refuses training data whose categories name no
        keypoints (one line naming the file)."""
        if not getattr(self.model, "has_keypoints", False):
            return
        dataset = getattr(getattr(self.trainer, "datamodule", None), "train_dataset", None)
        if dataset is None:  # loaders given to fit() directly
            dataset = getattr(self.trainer.train_dataloader, "dataset", None)
        if getattr(dataset, "has_keypoints", None) is False:
            source = getattr(dataset, "ann_file", None) or "the training data"
            raise ValueError(
                f"{os.fspath(source)}: {self.hparams.model_name} learns keypoints but no category of the training "
                "data names its 'keypoints' (COCO keypoint annotations are needed)"
            )

    def on_predict_epoch_start(self) -> None:
        self._join_data("predict")

    def _world_size(self) -> int:
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def _proposals(self, targets: list[dict] | None) -> dict[str, Any]:
        """`proposals=` for a model that `requires_proposals`: each image's `target["proposals"]`
        (from `detkit.data.WithProposals`, which the datamodules' `*_proposals` caches set up)."""
        if not getattr(self.model, "requires_proposals", False):
            return {}
        if not targets or any("proposals" not in t for t in targets):
            raise ValueError(
                f"{self.hparams.model_name} requires region proposals but the batch has no target['proposals']: "
                "give the datamodule proposal caches (train_proposals / val_proposals, written by detkit proposals)"
            )
        return {"proposals": [t["proposals"] for t in targets]}

    @staticmethod
    def _split_batch(batch) -> tuple[list[Tensor], list[dict] | None]:
        if (
            isinstance(batch, (tuple, list))
            and len(batch) == 2
            and isinstance(batch[1], (list, tuple))
            and (not batch[1] or isinstance(batch[1][0], dict))
        ):
            return list(batch[0]), list(batch[1])
        return list(batch), None

    # ------------------------------------------------------------------ training
    def training_step(self, batch, batch_idx: int):
        images, targets = self._split_batch(batch)
        targets = self._in_own_labels(targets)
        losses = self.model(images, targets, **self._proposals(targets))
        total = sum(losses.values())
        names = [*losses, "loss"]
        values = torch.stack([v.detach().float().reshape(()) for v in (*losses.values(), total)])
        finite = torch.isfinite(values)
        flag = (~finite).any().float()
        if self._world_size() > 1:  # every rank skips together, or none does
            flag = self.all_gather(flag).max()
        n = len(images)
        if flag.item() > 0:  # the step's only host sync
            bad = {k: f"{v:g}" for k, v, ok in zip(names, values.tolist(), finite.tolist()) if not ok}
            if len(bad) > 1:
                bad.pop("loss", None)  # the total is non-finite because a part is
            self.skipped_steps += 1
            self._bad_streak += 1
            self._bad_losses.update(bad)
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False, batch_size=n)
            if self._bad_streak >= self.hparams.max_bad_steps:
                detail = ", ".join(f"{k}={v}" for k, v in sorted(self._bad_losses.items())) or "(on another rank)"
                raise RuntimeError(
                    f"{self._bad_streak} consecutive training steps had non-finite losses ({detail}); stopping. "
                    "Lower the learning rate, lengthen the warm-up, clip gradients (trainer.gradient_clip_val) "
                    "or check the data."
                )
            if self._world_size() > 1:
                # DDP cannot skip a step: run a zero backward on every rank, drop the update below
                self._skip_update = True
                return sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
            return None  # Lightning skips backward and the optimizer step
        self._bad_streak = 0
        self._bad_losses = {}
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/loss", total.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/skipped_steps", float(self.skipped_steps), on_step=True, on_epoch=False, batch_size=n)
        if self._trainer is not None and self.trainer.optimizers:
            self.log(
                "train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=n
            )
        return total

    def on_before_optimizer_step(self, optimizer) -> None:
        if getattr(self, "_skip_update", False):  # a non-finite step under DDP: no update
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
            self._skip_update = False

    def use_optimizer(self, optimizer: Mapping[str, Any] | None, scheduler: Mapping[str, Any] | None = None) -> None:
        """Train with `{"class_path": ..., "init_args": {...}}` specs of an optimiser and / or a scheduler
        (what LightningCLI's `optimizer:` / `lr_scheduler:` keys hold; `DetkitCLI` calls this).

        `configure_optimizers` builds them on detkit's parameter groups and warm-up; None keeps the shorthand.
        """
        optimizer, scheduler = _plain(optimizer), _plain(scheduler)
        for name, spec in (("optimizer", optimizer), ("lr_scheduler", scheduler)):
            if spec is not None and not (isinstance(spec, Mapping) and isinstance(spec.get("class_path"), str)):
                raise ValueError(f"{name} must be a mapping with a 'class_path' (and 'init_args'), got {spec!r}")
        self._optimizer_init, self._lr_scheduler_init = optimizer, scheduler

    def configure_optimizers(self):
        hp = self.hparams
        if self._optimizer_init is not None:
            init_args = dict(self._optimizer_init.get("init_args") or {})
            groups = parameter_groups(self.model, init_args.pop("weight_decay", hp.weight_decay))
            opt = instantiate_class(groups, {"class_path": self._optimizer_init["class_path"], "init_args": init_args})
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(parameter_groups(self.model, hp.weight_decay), lr=hp.lr, momentum=hp.momentum)
        elif hp.optimizer == "adamw":
            groups = parameter_groups(self.model, hp.weight_decay)
            opt = torch.optim.AdamW(groups, lr=hp.lr, betas=(hp.momentum, 0.999))
        else:
            raise ValueError(f"unknown optimizer {hp.optimizer!r}")
        if self._lr_scheduler_init is not None:
            main = instantiate_class(opt, self._lr_scheduler_init)
            scheduler = with_warmup(main, warmup_steps=hp.warmup_steps, warmup_factor=hp.warmup_factor)
        else:
            total = float(self.trainer.estimated_stepping_batches)
            milestones = resolve_milestones(hp.lr_milestones, total) if hp.lr_schedule == "step" else []
            schedule = WarmupSchedule(
                warmup_steps=hp.warmup_steps,
                warmup_factor=hp.warmup_factor,
                schedule=hp.lr_schedule,
                milestones=milestones,
                gamma=hp.lr_gamma,
                total_steps=total,
            )
            scheduler = build_warmup_schedule(opt, schedule)
        if self._resume_scheduler_steps:  # a checkpoint of the former LambdaLR schedule: catch up
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "lr_scheduler.step() before optimizer.step()"
                for _ in range(self._resume_scheduler_steps):
                    scheduler.step()
            self._resume_scheduler_steps = 0
        return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    # ------------------------------------------------------------------ evaluation
    def configure_callbacks(self) -> list:
        """An `EvaluationWriter` (evaluation files and pictures) for a Trainer that has none."""
        if any(isinstance(c, EvaluationWriter) for c in self.trainer.callbacks):
            return []
        return [EvaluationWriter()]

    @property
    def last_eval_dir(self) -> str | None:
        """The folder the trainer's `EvaluationWriter` wrote the latest evaluation to."""
        trainer = self._trainer
        writers = [c for c in trainer.callbacks if isinstance(c, EvaluationWriter)] if trainer is not None else []
        return writers[0].last_dir if writers else None

    def on_validation_epoch_start(self) -> None:
        self._join_data("val")
        self._eval = self._new_eval_state()
        self.last_evaluation = None

    def on_test_epoch_start(self) -> None:
        self._join_data("test")
        self._eval = self._new_eval_state()
        self.last_evaluation = None

    def _eval_step(self, batch, stage: str) -> list[dict[str, Tensor]] | None:
        """Losses (logged) and detections of one batch; the detections are the step's output
        (EvaluationWriter draws the first images)."""
        images, targets = self._split_batch(batch)
        if targets is None:
            raise ValueError(f"{stage} batches must be (images, targets) with targets[i]['image_id']")
        if not images:  # every image of the batch was unreadable and skipped (skip_invalid)
            return None
        targets = self._in_own_labels(targets)
        n = len(images)
        extra = self._proposals(targets)
        if self.hparams.compute_val_loss:
            losses = self.model(images, targets, **extra)
            self.log_dict(
                {f"{stage}/{k}": v for k, v in losses.items()},
                on_step=False,
                on_epoch=True,
                batch_size=n,
                sync_dist=True,
            )
            self.log(f"{stage}/loss", sum(losses.values()), on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        detections = self.model.predict(images, precision=self.hparams.inference_precision, **extra)
        image_ids = [int(t["image_id"]) for t in targets]
        label_map = self.category_ids_for_results()
        self._eval["results"].extend(detections_to_coco_results(image_ids, detections, label_to_category_id=label_map))
        self._eval["image_ids"].extend(image_ids)
        return detections

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]] | None:
        return self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]] | None:
        return self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _evaluator(self, ann_file: str) -> COCOEvaluator:
        if ann_file not in self._evaluators:
            self._evaluators[ann_file] = COCOEvaluator(ann_file)
        return self._evaluators[ann_file]

    def _eval_epoch_end(self, stage: str) -> None:
        results, image_ids = self._eval["results"], self._eval["image_ids"]
        if self._world_size() > 1:
            gathered: list[Any] = [None] * self._world_size()
            dist.all_gather_object(gathered, (results, image_ids))
            results = gather_and_deduplicate([g[0] for g in gathered])
            image_ids = sorted({i for g in gathered for i in g[1]})
        metrics: dict[str, float] = {}
        if self.trainer.is_global_zero and image_ids:
            metrics = self._compute_metrics(stage, results, image_ids)
        if self._world_size() > 1:
            metrics = self.trainer.strategy.broadcast(metrics, src=0)
        if metrics:
            self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False)
        self._eval = self._new_eval_state()

    def _compute_metrics(self, stage: str, results: list[dict], image_ids: list[int]) -> dict[str, float]:
        """Metrics of the gathered results (global-zero rank); outside the sanity check, also prints
        them and leaves the evaluation in `last_evaluation` for the EvaluationWriter."""
        ann_file = self._data_attr("val_ann_file", stage)
        if ann_file is None:
            raise ValueError(
                "evaluation needs the ground-truth annotation file: "
                "the datamodule's val_ann_file or the dataset's ann_file"
            )
        evaluator = self._evaluator(os.fspath(ann_file))
        metrics, reports = {}, {}
        for iou_type in self.eval_iou_types:
            result = evaluator.evaluate(results, iou_type, img_ids=image_ids, verbose=False)
            prefix = f"{stage}/" + {"bbox": "", "keypoints": "kp_"}.get(iou_type, f"{iou_type}_")
            metrics.update({f"{prefix}{k}": float(v) for k, v in result.stats.items()})
            reports[iou_type] = result
        metric = self.hparams.get("eval_metric", "coco")
        if metric in VOC_METRICS:
            path = os.fspath(ann_file)
            if path not in self._voc_gt:
                self._voc_gt[path] = VOCGroundTruth.from_coco(path)
            voc = evaluate_voc(self._voc_gt[path], results, metric, img_ids=image_ids)
            metrics[f"{stage}/{metric}_mAP"] = -1.0 if voc.mAP is None else voc.mAP
            reports[metric] = voc
        if self.trainer.sanity_checking:
            return metrics
        skipped = self._skipped_images(stage, image_ids)
        note = f", {skipped} unreadable skipped" if skipped else ""
        header = f"{stage} epoch {self._eval_epoch()} ({len(set(image_ids))} images{note}, {len(results)} detections)"
        for iou_type, result in reports.items():
            print(f"\n[{header}] {iou_type}\n{result.summary}", flush=True)
        self.last_evaluation = Evaluation(
            stage=stage,
            epoch=self._eval_epoch(),
            global_step=self.global_step,
            fitting=self.trainer.state.fn == "fit",
            results=results,
            reports=reports,
            skipped_images=skipped,
            class_names=self._class_names(),
            ann_file=os.fspath(ann_file),
            image_root=self._data_attr("image_root", stage),
            image_ids=sorted(set(image_ids)),
        )
        return metrics

    def _skipped_images(self, stage: str, image_ids: list[int]) -> int:
        """Images of the evaluated split that never reached the model (unreadable, skipped with
        skip_invalid): the data set's length minus the images evaluated, on a full pass only."""
        limit = self.trainer.limit_test_batches if stage == "test" else self.trainer.limit_val_batches
        loaders = self.trainer.test_dataloaders if stage == "test" else self.trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        dataset = getattr(loaders, "dataset", None)
        if limit != 1.0 or dataset is None or not hasattr(dataset, "__len__"):
            return 0
        return max(0, len(dataset) - len(set(image_ids)))

    # ------------------------------------------------------------------ prediction
    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Tensor]]:
        images, targets = self._split_batch(batch)
        if not images:  # unreadable images skipped (skip_invalid)
            return []
        detections = self.model.predict(images, precision=self.hparams.inference_precision, **self._proposals(targets))
        return [{k: v.detach().cpu() for k, v in d.items()} for d in detections]

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hp = self.hparams
        checkpoint[STATS_KEY] = {
            "version": __version__,
            "model_name": hp.model_name,
            "num_classes": int(hp.num_classes),
            "model_kwargs": dict(hp.model_kwargs or {}),
            "class_names": self._class_names(),
            "label_to_category_id": self._category_ids(),
            "proposals": self._proposal_settings(),
            "keypoints": self._keypoint_layout(),
            "skipped_steps": self.skipped_steps,
            "initial_weights": self.initial_weights,
        }

    def _proposal_settings(self) -> dict[str, Any] | None:
        """Selective-search settings of the training proposals (the datamodule's `train_proposals` cache,
        capped at its `max_proposals`; kept from a loaded checkpoint): what `detkit predict` computes with."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        cache = getattr(dm, "train_proposals", None)
        if getattr(self.model, "requires_proposals", False) and cache and os.path.isfile(cache):
            from detkit.proposals.cache import cache_settings

            self.proposal_settings = cache_settings(cache, getattr(dm, "max_proposals", None))
        return getattr(self, "proposal_settings", None)

    def _keypoint_layout(self) -> dict[str, list] | None:
        """`{"names": [...], "skeleton": [[i, j], ...]}` (0-based pairs) of a keypoint detector's training data
        (kept from a loaded checkpoint): what `detkit predict` draws with. None for other detectors."""
        if self.keypoint_layout is None and getattr(self.model, "has_keypoints", False):
            dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            for dataset in (getattr(dm, "train_dataset", None), getattr(dm, "val_dataset", None)):
                names = getattr(dataset, "keypoint_names", None)
                if names:
                    skeleton = [[int(a), int(b)] for a, b in getattr(dataset, "skeleton", None) or ()]
                    self.keypoint_layout = {"names": [str(n) for n in names], "skeleton": skeleton}
                    break
        return self.keypoint_layout

    def _category_ids(self) -> dict[int, int] | None:
        """`{label: data set category id}` of the detector (from its checkpoint or its first training data);
        the data module's only while it has none of its own."""
        if self.label_to_category_id is None and self._trainer is not None:
            dm = getattr(self._trainer, "datamodule", None)
            try:
                mapping = getattr(dm, "label_to_category_id", None)
            except (OSError, ValueError):  # a data module whose files are gone
                mapping = None
            if mapping:
                self.label_to_category_id = {int(k): int(v) for k, v in dict(mapping).items()}
        return self.label_to_category_id

    def _check_checkpoint_fits(self, state: dict[str, Any], info: dict[str, Any]) -> None:
        """One-line error, before Lightning's strict load, when a checkpoint's weights do not fit this model."""
        own = self.state_dict()
        wrong = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if not (wrong or missing or unexpected):
            return
        hp = self.hparams
        trained = f"model_name={info.get('model_name', '?')}, num_classes={info.get('num_classes', '?')}"
        first = wrong[:1] or missing[:1] or unexpected[:1]
        detail = (
            f"{first[0]} has shape {tuple(state[first[0]].shape)}, the model {tuple(own[first[0]].shape)}"
            if wrong
            else f"{'missing' if missing else 'unexpected'} key {first[0]}"
        )
        raise ValueError(
            f"the checkpoint ({trained}) does not fit model_name={hp.model_name}, num_classes={hp.num_classes} "
            f"({detail}): use the data / model settings it was trained with, or start from it with --model.weights"
        )

    def _eval_epoch(self) -> int:
        """The epoch being evaluated: the current one while fitting, else the loaded checkpoint's."""
        if self.trainer.state.fn != "fit" and self._loaded_epoch is not None:
            return self._loaded_epoch
        return self.current_epoch

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._loaded_epoch = checkpoint.get("epoch")
        schedulers = checkpoint.get("lr_schedulers") or []
        if len(schedulers) == 1 and "lr_lambdas" in schedulers[0]:
            # the LambdaLR of earlier detkit versions: advance the new scheduler to its step instead
            self._resume_scheduler_steps = int(schedulers[0].get("last_epoch", 0))
            checkpoint["lr_schedulers"] = []
        info = checkpoint.get(STATS_KEY) or {}
        self._check_checkpoint_fits(checkpoint.get("state_dict") or {}, info)
        if info.get("class_names"):
            self.class_names = [str(n) for n in info["class_names"]]
            self.hparams["class_names"] = list(self.class_names)  # a resumed run saves the checkpoint's names
        if info.get("label_to_category_id"):
            self.label_to_category_id = {int(k): int(v) for k, v in info["label_to_category_id"].items()}
        trainer = self._trainer
        if trainer is not None and getattr(trainer, "datamodule", None) is not None:
            # set up before the checkpoint is restored: refuse other classes before loading anything
            fn = trainer.state.fn
            self._join_data(STAGE_OF_FN.get(getattr(fn, "value", fn), "val"))
        if info.get("proposals"):
            self.proposal_settings = dict(info["proposals"])
        if info.get("keypoints"):
            self.keypoint_layout = dict(info["keypoints"])
        self.skipped_steps = int(info.get("skipped_steps", 0))
        self.initial_weights = info.get("initial_weights", self.initial_weights)
