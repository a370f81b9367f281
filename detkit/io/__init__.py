"""Reading what training wrote, without the training stack: the detector and label map a training
checkpoint describes. Used by `detkit predict --checkpoint`, `detkit export` and the Lightning glue
in `detkit.engine`; imports no Lightning and no COCO tools. The file itself is read by
`detkit.utils.checkpoint.load_checkpoint` (`weights_only=True`).
"""

from detkit.io.checkpoint import CheckpointInfo, build_model_from_checkpoint, checkpoint_info

__all__ = ["CheckpointInfo", "build_model_from_checkpoint", "checkpoint_info"]
