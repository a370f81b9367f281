"""Security: safe checkpoint / YAML loading, no eval of config strings, image paths kept under
their root."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detkit.backbones import build_backbone
from detkit.data import CocoDetection, VocDetection
from detkit.data.coco import resolve_under_root
from detkit.engine.checkpoint_io import AtomicCheckpointIO
from detkit.models import build_model
from detkit.utils.checkpoint import UnsafeCheckpointError, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = [REPO / "detkit", REPO / "scripts"]
CONFIG = REPO / "configs" / "shapes_faster_rcnn_tiny.yaml"


def _python_files():
    files = sorted(p for d in SOURCE_DIRS for p in d.rglob("*.py"))
    assert len(files) > 40, files  # the scan really looks at the package
    return files


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _dotted(func: ast.expr) -> str:
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    # `f(x).eval()` is a method call, not the builtin: mark a non-name root so it cannot match.
    parts.append(func.id if isinstance(func, ast.Name) else "<expr>")
    return ".".join(reversed(parts))


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


# ------------------------------------------------------------------------------ source scans
def test_every_torch_load_passes_weights_only_true():
    found, bad = [], []
    for path in _python_files():
        for call in _calls(path):
            name = _dotted(call.func)
            if name in ("torch.load", "torch.serialization.load", "serialization.load"):
                where = f"{path.relative_to(REPO)}:{call.lineno}"
                found.append(where)
                value = _keyword(call, "weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    bad.append(where)
    assert found, "no torch.load call found: the scan is broken"
    assert not bad, f"torch.load without weights_only=True: {bad}"


def test_no_unsafe_deserialisation_or_eval_in_the_package():
    bad = []
    for path in _python_files():
        for call in _calls(path):
            name = _dotted(call.func)
            where = f"{path.relative_to(REPO)}:{call.lineno}: {name}"
            if name in ("eval", "exec", "builtins.eval", "builtins.exec", "os.system", "os.popen"):
                bad.append(where)
            elif name in ("yaml.unsafe_load", "yaml.full_load", "yaml.unsafe_load_all", "yaml.full_load_all"):
                bad.append(where)
            elif name in ("yaml.load", "yaml.load_all"):
                loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
                if not (
                    loader is not None and _dotted(loader) in ("yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader")
                ):
                    bad.append(where)
            elif name in ("pickle.load", "pickle.loads", "marshal.load", "marshal.loads", "dill.load", "dill.loads"):
                bad.append(where)
            elif name in ("np.load", "numpy.load"):
                allow = _keyword(call, "allow_pickle")
                if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                    bad.append(where)
            elif name.startswith("subprocess.") and isinstance(_keyword(call, "shell"), ast.Constant):
                if _keyword(call, "shell").value:
                    bad.append(where)
    assert not bad, f"unsafe calls: {bad}"


# ------------------------------------------------------------------------------ malicious pickles
class RunsCode:
    """Unpickling this object runs a shell command (what a hostile checkpoint does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path):
    """A checkpoint that creates `marker` when unpickled with weights_only=False."""
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.ckpt"
    model = build_model("faster_rcnn_tiny", num_classes=3)
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"model_name": "faster_rcnn_tiny", "num_classes": 3},
            "detkit": {"model_name": "faster_rcnn_tiny", "num_classes": 3},
            "payload": RunsCode(marker),
        },
        path,
    )
    return path, marker


def test_hostile_checkpoint_payload_is_live(hostile):
    """Control: the payload really runs on an unsafe load (so the refusals below mean something)."""
    path, marker = hostile
    subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({str(path)!r}, weights_only=False)"],
        check=False,
        capture_output=True,
        cwd=path.parent,
    )
    assert marker.exists()


@pytest.mark.parametrize(
    "loader",
    [
        pytest.param(lambda p: build_model("faster_rcnn_tiny", num_classes=3, weights=p), id="build_model"),
        pytest.param(lambda p: build_backbone("simple_convnet", weights=p), id="build_backbone"),
        pytest.param(lambda p: load_checkpoint(p), id="load_checkpoint"),
        pytest.param(lambda p: AtomicCheckpointIO().load_checkpoint(p), id="AtomicCheckpointIO"),
    ],
)
def test_hostile_checkpoint_is_refused(hostile, loader):
    path, marker = hostile
    with pytest.raises((ValueError, UnsafeCheckpointError)) as info:
        loader(path)
    assert "weights_only" in str(info.value) and str(path) in str(info.value)
    assert not marker.exists()


def test_hostile_checkpoint_refused_by_predict_checkpoint_loader(hostile):
    """The loader behind `detkit predict --checkpoint`."""
    from detkit.io.checkpoint import build_model_from_checkpoint

    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        build_model_from_checkpoint(path)
    assert not marker.exists()


def _one_image(folder: Path) -> Path:
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((32, 32, 3), 128, np.uint8))
    return folder


