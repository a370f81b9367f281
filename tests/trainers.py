"""A quiet one-process CPU Trainer for the engine tests (CSV logs under the test's folder)."""

from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger


def cpu_trainer(folder, **overrides) -> Trainer:
    """No checkpoints, progress bar, model summary or sanity validation; logs every step; `overrides` win."""
    args = dict(
        accelerator="cpu",
        devices=1,
        logger=CSVLogger(str(folder), name="t"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    args.update(overrides)
    return Trainer(**args)
