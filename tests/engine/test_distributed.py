"""Two CPU processes (gloo): validation results are gathered across ranks and deduplicated."""

import pytest
import torch
from lightning.pytorch import Trainer

from detkit.engine import DetectionModule, ShapesDataModule


@pytest.mark.slow
def test_ddp_validation_matches_single_process(tmp_path, release_process_group):
    torch.manual_seed(0)
    module = DetectionModule(
        num_classes=3, model_kwargs={"rpn_post_nms_top_n_test": 50}, num_visualize=0, compute_val_loss=False
    )
    # 7 images over 2 ranks: the distributed sampler pads rank 1 with a repeated image, which
    # gather_and_deduplicate must drop (otherwise the extra detections would change AP)
    data = dict(root=str(tmp_path / "shapes"), num_train=4, num_val=7, batch_size=2, val_batch_size=2)
    kwargs = dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    (single,) = Trainer(devices=1, **kwargs).validate(module, datamodule=ShapesDataModule(**data))
    ddp_trainer = Trainer(devices=2, strategy="ddp_spawn", callbacks=[release_process_group], **kwargs)
    (ddp,) = ddp_trainer.validate(module, datamodule=ShapesDataModule(**data))
    for name in ("val/AP", "val/AP50", "val/AR100"):
        assert ddp[name] == pytest.approx(single[name], abs=1e-6), name