def test_detkit_predict_cli_refuses_hostile_checkpoint(hostile, tmp_path):
    path, marker = hostile
    proc = subprocess.run(
        [sys.executable, "-m", "detkit.cli", "predict", "--checkpoint", str(path), "--input",
         str(_one_image(tmp_path / "in")), "--output", str(tmp_path / "out"), "--device", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "weights_only" in proc.stderr
    assert not marker.exists()
    assert not (tmp_path / "out" / "detections.json").exists()


def test_detkit_predict_cli_reports_an_unsafe_checkpoint_in_one_line(hostile, tmp_path, capsys):
    """Like a missing checkpoint: exit status 2 and one `detkit predict: error:` line, no traceback."""
    from detkit.cli import main

    path, _ = hostile
    args = ["predict", "--checkpoint", str(path), "--input", str(_one_image(tmp_path / "in"))]
    try:
        code = main([*args, "--output", str(tmp_path / "out"), "--device", "cpu"])
    except UnsafeCheckpointError as e:
        pytest.fail(f"UnsafeCheckpointError escaped `detkit predict` as a traceback: {e}")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("detkit predict: error:") and "weights_only" in err[0]


def test_fit_and_validate_refuse_hostile_ckpt_path(hostile, tmp_path, monkeypatch):
    from detkit.cli.lightning import cli_main

    path, marker = hostile
    monkeypatch.chdir(tmp_path)
    for command in ("validate", "fit"):
        with pytest.raises(UnsafeCheckpointError, match="weights_only"):
            cli_main(
                [command, "--config", str(CONFIG), "--data.root", str(tmp_path / "shapes"), "--ckpt_path", str(path)]
            )
        assert not marker.exists()


# ------------------------------------------------------------------------------ configs
def test_yaml_python_tags_in_a_config_are_refused(tmp_path, monkeypatch, capsys):
    from detkit.cli.lightning import cli_main

    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    text = CONFIG.read_text().replace("lr_gamma: 0.1", f'lr_gamma: !!python/object/apply:os.system ["touch {marker}"]')
    assert "python/object" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", str(bad), "--print_config"], run=False)
    assert info.value.code != 0
    assert not marker.exists()


@pytest.mark.parametrize(
    "override",
    [
        ["--data", '{"class_path": "os.system", "init_args": {"command": "touch MARKER"}}'],
        ["--trainer.logger", '{"class_path": "subprocess.Popen", "init_args": {"args": ["touch", "MARKER"]}}'],
        ["--trainer.callbacks+", '{"class_path": "subprocess.Popen", "init_args": {"args": ["touch", "MARKER"]}}'],
    ],
    ids=["data", "logger", "callback"],
)
def test_config_class_paths_outside_the_expected_base_classes_are_refused(override, tmp_path, monkeypatch, capsys):
    """jsonargparse only instantiates subclasses of the declared type (a data module, a logger, a callback)."""
    from detkit.cli.lightning import cli_main

    marker = tmp_path / "pwned"
    monkeypatch.chdir(tmp_path)
    override = [override[0], override[1].replace("MARKER", str(marker))]
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", str(CONFIG), "--data.root", str(tmp_path / "shapes"), *override], run=False)
    assert info.value.code != 0
    assert not marker.exists()


# ------------------------------------------------------------------------------ image paths
@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "images2/secret.png",
        "../images2/secret.png",
        "a/../../x.png",
        "a.png\x00.txt",
    ],
)
def test_resolve_under_root_refuses_escapes(tmp_path, name):
    root = tmp_path / "images"
    root.mkdir()
    if name == "images2/secret.png":  # harmless: stays inside root
        assert resolve_under_root(str(root), name) == str(root / "images2" / "secret.png")
        return
    with pytest.raises(ValueError, match="escapes the image root|invalid file_name"):
        resolve_under_root(str(root), name)
    if "\x00" not in name:
        assert resolve_under_root(str(root), name, allow_outside_root=True) == os.path.normpath(root / name)


def _coco_with_file_names(tmp_path, names):
    root = tmp_path / "images"
    root.mkdir()
    cv2.imwrite(str(root / "ok.png"), np.zeros((8, 8, 3), np.uint8))
    images = [{"id": i + 1, "file_name": n, "width": 8, "height": 8} for i, n in enumerate(["ok.png", *names])]
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    return str(root), str(ann)


def test_coco_refuses_etc_passwd_unless_allowed(tmp_path):
    root, ann = _coco_with_file_names(tmp_path, ["../../../../../../etc/passwd", "/etc/passwd"])
    with pytest.raises(ValueError, match="escapes the image root") as info:
        CocoDetection(root, ann)
    assert ann in str(info.value) and "image id 2" in str(info.value)
    skipped = CocoDetection(root, ann, skip_invalid=True)
    assert skipped.image_ids == [1] and skipped.stats["invalid_images"] == 2
    allowed = CocoDetection(root, ann, allow_outside_root=True)
    assert allowed.image_ids == [1, 2, 3]


def test_voc_image_set_ids_cannot_escape_the_root(tmp_path):
    root = tmp_path / "VOC2007"
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "JPEGImages").mkdir()
    (tmp_path / "secret.xml").write_text("<annotation><size><width>8</width><height>8</height></size></annotation>")
    (root / "ImageSets" / "Main" / "train.txt").write_text("../../secret\n")
    with pytest.raises(ValueError, match="escapes the image root"):
        VocDetection(str(root), "train")
    ds = VocDetection(str(root), "train", skip_invalid=True)
    assert len(ds) == 0
