"""Lightning glue: the training system, data modules, callbacks (evaluation files, curves, checkpoints) and
checkpoint I/O; the commands are in `detkit.cli`.

With `detkit.cli.lightning` (the LightningCLI commands), the only part of detkit that imports Lightning.
"""

from detkit.engine.callbacks import CocoPredictionWriter, DetectionCheckpoint, LossCurveCallback, plot_training_curves
from detkit.engine.checkpoint_io import AtomicCheckpointIO, UnsafeCheckpointError, load_checkpoint
from detkit.engine.datamodule import CocoDataModule, DetectionDataModule, ShapesDataModule, VocDataModule
from detkit.engine.evaluation_writer import Evaluation, EvaluationWriter
from detkit.engine.module import DetectionModule, WarmupSchedule, parameter_groups

__all__ = [
    "AtomicCheckpointIO",
    "CocoDataModule",
    "CocoPredictionWriter",
    "DetectionCheckpoint",
    "DetectionDataModule",
    "DetectionModule",
    "Evaluation",
    "EvaluationWriter",
    "LossCurveCallback",
    "ShapesDataModule",
    "UnsafeCheckpointError",
    "VocDataModule",
    "WarmupSchedule",
    "load_checkpoint",
    "parameter_groups",
    "plot_training_curves",
]
