"""Every config in configs/ parses and instantiates through the CLI; config errors are clear."""

import glob
import os

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from detkit.engine.checkpoint_io import AtomicCheckpointIO
from detkit.engine.cli import cli_main
from detkit.engine.module import DetectionModule
from detkit.models import list_models

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))


def _local_copy(path, tmp_path):
    """The config with backbone_weights (a file users download) removed and data under tmp_path."""
    with open(path) as f:
        cfg = yaml.safe_load(f)
    kwargs = cfg["model"].get("model_kwargs") or {}
    if "backbone_weights" in kwargs:
        assert kwargs.pop("backbone_weights").startswith("weights/")
    init = cfg["data"]["init_args"]
    if "root" in init:
        init["root"] = str(tmp_path / "shapes")
    out = tmp_path / os.path.basename(path)
    out.write_text(yaml.safe_dump(cfg))
    return str(out)


def test_every_registered_model_has_a_config():
    names = set()
    for path in CONFIGS:
        with open(path) as f:
            names.add(yaml.safe_load(f)["model"]["model_name"])
    missing = set(list_models()) - names
    assert not missing, f"registered models without a config in configs/: {sorted(missing)}"


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_config_instantiates(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", _local_copy(path, tmp_path)], run=False)
    assert isinstance(cli.model, DetectionModule)
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes  # linked from the data
    assert cli.model.model.num_classes == cli.datamodule.num_classes
    assert any(isinstance(p, AtomicCheckpointIO) for p in [cli.trainer.strategy.checkpoint_io])
    ckpt = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(ckpt) == 1 and ckpt[0].monitor == "val/AP" and ckpt[0].mode == "max"
    assert ckpt[0].keep_last  # checkpoint.save_last: true -> DetectionCheckpoint writes last.ckpt itself
    if "1x_coco" in os.path.basename(path):  # the COCO schedules (not custom_coco_example.yaml)
        hp = cli.model.hparams
        assert cli.trainer.max_steps == 90000 and hp.lr_milestones == [60000, 80000] and hp.warmup_steps == 1000
        assert cli.datamodule.val_dataset is None  # COCO files are read in setup(), not here
    assert not (tmp_path / "runs").exists() and not (tmp_path / "shapes").exists()  # nothing written yet


@pytest.fixture
def shapes_config(tmp_path):
    return _local_copy(os.path.join(CONFIG_DIR, "shapes_faster_rcnn_tiny.yaml"), tmp_path)


def test_unknown_key_is_a_clear_error(shapes_config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli_main(["--config", shapes_config, "--model.learning_rate", "0.1"], run=False)
    assert e.value.code != 0
    assert "learning_rate" in capsys.readouterr().err


def test_unknown_key_in_the_yaml_is_a_clear_error(shapes_config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with open(shapes_config) as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["init_args"]["bach_size"] = 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        cli_main(["--config", str(bad)], run=False)
    assert "bach_size" in capsys.readouterr().err


def test_wrong_type_is_a_clear_error(shapes_config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli_main(["--config", shapes_config, "--model.lr", "fast"], run=False)
    err = capsys.readouterr().err
    assert "model.lr" in err and "fast" in err
    with pytest.raises(SystemExit):
        cli_main(["--config", shapes_config, "--model.optimizer", "lbfgs"], run=False)
    assert "lbfgs" in capsys.readouterr().err


def test_num_classes_comes_from_the_data(shapes_config, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        cli_main(["--config", shapes_config, "--model.num_classes", "7"], run=False)
    assert "num_classes" in capsys.readouterr().err


def test_a_packaged_config_by_name_from_an_empty_folder(tmp_path, monkeypatch):
    """`detkit fit --config NAME` outside a checkout: the packaged YAML, data and runs under the cwd."""
    from detkit.cli import _resolve_config_args

    monkeypatch.chdir(tmp_path)
    cli = cli_main(_resolve_config_args(["--config", "shapes_faster_rcnn_tiny"]), run=False)
    assert cli.datamodule.root == "data/shapes" and cli.trainer.logger.save_dir == "runs"
    assert cli.model.model.num_classes == cli.datamodule.num_classes
