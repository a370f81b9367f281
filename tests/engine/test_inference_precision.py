"""DetectionModule(inference_precision=...): validate and predict detections at that precision, in hparams."""

import pytest
import torch
from trainers import cpu_trainer

from detkit.engine import DetectionModule, ShapesDataModule

FAST = {"rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 20}


def _spy_on_predict(module) -> list:
    """Record the precision of every model.predict call; the real predict still runs."""
    seen = []
    real_predict = module.model.predict

    def predict(images, **kw):
        out = real_predict(images, **kw)
        seen.append((kw.get("precision"), [d["boxes"].dtype for d in out]))
        return out

    module.model.predict = predict
    return seen


def test_validate_and_predict_run_in_the_option_s_precision(tmp_path):
    module = DetectionModule(num_classes=3, model_kwargs=FAST, inference_precision="bf16", num_visualize=0)
    assert module.hparams.inference_precision == "bf16"  # saved in config.yaml / checkpoints with the others
    seen = _spy_on_predict(module)
    data = ShapesDataModule(root=str(tmp_path / "shapes"), num_train=4, num_val=2, batch_size=2, image_size=96)
    trainer = cpu_trainer(tmp_path, limit_val_batches=1, limit_predict_batches=1)
    trainer.validate(module, datamodule=data)
    trainer.predict(module, datamodule=data)
    assert [precision for precision, _ in seen] == ["bf16", "bf16"]
    assert all(dtype == torch.float32 for _, dtypes in seen for dtype in dtypes)


def test_default_is_fp32_and_other_values_are_refused():
    module = DetectionModule(num_classes=3, model_kwargs=FAST)
    assert module.hparams.inference_precision == "fp32"
    seen = _spy_on_predict(module)
    module(torch.rand(1, 3, 64, 64))
    assert seen[0][0] == "fp32"
    with pytest.raises(ValueError, match=r"model.inference_precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        DetectionModule(num_classes=3, inference_precision="fp16")
