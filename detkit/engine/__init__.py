"""Lightning glue: the training system, data modules, callbacks (evaluation files, curves, checkpoints) and
the atomic checkpoint I/O plugin; reading checkpoints is `detkit.io`, the commands are in `detkit.cli`.

With `detkit.cli.lightning` (the LightningCLI commands), the only part of detkit that imports Lightning.
"""

from detkit.engine.callbacks import CocoPredictionWriter, DetectionCheckpoint, LossCurveCallback, plot_training_curves
from detkit.engine.checkpoint_io import AtomicCheckpointIO
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
    "VocDataModule",
    "WarmupSchedule",
    "parameter_groups",
    "plot_training_curves",
]
