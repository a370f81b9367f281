"""`EvaluationWriter`: the files and pictures of each validation / test evaluation.

`DetectionModule` evaluates (COCO / VOC metrics, logged as `val/AP` ...) and leaves what it
found in `module.last_evaluation`; this callback writes it to `<log dir>/eval/<name>/`:

    metrics.json                 stage, epoch, global_step, detections, skipped images, and per
                                 metric type (bbox, segm, voc07 ...) its stats and per-class AP
    predictions.json             the COCO results of the evaluation (module's save_predictions)
    pr_curve_<iou type>.png      precision-recall curves per class (COCO metrics)
    detections_<image id>.png    the first `num_visualize` images with their detections drawn
                                 (scoring at least `visualize_score_threshold`)
    report/index.html            with `analysis_report`: the `detkit analyze` report (and its
                                 analysis.json) of the last evaluation only: of `validate` / `test`,
                                 and of the last epoch when `fit` ends (boxes; needs matplotlib)

`<name>` is `epoch_NNN` while fitting and `validate_epoch_NNN` / `test_epoch_NNN` when a
checkpoint is evaluated. The settings are the module's hyper-parameters, so configs keep
`model.num_visualize`. `DetectionModule.configure_callbacks` adds a writer to every Trainer
that has none.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from detkit.evaluation.results import save_results_json

__all__ = ["Evaluation", "EvaluationWriter"]


@dataclass
class Evaluation:
    """One finished evaluation (on the global-zero rank, all ranks' detections gathered)."""

    stage: str  # "val" or "test"
    epoch: int  # the epoch evaluated: the current one while fitting, else the checkpoint's
    global_step: int
    fitting: bool
    results: list[dict[str, Any]]  # COCO results (the data set's category ids)
    reports: dict[str, Any]  # "bbox" / "segm": EvalResult, "voc07" / "voc2010": VOCResult
    skipped_images: int = 0  # unreadable images of the split that never reached the model
    class_names: list[str] | None = None
    ann_file: str | None = None  # the ground truth evaluated against (COCO json)
    image_root: str | None = None  # its image folder (None when the data set has none)
    image_ids: list[int] = field(default_factory=list)  # the images evaluated

    @property
    def name(self) -> str:
        """Folder name: `epoch_NNN` while fitting, `validate_epoch_NNN` / `test_epoch_NNN` otherwise."""
        name = f"epoch_{self.epoch:03d}"
        return name if self.fitting else f"{'validate' if self.stage == 'val' else self.stage}_{name}"

    def metrics_payload(self) -> dict[str, Any]:
        payload = {
            "stage": self.stage,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "num_detections": len(self.results),
            "skipped_images": self.skipped_images,
        }
        payload.update({kind: report.to_dict() for kind, report in self.reports.items()})
        return payload


class EvaluationWriter(Callback):
    """Writes each evaluation of a `DetectionModule` (see the module docstring for the files).

    Attributes:
        last_dir: the folder of the latest evaluation written (None before the first).
    """

    def __init__(self) -> None:
        self.last_dir: str | None = None
        self.last_report: str | None = None  # index.html of the latest analysis report (None before one)
        self._visuals: list[tuple[int, Any, dict[str, Any]]] = []  # (image id, image, detections) on the CPU
        self._fit_evaluation: tuple[Evaluation, str] | None = None  # the latest evaluation of a fit, its folder

    # ------------------------------------------------------------------ pictures: the first images
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._visuals = []

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._visuals = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep_pictures(trainer, pl_module, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._keep_pictures(trainer, pl_module, outputs, batch)

    def _keep_pictures(self, trainer: Trainer, pl_module: LightningModule, detections: Any, batch: Any) -> None:
        """Keep the batch's images and detections (`outputs` of the step, one dict per image) until
        `num_visualize` images are kept."""
        if not detections or not trainer.is_global_zero or trainer.sanity_checking:
            return
        limit = int(pl_module.hparams.get("num_visualize", 0))
        threshold = float(pl_module.hparams.get("visualize_score_threshold", 0.5))
        images, targets = batch
        for image, det, target in zip(images, detections, targets):
            if len(self._visuals) >= limit:
                break
            keep = det["scores"] >= threshold
            shown = {k: v[keep].detach().cpu() for k, v in det.items()}
            self._visuals.append((int(target["image_id"]), image.detach().cpu(), shown))

    # ------------------------------------------------------------------ files
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module)

    def _write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        root = trainer.log_dir or trainer.default_root_dir  # on every rank: a collective (a broadcast) under DDP
        evaluation: Evaluation | None = getattr(pl_module, "last_evaluation", None)
        if not trainer.is_global_zero or evaluation is None:
            return
        out = os.path.join(root, "eval", evaluation.name)
        os.makedirs(out, exist_ok=True)
        save_results_json(evaluation.metrics_payload(), os.path.join(out, "metrics.json"))
        if pl_module.hparams.get("save_predictions", True):
            save_results_json(evaluation.results, os.path.join(out, "predictions.json"))
        reports = evaluation.reports.items()
        curves = [(kind, r) for kind, r in reports if getattr(r, "precision", None) is not None]
        if curves or self._visuals:
            from detkit.evaluation.pr_curve import plot_pr_curves
            from detkit.visualize import draw_detections, save_png

            for kind, r in curves:
                if r.precision.size and r.precision.ndim == 5:  # COCO reports
                    plot_pr_curves(r.precision, r.category_names, os.path.join(out, f"pr_curve_{kind}.png"))
            val_dataset = getattr(getattr(trainer, "datamodule", None), "val_dataset", None)
            skeleton = getattr(val_dataset, "skeleton", None)  # keypoint data: the lines between points
            for image_id, image, det in self._visuals:
                drawn = draw_detections(
                    image, det["boxes"], det["labels"], det["scores"], det.get("masks"),
                    class_names=evaluation.class_names, keypoints=det.get("keypoints"), skeleton=skeleton,
                )  # fmt: skip
                save_png(os.path.join(out, f"detections_{image_id}.png"), drawn)
        self._visuals = []
        self.last_dir = out
        if pl_module.hparams.get("analysis_report", False):
            if evaluation.fitting:  # written once, for the last epoch, when the fit ends
                self._fit_evaluation = (evaluation, out)
            else:
                self._write_report(evaluation, out)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_evaluation = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._fit_evaluation is not None:
            self._write_report(*self._fit_evaluation)
            self._fit_evaluation = None

    def _write_report(self, evaluation: Evaluation, out: str) -> None:
        """`out/report/`: `detkit analyze` of the evaluation's box results on the images it evaluated.
        Skipped with one line without matplotlib or ground truth; a failure is one line, not an error."""
        try:
            import matplotlib  # noqa: F401  (the report's charts)
        except ImportError:
            from detkit.utils.optional import missing_message

            print(f"analysis report skipped: {missing_message('matplotlib', 'eval', 'the report')}", file=sys.stderr)
            return
        if evaluation.ann_file is None:
            print("analysis report skipped: the evaluation has no ground-truth file", file=sys.stderr)
            return
        from detkit.analysis.analyze import analyze
        from detkit.evaluation.inputs import read_json

        report_dir = os.path.join(out, "report")
        try:
            dataset = read_json(evaluation.ann_file, "annotations")
            evaluated = set(evaluation.image_ids)
            if evaluated:  # a partial pass (limit_val_batches): the report covers the images the model saw
                images = [i for i in dataset["images"] if i["id"] in evaluated]
                annotations = [a for a in dataset.get("annotations", []) if a["image_id"] in evaluated]
                dataset = {**dataset, "images": images, "annotations": annotations}
            boxes = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in evaluation.results]
            root = evaluation.image_root if evaluation.image_root and os.path.isdir(evaluation.image_root) else None
            analyze(dataset, boxes, report_dir, images_dir=root, title=f"detkit {evaluation.name}")
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"analysis report skipped: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return
        self.last_report = os.path.join(report_dir, "index.html")
