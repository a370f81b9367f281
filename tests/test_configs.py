"""Every config in configs/ parses and instantiates through the CLI, the CPU-sized ones train a step;
config errors are clear."""

import glob
import os
from types import SimpleNamespace

import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint

from detkit.cli import main
from detkit.cli.lightning import cli_main
from detkit.engine.checkpoint_io import AtomicCheckpointIO
from detkit.engine.module import DetectionModule
from detkit.models import list_models

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CONFIGS = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))
IDS = [os.path.basename(p) for p in CONFIGS]

# The image sizes each model resizes to (shorter side, longer side at most), as the configs'
# comments and the papers give them; R-CNN warps regions of the image at its own size.
SIZES = {
    "faster_rcnn_r50_fpn": (800, 1333),  # torchvision / Detectron2 COCO recipe
    "faster_rcnn_r18_fpn": (800, 1333),
    "faster_rcnn_mobilenet_v2_fpn": (800, 1333),
    "faster_rcnn_googlenet": (800, 1333),
    "mask_rcnn_r50_fpn": (800, 1333),
    "faster_rcnn_vgg16": (600, 1000),  # Faster R-CNN paper
    "faster_rcnn_alexnet": (600, 1000),
    "fast_rcnn_vgg16": (600, 1000),  # Fast R-CNN paper
    "fast_rcnn_alexnet": (600, 1000),
    "fast_rcnn_r18": (600, 1000),
    "faster_rcnn_tiny": (128, 213),  # the shapes images' size; 128 * 1333 / 800
    "mask_rcnn_tiny": (128, 213),
    "fast_rcnn_tiny": (None, None),
    "rcnn_tiny": (None, None),
    "rcnn_alexnet": (None, None),
    "rcnn_vgg16": (None, None),
}


