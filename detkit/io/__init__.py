"""Reading what training wrote, without the training stack: checkpoints (`weights_only=True`) and the
detector and label map a training checkpoint describes. Used by `detkit predict --checkpoint`,
`detkit export` and the Lightning glue in `detkit.engine`; imports no Lightning and no COCO tools.
"""

from detkit.io.checkpoint import (
    STATS_KEY,
    CheckpointInfo,
    CheckpointReadError,
    UnsafeCheckpointError,
    build_model_from_checkpoint,
    checkpoint_info,
    load_checkpoint,
)

__all__ = [
    "STATS_KEY",
    "CheckpointInfo",
    "CheckpointReadError",
    "UnsafeCheckpointError",
    "build_model_from_checkpoint",
    "checkpoint_info",
    "load_checkpoint",
]
