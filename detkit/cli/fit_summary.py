"""The lines `detkit fit` ends with: the result, where its files are, and the commands to try next."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

__all__ = ["fit_summary"]


def _latest_eval_dir(log_dir: str | None) -> Path | None:
    evals = sorted(Path(log_dir).glob("eval/epoch_*")) if log_dir else []
    return evals[-1] if evals else None


def _quote(path: Any) -> str:
    return shlex.quote(os.path.relpath(os.fspath(path)) if os.path.isabs(os.fspath(path)) else os.fspath(path))


def fit_summary(trainer: Any, datamodule: Any, seconds: float) -> str:
    """What a newcomer acts on after `detkit fit`: the last validation AP, the checkpoint, metrics and
    pictures, and the predict / evaluate / analyze commands on this run's files."""
    minutes, secs = divmod(round(seconds), 60)
    lines = [f"detkit fit: done in {minutes} min {secs} s."]
    metrics = trainer.callback_metrics
    eval_dir = _latest_eval_dir(trainer.log_dir)
    if "val/AP" in metrics:
        ap = f"box AP {float(metrics['val/AP']):.3f}"
        if "val/AP50" in metrics:
            ap += f" (AP50 {float(metrics['val/AP50']):.3f})"
        for key, name in (("val/segm_AP", "mask AP"), ("val/kp_AP", "keypoint AP")):
            if key in metrics:
                ap += f", {name} {float(metrics[key]):.3f}"
        when = f" ({eval_dir.name.replace('_', ' ')})" if eval_dir is not None else ""
        lines.append(f"Last validation{when}: {ap}.")
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "")
    if best:
        lines.append(f"  checkpoint  {_quote(best)}")
    if eval_dir is not None:
        lines.append(f"  metrics     {_quote(eval_dir / 'metrics.json')}")
        loss_curve = Path(trainer.log_dir) / "loss_curve.png"
        lines.append(f"  pictures    {_quote(eval_dir)}/detections_*.png, {_quote(loss_curve)}")
    if not best:
        return "\n".join(lines)
    lines.append("Next:")
    lines.append(f"  detkit predict --checkpoint {_quote(best)} --input YOUR_IMAGES/ --output predictions/")
    ann_file = getattr(datamodule, "val_ann_file", None)
    val_images = getattr(getattr(datamodule, "val_dataset", None), "image_root", None)
    predictions = eval_dir / "predictions.json" if eval_dir is not None else None
    if ann_file and predictions is not None and predictions.is_file():
        lines.append(f"  detkit evaluate --annotations {_quote(ann_file)} --predictions {_quote(predictions)}")
        if val_images:
            lines.append(
                f"  detkit analyze --annotations {_quote(ann_file)} --predictions {_quote(predictions)} "
                f"--images {_quote(val_images)} --checkpoint {_quote(best)} --output report/"
            )
    return "\n".join(lines)