def _load(path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _local_copy(path, tmp_path):
    """The config with backbone_weights (a file users download) removed, model.weights (a checkpoint users
    train, e.g. with `make train`) replaced by random weights of the model on the 3 shapes classes, and data
    under tmp_path."""
    cfg = _load(path)
    kwargs = cfg["model"].get("model_kwargs") or {}
    if "backbone_weights" in kwargs:
        assert kwargs.pop("backbone_weights").startswith("weights/")
    if cfg["model"].get("weights"):
        import torch

        from detkit.models import build_model

        weights = tmp_path / "pretrained.pth"
        torch.save(build_model(cfg["model"]["model_name"], num_classes=3, **kwargs).state_dict(), weights)
        cfg["model"]["weights"] = str(weights)
    init = cfg["data"]["init_args"]
    if "root" in init:
        init["root"] = str(tmp_path / "shapes")
    out = tmp_path / os.path.basename(path)
    out.write_text(yaml.safe_dump(cfg))
    return str(out)


def test_every_registered_model_has_a_config():
    names = {_load(path)["model"]["model_name"] for path in CONFIGS}
    missing = set(list_models()) - names
    assert not missing, f"registered models without a config in configs/: {sorted(missing)}"


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_print_config_through_the_detkit_command(path, tmp_path, monkeypatch, capsys):
    """`detkit fit --config X --print_config` parses every config (no data, weights or proposal files needed);
    the sizes are the model's, none is set on the data (the data modules refuse sizes other than the model's)."""
    monkeypatch.chdir(tmp_path)  # no data/ or weights/ here
    assert main(["fit", "--config", path, "--print_config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["model_name"] == _load(path)["model"]["model_name"]
    init = printed["data"]["init_args"]
    assert init.get("min_size") is None and init.get("max_size") is None
    assert not os.listdir(tmp_path)  # nothing written


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_instantiates(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(["--config", _local_copy(path, tmp_path)], run=False)
    assert isinstance(cli.model, DetectionModule)
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes  # linked from the data
    assert cli.model.model.num_classes == cli.datamodule.num_classes
    transform = cli.model.model.transform
    name = cli.model.hparams.model_name
    if name in SIZES:  # a config of a model added later (fine-tuning example) keeps its own
        assert (transform.min_size, transform.max_size) == SIZES[name]
    assert any(isinstance(p, AtomicCheckpointIO) for p in [cli.trainer.strategy.checkpoint_io])
    ckpt = [c for c in cli.trainer.callbacks if isinstance(c, ModelCheckpoint)]
    assert len(ckpt) == 1 and ckpt[0].monitor == "val/AP" and ckpt[0].mode == "max"
    assert ckpt[0].keep_last  # checkpoint.save_last: true -> DetectionCheckpoint writes last.ckpt itself
    if "1x_coco" in os.path.basename(path):  # the COCO schedules (not custom_coco_example.yaml)
        hp = cli.model.hparams
        assert cli.trainer.max_steps == 90000 and hp.lr_milestones == [60000, 80000] and hp.warmup_steps == 1000
        assert cli.datamodule.val_dataset is None  # COCO files are read in setup(), not here
    assert not (tmp_path / "runs").exists() and not (tmp_path / "shapes").exists()  # nothing written yet


def test_the_size_error_advice_works_when_followed(tmp_path, monkeypatch):
    """Another image size for a packaged config is `--model.model_kwargs.min_size N` alone; a data size
    that differs from it is refused with advice that, followed, passes the check."""
    monkeypatch.chdir(tmp_path)
    path = _local_copy(os.path.join(CONFIG_DIR, "faster_rcnn_r18_fpn_1x_coco.yaml"), tmp_path)
    smaller = ["--model.model_kwargs.min_size", "512", "--model.model_kwargs.max_size", "853"]

    def setup(*args):
        cli = cli_main(["--config", path, *smaller, *args], run=False)
        dm = cli.datamodule
        dm.trainer = SimpleNamespace(lightning_module=cli.model)  # as fit's setup sees it
        assert (cli.model.model.transform.min_size, cli.model.model.transform.max_size) == (512, 853)
        dm.setup("fit")

    with pytest.raises(FileNotFoundError, match="data/coco"):  # the sizes pass; then no COCO files here
        setup()
    with pytest.raises(ValueError, match="remove data.min_size / data.max_size") as e:
        setup("--data.init_args.min_size", "800", "--data.init_args.max_size", "1333")
    assert "data min_size=800, max_size=1333 differs from the model's min_size=512, max_size=853" in str(e.value)
    with pytest.raises(FileNotFoundError, match="data/coco"):  # same sizes on both sides: accepted
        setup("--data.init_args.min_size", "512", "--data.init_args.max_size", "853")


# -- one training step of every CPU-sized config -----------------------------------------------------

# The tiny models train a step in seconds; R-CNN on AlexNet (227 px warps of every region through AlexNet)
# in ~40 s. Not run: VGG-16 on every region (rcnn_vgg16_shapes) and the COCO / VOC configs need a GPU and
# their data.
CPU_SIZED = [
    pytest.param(p, marks=[pytest.mark.slow] if "rcnn_alexnet" in p else [], id=os.path.basename(p))
    for p in CONFIGS
    if _load(p)["model"]["model_name"].endswith("_tiny") or _load(p)["model"]["model_name"] == "rcnn_alexnet"
]

# one training step (an epoch of one batch) and a validation of one batch
ONE_STEP = {
    "trainer.max_epochs": "1",
    "trainer.limit_train_batches": "1",
    "trainer.limit_val_batches": "1",
    "trainer.log_every_n_steps": "1",
    "trainer.enable_progress_bar": "false",
    "data.init_args.batch_size": "2",
    "data.init_args.num_workers": "0",
    "model.num_visualize": "0",
}


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """A small shapes data set and `detkit proposals` caches of both splits (R-CNN / Fast R-CNN)."""
    from detkit.data import ensure_shapes

    root = tmp_path_factory.mktemp("data") / "shapes"
    ensure_shapes(root, {"train": 4, "val": 2})
    caches = {}
    for split in ("train", "val"):
        caches[split] = str(root / f"proposals_{split}.bin")
        args = ["--annotations", str(root / split / "annotations.json"), "--image-root", str(root / split / "images")]
        args += ["--output", caches[split], "--workers", "1", "--quiet", "--resize-to", "64", "--max-proposals", "200"]
        assert main(["proposals", *args]) == 0
    return root, caches


def _shapes_subset(ann_file, num_classes: int, folder):
    """The shapes COCO json with its first `num_classes` categories (and their objects) only."""
    import json

    with open(ann_file) as f:
        gt = json.load(f)
    gt["categories"] = sorted(gt["categories"], key=lambda c: c["id"])[:num_classes]
    kept = {c["id"] for c in gt["categories"]}
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] in kept]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"annotations_{num_classes}class.json"
    out.write_text(json.dumps(gt))
    return out


def _one_step(path, shapes_data, tmp_path, monkeypatch):
    root, caches = shapes_data
    cfg = _load(path)
    init, data_class = cfg["data"]["init_args"], cfg["data"]["class_path"].rsplit(".", 1)[-1]
    args = ["fit", "--config", _local_copy(path, tmp_path)]
    for key, value in ONE_STEP.items():
        args += [f"--{key}", value]
    if data_class == "ShapesDataModule":
        args += ["--data.init_args.root", str(root), "--data.init_args.num_train", "4", "--data.init_args.num_val", "2"]
    elif data_class == "CocoDataModule" and (init.get("num_classes") or 3) <= 3:  # your data -> shapes' classes
        for split in ("train", "val"):
            ann = _shapes_subset(root / split / "annotations.json", init.get("num_classes") or 3, tmp_path / split)
            args += [f"--data.init_args.{split}_images", str(root / split / "images")]
            args += [f"--data.init_args.{split}_annotations", str(ann)]
    else:
        pytest.skip(f"{data_class} data of {os.path.basename(path)} is not on this machine")
    if init.get("train_proposals"):
        args += ["--data.init_args.train_proposals", caches["train"], "--data.init_args.val_proposals", caches["val"]]
        args += ["--data.init_args.max_proposals", "100"]
    monkeypatch.chdir(tmp_path)
    assert main(args) == 0
    name = cfg["trainer"]["logger"]["init_args"]["name"]
    run = tmp_path / "runs" / name / "version_0"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "eval" / "epoch_000" / "metrics.json").is_file()  # validated after the step


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # Lightning's pytree on this torch
@pytest.mark.parametrize("path", CPU_SIZED)
def test_cpu_sized_config_trains_one_step(path, shapes_data, tmp_path, monkeypatch):
    _one_step(path, shapes_data, tmp_path, monkeypatch)


# -- errors -----------------------------------------------------------------------------------------


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
    cfg = _load(shapes_config)
    cfg["data"]["init_args"]["bach_size"] = 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        cli_main(["--config", str(bad)], run=False)
    assert "bach_size" in capsys.readouterr().err


def test_a_model_kwargs_key_the_model_does_not_use_stops_fit_at_the_start(shapes_config, tmp_path, monkeypatch, capsys):
    """A mask head's keyword on a model without one is named in one line before anything runs."""
    monkeypatch.chdir(tmp_path)
    cfg = _load(shapes_config)
    cfg["model"]["model_kwargs"] = {"min_size": 96, "mask_conv_dims": [8]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "detkit fit: error: model.model_kwargs: model 'faster_rcnn_tiny' takes no keyword "
        "'mask_conv_dims'; its keywords: norm, backbone_weights, anchor_sizes, "
    )
    assert not (tmp_path / "runs").exists()  # stopped before the trainer wrote anything


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
    from detkit.cli.configs import resolve_config_args

    monkeypatch.chdir(tmp_path)
    cli = cli_main(resolve_config_args(["--config", "shapes_faster_rcnn_tiny"]), run=False)
    assert cli.datamodule.root == "data/shapes" and cli.trainer.logger.save_dir == "runs"
    assert cli.model.model.num_classes == cli.datamodule.num_classes
