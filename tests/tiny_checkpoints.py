"""Untrained detkit training checkpoints for the prediction tests (no training: the modules' own save path)."""

from pathlib import Path

import torch

from detkit.engine.module import DetectionModule


def save_tiny_mask_checkpoint(path: Path) -> Path:
    """An untrained `mask_rcnn_tiny` checkpoint of classes cat, dog (seed 0), as Lightning would save it."""
    torch.manual_seed(0)
    module = DetectionModule(model_name="mask_rcnn_tiny", num_classes=2, model_kwargs={"rpn_post_nms_top_n_test": 20})
    module.class_names = ["cat", "dog"]
    checkpoint = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)
    return path
