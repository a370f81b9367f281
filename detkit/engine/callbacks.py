"""Callbacks: training-curve plots from the CSV logger, COCO json writer for `predict`."""

from __future__ import annotations

import csv
import inspect
import math
import os
from collections.abc import Sequence
from typing import Any
from weakref import proxy

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch import Tensor

from detkit.evaluation import detections_to_coco_results
from detkit.evaluation.results import save_results_json
from detkit.visualize import plot_curves

__all__ = [
    "CocoPredictionWriter",
    "DetectionCheckpoint",
    "LossCurveCallback",
    "plot_training_curves",
    "read_metrics_csv",
]


def read_metrics_csv(path: str | os.PathLike) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """Columns of a Lightning `metrics.csv` as `{name: (steps, epochs, values)}` (empty cells skipped)."""
    out: dict[str, tuple[list[float], list[float], list[float]]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            step = float(row.get("step") or "nan")
            epoch = float(row.get("epoch") or "nan")
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                steps, epochs, values = out.setdefault(key, ([], [], []))
                steps.append(step)
                epochs.append(epoch)
                values.append(v)
    return out


def _ema(values: Sequence[float], beta: float = 0.7) -> list[float]:
    out, avg, n = [], 0.0, 0
    for v in values:
        if not math.isfinite(v):
            out.append(float("nan"))
            continue
        n += 1
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**n))  # bias-corrected
    return out


def plot_training_curves(metrics_csv: str | os.PathLike, out_dir: str | os.PathLike) -> list[str]:
    """Write `loss_curve.png` (train loss, smoothed, and val loss per step) and, when logged,
    `val_metrics.png` (val AP / AP50 per epoch) into `out_dir`. Returns the written paths.
    """
    cols = read_metrics_csv(metrics_csv)
    written = []
    series = {}
    if "train/loss" in cols:
        steps, _, values = cols["train/loss"]
        series["train/loss"] = (steps, values)
        if len(values) > 5:
            series["train/loss (ema)"] = (steps, _ema(values))
    if "val/loss" in cols:
        steps, _, values = cols["val/loss"]
        series["val/loss"] = (steps, values)
    if series:
        path = os.path.join(out_dir, "loss_curve.png")
        plot_curves(series, path, title="loss", xlabel="step", ylabel="loss", log_y=True)
        written.append(path)
    ap = {k: (cols[k][1], cols[k][2]) for k in ("val/AP", "val/AP50", "val/segm_AP") if k in cols}
    if ap:
        path = os.path.join(out_dir, "val_metrics.png")
        plot_curves(ap, path, title="validation", xlabel="epoch", ylabel="COCO metric")
        written.append(path)
    return written


class LossCurveCallback(Callback):
    """At the end of `fit`, plot the CSV logger's losses (and val AP) as PNGs in its log folder."""

    @rank_zero_only
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()
                path = logger.experiment.metrics_file_path
                if os.path.isfile(path):
                    plot_training_curves(path, logger.log_dir)
                return


class CocoPredictionWriter(BasePredictionWriter):
    """Writes the predictions of `trainer.predict` as a COCO results json.

    Batches must be `(images, targets)` with `targets[i]["image_id"]` (detkit data modules
    provide them). Label -> category id mapping: a `DetectionModule`'s `category_ids_for_results()`
    (its classes, the data's ids), else the datamodule's.

    Args:
        output: json path; default `<log dir>/predictions.json`.
    """

    def __init__(self, output: str | None = None):
        super().__init__(write_interval="batch")
        self.output = output
        self._results: list[dict[str, Any]] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._results = []

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError("CocoPredictionWriter needs (images, targets) batches with targets[i]['image_id']")
        ids = [int(t["image_id"]) for t in batch[1]]
        if hasattr(pl_module, "category_ids_for_results"):  # a DetectionModule: its labels, the data's ids
            label_map = pl_module.category_ids_for_results()
        else:
            datamodule = trainer.datamodule
            label_map = getattr(datamodule, "label_to_category_id", None) if datamodule is not None else None
        if label_map is None:
            label_map = {k: k for k in range(1, pl_module.hparams.num_classes + 1)}
        self._results.extend(detections_to_coco_results(ids, prediction, label_to_category_id=label_map))

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        import torch.distributed as dist

        results = self._results
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            from detkit.evaluation import gather_and_deduplicate

            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, results)
            results = gather_and_deduplicate(gathered)
        log_dir = trainer.log_dir or trainer.default_root_dir  # a collective call: every rank makes it
        if trainer.is_global_zero:
            path = self.output or os.path.join(log_dir, "predictions.json")
            save_results_json(results, path)
            print(f"wrote {len(results)} detections to {path}")


class DetectionCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` whose `last.ckpt` (with `save_last=True`) always holds the latest weights.

    Lightning 2.6 rewrites `last.ckpt` only together with a new top-k checkpoint, so when the
    monitored metric stops improving (or training stops at `max_steps` without a final
    validation) `last.ckpt` would be stale; and it defers `every_n_train_steps` saves until
    the monitored metric exists, so before the first validation (a whole COCO epoch) nothing
    is saved. So `ModelCheckpoint` keeps only the top-k checkpoints here, and this subclass
    writes `last.ckpt` itself (`write_last`, through `trainer.save_checkpoint`) whenever it is
    behind: at every `every_n_train_steps` save point (before the first validation too), after
    every validation and training epoch, at the end of training and on an exception saved with
    `save_on_exception`. It uses only Lightning's public callback hooks and attributes.
    (`save_last="link"` is left to `ModelCheckpoint`.)

    A monitored COCO AP / AR of -1 (undefined: the annotations have no objects) ranks no
    checkpoint: only `last.ckpt` is written.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        given = inspect.signature(ModelCheckpoint.__init__).bind_partial(self, *args, **kwargs).arguments
        self.every_n_train_steps = int(given.get("every_n_train_steps") or 0)
        self.enable_version_counter = bool(given.get("enable_version_counter", True))
        self.keep_last = self.save_last is True
        if self.keep_last:
            self.save_last = False  # ModelCheckpoint writes no last.ckpt: write_last does
        self._last_written: tuple[int, str] | None = None  # (global step, best checkpoint) of the last write

    def check_monitor_top_k(self, trainer: Trainer, current: Tensor | None = None) -> bool:
        # COCO reports -1 for an undefined metric (no ground truth objects): not a score to rank
        if current is not None and float(current) == -1.0 and str(self.monitor).split("/")[-1].startswith(("AP", "AR")):
            rank_zero_warn(
                f"{self.monitor} is -1 (undefined: the validation annotations have no objects); "
                "no best checkpoint is written, only last.ckpt"
            )
            return False
        return super().check_monitor_top_k(trainer, current)

    def write_last(self, trainer: Trainer) -> str:
        """Write `last.ckpt` (`CHECKPOINT_NAME_LAST`) now; every rank calls it. Returns its path."""
        metrics = {**trainer.callback_metrics}
        metrics.update(epoch=torch.tensor(trainer.current_epoch), step=torch.tensor(trainer.global_step))
        path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
        version = self.STARTING_VERSION
        while self.enable_version_counter and path != self.last_model_path and self.file_exists(path, trainer):
            path = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST, ver=version)  # another run's
            version += 1
        previous, self.last_model_path = self.last_model_path, path  # before saving: part of the saved state
        trainer.save_checkpoint(path, self.save_weights_only)
        self._last_written = (trainer.global_step, self.best_model_path)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        if (
            previous
            and previous != path
            and os.path.dirname(os.path.abspath(previous)) == os.path.abspath(self.dirpath or "")
            and previous != trainer.ckpt_path
        ):  # a last checkpoint named after a metric: keep one
            trainer.strategy.remove_checkpoint(previous)
        return path

    def _refresh_last(self, trainer: Trainer) -> None:
        if (
            not self.keep_last
            or bool(trainer.fast_dev_run)
            or trainer.state.fn != "fit"
            or trainer.sanity_checking
            or self._last_written == (trainer.global_step, self.best_model_path)
        ):
            return
        self.write_last(trainer)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, pl_module, *args, **kwargs)
        if self.every_n_train_steps >= 1 and trainer.global_step % self.every_n_train_steps == 0:
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_end(trainer, pl_module)
        self._refresh_last(trainer)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if getattr(self, "save_on_exception", False):
            self._refresh_last(trainer)
