"""The checkpoint's label map meets the data's categories at validate, test, predict and resume (and the CLI).

Tiny checkpoints: faster_rcnn_tiny after 2 training steps on 6 shapes images written as COCO files
with the categories renamed / renumbered. The AP values need not be high: a remapped run is compared
with the run on the original numbering.
"""

import json
import logging
import os

import pytest
import torch
import yaml
from trainers import cpu_trainer

from detkit.cli import main
from detkit.data import ensure_shapes
from detkit.engine.callbacks import CocoPredictionWriter
from detkit.engine.datamodule import CocoDataModule
from detkit.engine.module import DetectionModule
from detkit.structures.label_map import LabelMapMismatchError

FAST = {"rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "roi_batch_size_per_image": 32}
SHAPES = {1: (1, "circle"), 2: (2, "rectangle"), 3: (3, "triangle")}  # shapes id -> (id, name) as written
TRAINED = {1: (3, "disk"), 2: (7, "square"), 3: (12, "triangle")}
STAR = {1: (3, "disk"), 2: (7, "square"), 3: (2, "star")}  # 12: triangle became 2: star
RING = {1: (5, "ring"), 2: (2, "rectangle"), 3: (3, "triangle")}  # 1: circle became 5: ring
SHUFFLED = {1: (3, "circle"), 2: (1, "rectangle"), 3: (2, "triangle")}  # same names, other ids (and label order)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    ensure_shapes(root, {"val": 6}, 128, 0)
    return root / "val"


def _annotations(shapes, folder, categories) -> str:
    """The shapes annotations with category `k` written as `categories[k]` = (id, name); the objects of
    categories left out are dropped."""
    with open(shapes / "annotations.json") as f:
        data = json.load(f)
    data["categories"] = [{"id": cid, "name": name} for cid, name in categories.values()]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] in categories]
    for ann in data["annotations"]:
        ann["category_id"] = categories[ann["category_id"]][0]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("_".join(f"{c}{n}" for c, n in categories.values()) + ".json")
    path.write_text(json.dumps(data))
    return str(path)


def _data(shapes, ann) -> CocoDataModule:
    images = str(shapes / "images")
    return CocoDataModule(
        images, ann, images, ann, batch_size=3, num_workers=0, aspect_ratio_grouping=False, hflip_prob=0.0
    )


def _module() -> DetectionModule:
    return DetectionModule(num_classes=3, model_kwargs=FAST, lr=0.01, warmup_steps=0, num_visualize=0)


def _train(shapes, folder, categories) -> str:
    torch.manual_seed(0)
    module = _module()
    trainer = cpu_trainer(folder, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=_data(shapes, _annotations(shapes, folder, categories)))
    path = folder / "trained.ckpt"
    trainer.save_checkpoint(path)
    return str(path)


@pytest.fixture(scope="module")
def trained(shapes, tmp_path_factory):
    """A checkpoint trained on the categories {3: disk, 7: square, 12: triangle}."""
    return _train(shapes, tmp_path_factory.mktemp("trained"), TRAINED)


@pytest.fixture(scope="module")
def shapes_ckpt(shapes, tmp_path_factory):
    """A checkpoint trained on the shapes categories {1: circle, 2: rectangle, 3: triangle}."""
    return _train(shapes, tmp_path_factory.mktemp("shapes_ckpt"), SHAPES)


def test_the_checkpoint_records_the_training_data_label_map(trained):
    info = torch.load(trained, weights_only=True)["detkit"]
    assert info["class_names"] == ["disk", "square", "triangle"]
    assert info["label_to_category_id"] == {1: 3, 2: 7, 3: 12}


@pytest.mark.parametrize("fn", ["validate", "test", "predict", "fit"])
def test_other_categories_are_refused_at_every_joint(fn, trained, shapes, tmp_path):
    ann = _annotations(shapes, tmp_path, STAR)
    trainer = cpu_trainer(tmp_path, max_steps=3, limit_val_batches=0)
    with pytest.raises(LabelMapMismatchError) as e:
        getattr(trainer, fn)(_module(), datamodule=_data(shapes, ann), ckpt_path=trained)
    text = str(e.value)
    assert "\n" not in text and "--model.weights" in text
    assert "{3: disk, 7: square, 12: triangle}" in text
    assert f"{ann}'s categories {{2: star, 3: disk, 7: square}}" in text


