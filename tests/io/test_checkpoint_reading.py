"""detkit.utils.checkpoint / detkit.io.checkpoint: weights-only loading with errors that say what the file
is, and the detector and label map of a training checkpoint, without Lightning."""

import os
import pickle
import subprocess
import sys

import pytest
import torch

from detkit.io.checkpoint import CheckpointInfo, build_model_from_checkpoint
from detkit.models import build_model
from detkit.structures.label_map import LabelMap
from detkit.utils.checkpoint import STATS_KEY, CheckpointReadError, UnsafeCheckpointError, load_checkpoint


class NotATensor:  # pickled by reference: torch.load(weights_only=True) rejects it
    def __init__(self):
        self.value = 3


def _training_checkpoint(path, model, stats: dict) -> None:
    """What `detkit fit` writes, less Lightning's own entries: the detector under `model.` and detkit's entry."""
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, STATS_KEY: stats}, path)


def test_unsafe_checkpoint_is_refused_with_the_global_it_holds(tmp_path):
    path = tmp_path / "unsafe.ckpt"
    torch.save({"obj": NotATensor()}, path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True.*never falls back") as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "NotATensor" in message and "weights_only=False" in message
    assert "\n" not in message


def test_a_plain_pickle_with_a_custom_class_is_refused_as_unsafe(tmp_path):
    path = tmp_path / "plain.pkl"
    with open(path, "wb") as f:
        pickle.dump({"obj": NotATensor()}, f, protocol=2)  # GLOBAL opcode: torch names the class
    with pytest.raises(UnsafeCheckpointError, match="GLOBAL .*NotATensor"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda real: os.urandom(4096), id="random-bytes"),
        pytest.param(lambda real: real[: len(real) // 2], id="truncated-checkpoint"),
        pytest.param(lambda real: b"epoch: 3\nlr: 0.1\n", id="text"),
        pytest.param(lambda real: pickle.dumps({"a": 1}, protocol=4), id="pickle-without-torch-format"),
        pytest.param(lambda real: b"", id="empty"),
    ],
)
def test_files_that_are_no_torch_checkpoint_get_no_unsafe_advice(tmp_path, content):
    real = tmp_path / "real.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, real)
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content(real.read_bytes()))
    with pytest.raises(CheckpointReadError, match=r"bad\.ckpt: not a torch checkpoint \(") as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert "weights_only" not in message and "trust" not in message and "\n" not in message
    assert not isinstance(info.value, UnsafeCheckpointError)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.ckpt")


def test_build_model_from_checkpoint_returns_the_detector_and_what_the_checkpoint_records(tmp_path):
    torch.manual_seed(0)
    model = build_model("faster_rcnn_tiny", num_classes=3, min_size=96)
    stats = {
        "version": "0.9.0",
        "model_name": "faster_rcnn_tiny",
        "num_classes": 3,
        "model_kwargs": {"min_size": 96, "backbone_weights": "gone.pth"},
        "class_names": ["disk", "square", "triangle"],
        "label_to_category_id": {1: 3, 2: 7, 3: 12},
        "proposals": None,
    }
    _training_checkpoint(tmp_path / "a.ckpt", model, stats)
    loaded, info = build_model_from_checkpoint(tmp_path / "a.ckpt")
    assert info == CheckpointInfo(
        model_name="faster_rcnn_tiny",
        num_classes=3,
        model_kwargs={"min_size": 96},
        class_names=["disk", "square", "triangle"],
        label_map=LabelMap((3, 7, 12), ("disk", "square", "triangle")),
        proposal_settings=None,
        version="0.9.0",
    )
    assert not loaded.training and loaded.transform.min_size == 96
    assert not hasattr(loaded, "label_to_category_id") and not hasattr(loaded, "proposal_settings")
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_checkpoint_without_label_map_and_a_broken_one(tmp_path):
    model = build_model("faster_rcnn_tiny", num_classes=2)
    settings = {"scale": 200, "sigma": 0.8, "min_size": 20, "mode": "fast", "max_proposals": 500}
    _training_checkpoint(tmp_path / "old.ckpt", model, {"model_name": "faster_rcnn_tiny", "num_classes": 2,
                                                        "proposals": settings})  # fmt: skip
    _, info = build_model_from_checkpoint(tmp_path / "old.ckpt")
    assert info.label_map is None and info.class_names is None and info.proposal_settings == settings
    stats = {"model_name": "faster_rcnn_tiny", "num_classes": 2, "label_to_category_id": {1: 5, 3: 6}}
    _training_checkpoint(tmp_path / "broken.ckpt", model, stats)
    with pytest.raises(ValueError, match=r"broken\.ckpt: label_to_category_id does not cover labels 1\.\.2"):
        build_model_from_checkpoint(tmp_path / "broken.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "weights.ckpt")
    with pytest.raises(ValueError, match=r"weights\.ckpt: not a detkit training checkpoint"):
        build_model_from_checkpoint(tmp_path / "weights.ckpt")


def test_reading_a_checkpoint_imports_no_lightning_or_coco_tools(tmp_path):
    model = build_model("faster_rcnn_tiny", num_classes=2)
    _training_checkpoint(tmp_path / "a.ckpt", model, {"model_name": "faster_rcnn_tiny", "num_classes": 2})
    code = (
        "import sys\nfrom detkit.io import build_model_from_checkpoint\n"
        f"model, info = build_model_from_checkpoint({str(tmp_path / 'a.ckpt')!r})\n"
        "print(sorted(m for m in ('lightning', 'pycocotools', 'faster_coco_eval', 'cv2') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


def test_weights_loaders_share_the_messages(tmp_path):
    """`build_model(weights=)` and backbone weights read files through the same loader: random bytes
    are 'not a torch checkpoint', without the advice to unpickle them unsafely."""
    from detkit.backbones import build_backbone

    bad = tmp_path / "random.ckpt"
    bad.write_bytes(os.urandom(4096))
    for load in (
        lambda: build_model("faster_rcnn_tiny", num_classes=3, weights=bad),
        lambda: build_backbone("resnet18", weights=bad),
    ):
        with pytest.raises(CheckpointReadError, match=r"random\.ckpt: not a torch checkpoint") as info:
            load()
        assert "weights_only" not in str(info.value)
