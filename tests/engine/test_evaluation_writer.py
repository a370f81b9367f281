"""EvaluationWriter: the evaluation files and pictures come from the callback, not from the module."""

import json
import os
import sys

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from detkit.engine import DetectionModule, ShapesDataModule
from detkit.engine.evaluation_writer import Evaluation, EvaluationWriter

FAST = {"rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "roi_batch_size_per_image": 32}


class NoWriterModule(DetectionModule):
    def configure_callbacks(self):
        return []


def _validate(tmp_path, module, callbacks=()):
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path), name="t"), callbacks=list(callbacks),
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
    )  # fmt: skip
    data = ShapesDataModule(root=str(tmp_path / "shapes"), num_train=4, num_val=4, batch_size=4, image_size=96)
    (result,) = trainer.validate(module, datamodule=data)
    return trainer, result


def test_module_evaluates_and_the_callback_writes(tmp_path):
    torch.manual_seed(0)
    module = NoWriterModule(num_classes=3, model_kwargs=FAST, num_visualize=2, compute_val_loss=False)
    trainer, result = _validate(tmp_path / "bare", module)
    evaluation = module.last_evaluation
    assert isinstance(evaluation, Evaluation) and evaluation.name == "validate_epoch_000"
    assert evaluation.reports["bbox"].stats["AP"] == pytest.approx(result["val/AP"], abs=1e-6)
    assert not os.path.exists(os.path.join(trainer.log_dir, "eval")) and module.last_eval_dir is None

    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, num_visualize=2, compute_val_loss=False)
    writer = EvaluationWriter()
    trainer, result = _validate(tmp_path / "written", module, [writer])
    assert sum(isinstance(c, EvaluationWriter) for c in trainer.callbacks) == 1  # the module adds no second one
    out = os.path.join(trainer.log_dir, "eval", "validate_epoch_000")
    assert writer.last_dir == module.last_eval_dir == out
    files = sorted(os.listdir(out))
    assert files[:2] == ["detections_1.png", "detections_2.png"] and files[2:] == [
        "metrics.json", "pr_curve_bbox.png", "predictions.json"
    ]  # fmt: skip
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(module.last_evaluation.metrics_payload()))
    assert saved["stage"] == "val" and saved["bbox"]["stats"]["AP"] == pytest.approx(result["val/AP"], abs=1e-6)
    with open(os.path.join(out, "predictions.json")) as f:
        assert json.load(f) == json.loads(json.dumps(module.last_evaluation.results))


def test_analysis_report_of_validate_next_to_the_metrics(tmp_path):
    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, num_visualize=0, compute_val_loss=False,
                             analysis_report=True)  # fmt: skip
    writer = EvaluationWriter()
    trainer, result = _validate(tmp_path, module, [writer])
    out = os.path.join(trainer.log_dir, "eval", "validate_epoch_000")
    assert writer.last_report == os.path.join(out, "report", "index.html") and os.path.isfile(writer.last_report)
    with open(os.path.join(out, "report", "analysis.json")) as f:
        report = json.load(f)
    assert report["dataset"]["images"] == 4  # the images evaluated (limit_val_batches=1, batch of 4)
    if module.last_evaluation.results:
        assert report["errors"]["stats"]["AP"] == pytest.approx(result["val/AP"], abs=1e-6)


def test_analysis_report_is_off_by_default_and_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, num_visualize=0, compute_val_loss=False)
    trainer, _ = _validate(tmp_path / "default", module)
    assert "report" not in os.listdir(os.path.join(trainer.log_dir, "eval", "validate_epoch_000"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    module = DetectionModule(num_classes=3, model_kwargs=FAST, num_visualize=0, compute_val_loss=False,
                             analysis_report=True, save_predictions=False)  # fmt: skip
    trainer, _ = _validate(tmp_path / "no_matplotlib", module, [EvaluationWriter()])
    err = capsys.readouterr().err
    assert (
        "analysis report skipped: matplotlib is not installed (the report needs it): pip install 'detkit-rcnn[eval]'"
        in err
    )
    assert not os.path.exists(os.path.join(trainer.log_dir, "eval", "validate_epoch_000", "report"))


def test_fit_writes_the_report_of_its_last_epoch_only(tmp_path):
    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, num_visualize=0, compute_val_loss=False,
                             analysis_report=True, warmup_steps=0)  # fmt: skip
    writer = EvaluationWriter()
    trainer = Trainer(
        accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path), name="t"), callbacks=[writer], max_epochs=2,
        limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    data = ShapesDataModule(root=str(tmp_path / "shapes"), num_train=4, num_val=4, batch_size=4, image_size=96)
    trainer.fit(module, datamodule=data)
    eval_dir = os.path.join(trainer.log_dir, "eval")
    assert sorted(os.listdir(eval_dir)) == ["epoch_000", "epoch_001"]
    assert not os.path.exists(os.path.join(eval_dir, "epoch_000", "report"))
    assert writer.last_report == os.path.join(eval_dir, "epoch_001", "report", "index.html")
    assert os.path.isfile(writer.last_report)