def test_a_renamed_shapes_category_is_refused(shapes_ckpt, shapes, tmp_path):
    ann = _annotations(shapes, tmp_path, RING)
    with pytest.raises(LabelMapMismatchError, match=r"\{1: circle, 2: rectangle, 3: triangle\} .*"
                       r"\{2: rectangle, 3: triangle, 5: ring\}"):  # fmt: skip
        cpu_trainer(tmp_path).validate(_module(), datamodule=_data(shapes, ann), ckpt_path=shapes_ckpt)


def _validate(shapes_ckpt, shapes, tmp_path, categories):
    module = _module()
    torch.manual_seed(0)  # the same sampled RoIs for the validation losses
    (metrics,) = cpu_trainer(tmp_path).validate(
        module, datamodule=_data(shapes, _annotations(shapes, tmp_path, categories)), ckpt_path=shapes_ckpt
    )
    return metrics, module.last_evaluation.results


def test_same_names_with_other_ids_are_mapped_by_name(shapes_ckpt, shapes, tmp_path, caplog):
    original, original_results = _validate(shapes_ckpt, shapes, tmp_path / "a", SHAPES)
    with caplog.at_level(logging.WARNING, logger="detkit.engine.module"):
        shuffled, shuffled_results = _validate(shapes_ckpt, shapes, tmp_path / "b", SHUFFLED)
    (note,) = [r.getMessage() for r in caplog.records if "mapped by name" in r.getMessage()]
    assert "{1: circle, 2: rectangle, 3: triangle}" in note and "{1: rectangle, 2: triangle, 3: circle}" in note
    assert len(original_results) > 0
    new_id = {old: new for old, (new, _) in SHUFFLED.items()}  # circle 1 -> 3, rectangle 2 -> 1, triangle 3 -> 2
    expected = [{**r, "category_id": new_id[r["category_id"]]} for r in original_results]
    assert shuffled_results == expected
    assert shuffled["val/AP"] == pytest.approx(original["val/AP"], abs=1e-9)
    assert shuffled["val/AP50"] == pytest.approx(original["val/AP50"], abs=1e-9)
    # the validation losses see the targets in the checkpoint's label order
    assert shuffled["val/loss_classifier"] == pytest.approx(original["val/loss_classifier"], rel=1e-6)


def test_lightning_predict_writes_the_data_ids_of_each_name(shapes_ckpt, shapes, tmp_path):
    written = {}
    for name, categories in (("original", SHAPES), ("shuffled", SHUFFLED)):
        out = tmp_path / f"{name}.json"
        trainer = cpu_trainer(tmp_path / name, callbacks=[CocoPredictionWriter(str(out))])
        datamodule = _data(shapes, _annotations(shapes, tmp_path, categories))
        trainer.predict(_module(), datamodule=datamodule, ckpt_path=shapes_ckpt, return_predictions=False)
        with open(out) as f:
            written[name] = json.load(f)
    new_id = {old: new for old, (new, _) in SHUFFLED.items()}
    assert len(written["original"]) > 0
    assert written["shuffled"] == [{**r, "category_id": new_id[r["category_id"]]} for r in written["original"]]


def test_resuming_on_renumbered_data_keeps_the_checkpoint_map_and_trains_the_same(shapes_ckpt, shapes, tmp_path):
    state = {}
    for name, categories in (("original", SHAPES), ("shuffled", SHUFFLED)):
        torch.manual_seed(1)
        module = _module()
        trainer = cpu_trainer(tmp_path / name, max_steps=3, limit_val_batches=0)  # one step after the checkpoint's 2
        trainer.fit(module, datamodule=_data(shapes, _annotations(shapes, tmp_path, categories)), ckpt_path=shapes_ckpt)
        trainer.save_checkpoint(tmp_path / f"{name}.ckpt")
        state[name] = module.model.state_dict()
    resumed = torch.load(tmp_path / "shuffled.ckpt", weights_only=True)
    assert resumed["detkit"]["class_names"] == ["circle", "rectangle", "triangle"]  # not the data's order
    assert resumed["detkit"]["label_to_category_id"] == {1: 1, 2: 2, 3: 3}
    assert resumed["hyper_parameters"]["class_names"] == ["circle", "rectangle", "triangle"]
    for key, value in state["original"].items():  # the training targets were put in the checkpoint's order
        torch.testing.assert_close(state["shuffled"][key], value, msg=key)


def test_class_names_must_match_num_classes():
    with pytest.raises(ValueError, match="model.class_names has 2 names but num_classes is 3"):
        DetectionModule(num_classes=3, class_names=["a", "b"])


def _coco_config(tmp_path, shapes, ann) -> str:
    images = str(shapes / "images")
    config = {
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 2,  # above the checkpoints' epoch (1), so that resuming them gets to the label maps
            "limit_train_batches": 1,
            "limit_val_batches": 1,
            "log_every_n_steps": 1,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "joint"},
            },
        },
        "model": {"model_name": "faster_rcnn_tiny", "model_kwargs": FAST, "warmup_steps": 0, "num_visualize": 0},
        "data": {
            "class_path": "detkit.engine.datamodule.CocoDataModule",
            "init_args": dict(
                train_images=images,
                train_annotations=ann,
                val_images=images,
                val_annotations=ann,
                batch_size=3,
                num_workers=0,
                aspect_ratio_grouping=False,
            ),  # fmt: skip
        },
    }
    path = tmp_path / f"{os.path.basename(ann)}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_cli_refuses_other_categories_in_one_line(trained, shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = _coco_config(tmp_path, shapes, _annotations(shapes, tmp_path, STAR))
    for command in ("validate", "fit"):
        assert main([command, "--config", config, "--ckpt_path", trained]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"detkit {command}: error: the checkpoint's classes {{3: disk, 7: square, 12: "), err
        assert not any("Traceback" in line for line in err)


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # Lightning, validating a checkpoint of another run
def test_fine_tuning_follows_the_ckpt_path_advice(shapes_ckpt, shapes, tmp_path, monkeypatch, capsys, caplog):
    """2 classes (circle, triangle) from the 3-class shapes checkpoint: --ckpt_path is refused and points at
    --model.weights, which fine-tunes (the shared classes' rows carried over); the fine-tuned checkpoint then
    validates without its starting weights."""
    from detkit.cli.lightning import cli_main

    monkeypatch.chdir(tmp_path)
    ann = _annotations(shapes, tmp_path, {1: (1, "circle"), 3: (3, "triangle")})
    config = _coco_config(tmp_path, shapes, ann)

    assert main(["fit", "--config", config, "--ckpt_path", shapes_ckpt]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "does not fit" in err and "--model.weights" in err

    start = tmp_path / "start.ckpt"
    start.write_bytes(open(shapes_ckpt, "rb").read())
    with caplog.at_level(logging.WARNING):
        cli = cli_main(["--config", config, "--model.weights", str(start)], run=False)
    assert cli.model.hparams.class_names == ["circle", "triangle"]
    source = torch.load(shapes_ckpt, weights_only=True)["state_dict"]
    tuned = cli.model.state_dict()
    key = "model.roi_heads.box_predictor.cls_score.weight"
    assert tuned[key].shape[0] == 3  # background, circle, triangle
    torch.testing.assert_close(tuned[key][[0, 1, 2]], source[key][[0, 1, 3]])  # rows of the shared names

    with caplog.at_level(logging.WARNING):
        assert main(["fit", "--config", config, "--model.weights", str(start)]) == 0
    capsys.readouterr()
    (fine_tuned,) = sorted((tmp_path / "runs" / "joint").glob("version_*/checkpoints/last.ckpt"))
    info = torch.load(fine_tuned, weights_only=True)["detkit"]
    assert info["class_names"] == ["circle", "triangle"] and info["label_to_category_id"] == {1: 1, 2: 3}
    start.unlink()  # the checkpoint's own weights replace the ones it started from
    assert main(["validate", "--config", config, "--ckpt_path", str(fine_tuned)]) == 0
    # the Python API too: load_from_checkpoint rebuilds the fine-tuned model without the starting file
    from detkit.engine import DetectionModule

    restored = DetectionModule.load_from_checkpoint(fine_tuned, map_location="cpu")
    assert "weights" not in restored.hparams and restored.initial_weights == str(start)
    torch.testing.assert_close(restored.state_dict()[key], torch.load(fine_tuned, weights_only=True)["state_dict"][key])
