"""Packaging: the lean core, start-up imports, extras messages, packaged configs, the wheel.

Each check runs in a subprocess so that what it imports (or blocks) cannot leak between
tests. The wheel test (slow) installs the built wheel into a fresh virtual environment.
"""

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

import detkit
from detkit.cli import config_dir, list_configs, main, resolve_config
from detkit.cli.configs import resolve_config_args
from detkit.utils.optional import _DISTRIBUTIONS, DISTRIBUTION, EXTRAS

ROOT = Path(__file__).resolve().parent.parent
# What the core does not install: every optional module (the table is checked against setup.cfg below).
OPTIONAL = list(_DISTRIBUTIONS)
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]  # as the Makefile: these install from local disk


def _python(code: str, *, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def _block(modules) -> str:
    return f"import sys\nfor _m in {list(modules)!r}:\n    sys.modules[_m] = None  # import fails\n"


LEAN_CORE = """
import torch
import detkit, detkit.backbones, detkit.layers, detkit.losses, detkit.matching, detkit.heads, detkit.models
import detkit.proposals, detkit.structures
from detkit.backbones import build_backbone
from detkit.models import build_model

torch.manual_seed(0)
backbone = build_backbone("resnet18").eval()
with torch.no_grad():
    feats = backbone(torch.rand(1, 3, 64, 96))
specs = backbone.feature_specs()
assert {k: tuple(v.shape) for k, v in feats.items()} == {
    k: (1, s.channels, 64 // s.stride, 96 // s.stride) for k, s in specs.items()}, feats.keys()
for name in ("faster_rcnn_tiny", "mask_rcnn_tiny"):
    model = build_model(name, num_classes=3)
    losses = model([torch.rand(3, 96, 128)], [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]),
                    "labels": torch.tensor([1]), "masks": torch.ones(1, 96, 128, dtype=torch.uint8)}])
    assert all(torch.isfinite(v) for v in losses.values()), losses
    with torch.no_grad():
        det = model.eval().predict([torch.rand(3, 96, 128)])[0]
    assert det["boxes"].shape[1] == 4 and len(det["scores"]) == len(det["labels"]) == len(det["boxes"])
    assert ("masks" in det) == (name == "mask_rcnn_tiny")
print("LEAN OK")
"""


def test_core_works_without_optional_dependencies():
    """`pip install detkit-rcnn` (no extra) gives backbones, layers, losses and detectors that train and predict."""
    out = _python(_block(OPTIONAL) + LEAN_CORE)
    assert out.returncode == 0 and "LEAN OK" in out.stdout, out.stderr[-3000:]


def _tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    gt = {
        "images": [{"id": 1, "width": 64, "height": 48}, {"id": 2, "width": 64, "height": 48}],
        "categories": [{"id": 7, "name": "thing"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 7, "bbox": [30, 20, 16, 16], "area": 256, "iscrowd": 0},
        ],
    }
    dt = [
        {"image_id": 1, "category_id": 7, "bbox": [4, 4, 20, 10], "score": 0.9},
        {"image_id": 2, "category_id": 7, "bbox": [0, 0, 10, 10], "score": 0.8},
    ]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    return tmp_path / "gt.json", tmp_path / "dt.json"


def test_help_and_evaluate_start_without_torch_or_lightning(tmp_path):
    gt, dt = _tiny_coco(tmp_path)
    out = _python(f"""
        import io, contextlib, json, sys
        from detkit.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            help_rc = main(["--help"])
        help_mods = sorted(m for m in ("torch", "torchvision", "lightning") if m in sys.modules)
        rc = main(["evaluate", "--annotations", {str(gt)!r}, "--predictions", {str(dt)!r},
                   "--output", {str(tmp_path / "m.json")!r}])
        mods = sorted(m for m in ("torch", "torchvision", "lightning") if m in sys.modules)
        print(json.dumps({{"help_rc": help_rc, "help_mods": help_mods, "rc": rc, "mods": mods}}))
    """)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"help_rc": 0, "help_mods": [], "rc": 0, "mods": []}, report
    stats = json.loads((tmp_path / "m.json").read_text())["stats"]
    assert stats["AP50"] == pytest.approx(51 / 101, abs=1e-9)  # one of two objects: precision 1 up to recall 0.5


def test_python_m_detkit_is_the_detkit_command(tmp_path):
    run = subprocess.run([sys.executable, "-m", "detkit", "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == f"detkit {detkit.__version__}"
    run = subprocess.run([sys.executable, "-m", "detkit", "configs"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0 and "shapes_faster_rcnn_tiny" in run.stdout
    run = subprocess.run([sys.executable, "-m", "detkit", "nonsense"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2 and "unknown command" in run.stderr


def test_distribution_name_is_detkit_rcnn():
    """`detkit` on PyPI is an unrelated project: setup.cfg names the distribution detkit-rcnn, and the
    missing-extra messages tell to install that name (the import name stays detkit)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["name"] == DISTRIBUTION == "detkit-rcnn"
    assert cfg["options.entry_points"]["console_scripts"].strip() == "detkit = detkit.cli:main"
    from detkit.utils.optional import missing_message

    assert missing_message("lightning", "train") == "lightning is not installed: pip install 'detkit-rcnn[train]'"
    plugin = (ROOT / "examples" / "detkit_backbone_plugin" / "pyproject.toml").read_text()
    assert re.search(r'^dependencies = \["detkit-rcnn", ', plugin, flags=re.M)  # not PyPI's unrelated detkit


def test_changelog_has_the_version():
    """CHANGELOG.md starts with the section of the current version."""
    sections = re.findall(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.M)
    assert sections[0] == detkit.__version__ and len(set(sections)) == len(sections), sections


def test_version_has_one_source():
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", detkit.__version__)
    cfg = (ROOT / "setup.cfg").read_text()
    assert re.search(r"^version = attr: detkit\.__version__$", cfg, flags=re.M)
    assert not re.search(r"^__version__|version\s*=\s*['\"]\d", cfg, flags=re.M)


# What `pip install detkit-rcnn[export]` does not install: what deployment must do without.
TRAINING_STACK = ("lightning", "pycocotools", "faster_coco_eval", "cv2")


def _meta_path_block(modules) -> str:
    """Code that makes every import of `modules` (and their submodules) fail, as when not installed."""
    return textwrap.dedent(f"""
        import importlib.abc, sys

        class _NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {sorted(modules)!r}:
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, _NotInstalled())
    """)


def _tiny_training_checkpoint(path: Path) -> None:
    """A faster_rcnn_tiny checkpoint as `detkit fit` writes it (without Lightning's own entries)."""
    import torch

    from detkit.models import build_model
    from detkit.utils.checkpoint import STATS_KEY

    torch.manual_seed(0)
    model = build_model("faster_rcnn_tiny", num_classes=2)
    stats = {
        "model_name": "faster_rcnn_tiny",
        "num_classes": 2,
        "model_kwargs": {},
        "class_names": ["disk", "square"],
        "label_to_category_id": {1: 4, 2: 9},
    }
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, STATS_KEY: stats}, path)


# export a checkpoint, then predict two PNGs with the ONNX file; prints what it found
DEPLOYMENT = """
import json, os, sys
import torch
from torchvision.io import write_png
from detkit.cli import main

folder = os.path.join(WORK, "images")
os.makedirs(folder, exist_ok=True)
g = torch.Generator().manual_seed(0)
for name, (h, w) in (("a.png", (96, 128)), ("b.png", (120, 80))):
    write_png((torch.rand(3, h, w, generator=g) * 255).to(torch.uint8), os.path.join(folder, name))
onnx_path = os.path.join(WORK, "model.onnx")
export_rc = main(["export", "--checkpoint", CHECKPOINT, "--output", onnx_path])
out = os.path.join(WORK, "out")
predict_rc = main(["predict", "--onnx", onnx_path, "--input", folder, "--output", out])
meta = json.load(open(os.path.join(out, "images.json"))) if predict_rc == 0 else {}
print(json.dumps({"export": export_rc, "predict": predict_rc, "images": [i["file_name"] for i in meta["images"]],
                  "categories": meta["categories"]} if meta else {"export": export_rc, "predict": predict_rc}))
"""


def _deployment_report(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


DEPLOYED = {
    "export": 0,
    "predict": 0,
    "images": ["a.png", "b.png"],
    "categories": [{"id": 4, "name": "disk"}, {"id": 9, "name": "square"}],
}


@pytest.mark.slow  # the export traces the detector: ~40 s of CPU
def test_export_and_predict_onnx_run_without_the_training_stack(tmp_path):
    """`detkit export --checkpoint` and `detkit predict --onnx` with lightning, the COCO tools and OpenCV
    not importable (what `pip install detkit-rcnn[export]` gives)."""
    pytest.importorskip("onnxruntime")
    _tiny_training_checkpoint(tmp_path / "tiny.ckpt")
    setup = f"WORK = {str(tmp_path)!r}\nCHECKPOINT = {str(tmp_path / 'tiny.ckpt')!r}\n"
    out = _python(_meta_path_block(TRAINING_STACK) + setup + DEPLOYMENT, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert _deployment_report(out.stdout) == DEPLOYED, out.stderr[-3000:]
    detections = json.loads((tmp_path / "out" / "detections.json").read_text())
    assert {r["image_id"] for r in detections} <= {1, 2} and {r["category_id"] for r in detections} <= {4, 9}


@pytest.mark.parametrize(
    "command, blocked, extra",
    [
        (["fit", "--config", "shapes_faster_rcnn_tiny"], ["lightning"], "train"),
        (["evaluate", "--annotations", "GT", "--predictions", "DT"], ["pycocotools", "faster_coco_eval"], "eval"),
        (["proposals", "--annotations", "A", "--image-root", ".", "--output", "C"], ["cv2"], "proposals"),
        (["evaluate", "--annotations", "GT", "--predictions", "DT", "--pr-curve", "pr.png"], ["cv2"], "proposals"),
    ],
    ids=["fit", "evaluate", "proposals", "evaluate-pr-curve"],
)
def test_missing_extra_is_one_line_naming_it(command, blocked, extra, tmp_path):
    gt, dt = _tiny_coco(tmp_path)
    command = [str(gt) if a == "GT" else str(dt) if a == "DT" else a for a in command]
    out = _python(_block(blocked) + f"from detkit.cli import main\nsys.exit(main({command!r}))", cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith(f"detkit {command[0]}: error: ") and f"pip install 'detkit-rcnn[{extra}]'" in lines[0]


def test_extras_table_matches_setup_cfg():
    """detkit.utils.optional names the extras that setup.cfg declares for each optional module."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    extras = {
        name: {re.split(r"[<>=!~\[ ;]", line.strip())[0].lower() for line in value.splitlines() if line.strip()}
        for name, value in cfg["options.extras_require"].items()
    }
    assert extras["all"] == {DISTRIBUTION} and set(EXTRAS.values()) <= set(extras)
    for module, (dist, declared) in _DISTRIBUTIONS.items():
        name = dist.split("[")[0].lower()
        assert set(declared) == {e for e, dists in extras.items() if name in dists}, module
    covered = {dist.split("[")[0].lower() for dist, _ in _DISTRIBUTIONS.values()}
    assert set().union(*(extras[e] for e in ("train", "eval", "proposals", "export"))) == covered


def test_packaged_configs_resolve_by_name(tmp_path, monkeypatch):
    configs = list_configs()
    assert set(configs) == {p.stem for p in (ROOT / "configs").glob("*.yaml")}  # the package ships configs/
    assert config_dir().resolve() == (ROOT / "configs").resolve()
    monkeypatch.chdir(tmp_path)  # an empty folder: no configs/ here
    packaged = str(configs["shapes_faster_rcnn_tiny"])
    for value in ("shapes_faster_rcnn_tiny", "shapes_faster_rcnn_tiny.yaml", "configs/shapes_faster_rcnn_tiny.yaml"):
        assert resolve_config(value) == packaged
    mine = tmp_path / "configs" / "shapes_faster_rcnn_tiny.yaml"  # a local file of that path wins
    mine.parent.mkdir()
    mine.write_text("seed_everything: 1\n")
    assert resolve_config("configs/shapes_faster_rcnn_tiny.yaml") == "configs/shapes_faster_rcnn_tiny.yaml"
    assert resolve_config_args(["fit", "-c", "shapes_mask_rcnn_tiny", "--config=fast_rcnn_tiny_shapes"]) == [
        "fit",
        "-c",
        str(configs["shapes_mask_rcnn_tiny"]),
        "--config=" + str(configs["fast_rcnn_tiny_shapes"]),
    ]
    assert resolve_config("elsewhere/x.yaml") == "elsewhere/x.yaml"  # jsonargparse reports a missing path
    with pytest.raises(FileNotFoundError, match="detkit configs"):
        resolve_config("no_such_config")


def test_detkit_configs_lists_and_prints(capsys):
    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    for name in list_configs():
        assert re.search(rf"^{name}\s+\S", listing, flags=re.M), name
    assert main(["configs", "shapes_faster_rcnn_tiny"]) == 0
    assert capsys.readouterr().out == (ROOT / "configs" / "shapes_faster_rcnn_tiny.yaml").read_text()
    assert main(["configs", "nope"]) == 2
    assert "no config named 'nope'" in capsys.readouterr().err


def _run(args, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{' '.join(map(str, args))}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


def _not_source(folder, names):
    """copytree filter: caches, outputs and build folders (data/ only at the top: detkit/data is code)."""
    top = {".git", ".venv", ".hypothesis", "data", "runs", "build", "dist", "lightning_logs", "outputs", "weights"}
    return [
        n
        for n in names
        if (Path(folder) == ROOT and n in top)
        or n == "__pycache__"
        or n.endswith(".egg-info")
        or (n.startswith(".") and n.endswith("_cache"))
    ]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The detkit wheel, built from a copy of the checkout."""
    # pip builds in the source folder (build/, *.egg-info): build in a copy, so the checkout stays clean
    # and no stale build/lib of an earlier build ends up in the wheel.
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=_not_source)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp / "dist", src], cwd=tmp, timeout=600)
    (built,) = (tmp / "dist").glob("detkit_rcnn-*.whl")
    return built


def _fresh_venv(folder: Path, request) -> tuple[Path, list, dict]:
    """A virtual environment without the system's packages: (python, pip install command, environment)."""
    venv.create(folder, with_pip=True)
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))  # ~1 GB with torch
    py = folder / "bin" / "python"
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{py.parent}{os.pathsep}{env.get('PATH', '')}", PYTHONNOUSERSITE="1")
    return py, pip, env


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(wheel, tmp_path, request):
    """Build the wheel, install the core then `[train]` into a fresh venv, train and evaluate from an empty folder."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert {f"detkit/configs/{n}.yaml" for n in list_configs()} <= set(names)
    assert re.search(rf"^Version: {re.escape(detkit.__version__)}$", meta, flags=re.M)
    assert re.search(r"^Name: detkit-rcnn$", meta, flags=re.M)
    core = [
        line.split(":", 1)[1].strip()
        for line in meta.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert sorted(re.split(r"[<>=\[ ]", r)[0] for r in core) == ["numpy", "torch", "torchvision"], core

    py, pip, env = _fresh_venv(tmp_path / "venv", request)
    work = tmp_path / "empty"
    work.mkdir()

    _run([*pip, wheel, *TORCH_PINS], cwd=work, env=env, timeout=900)  # the core only
    _run([py, "-c", LEAN_CORE], cwd=work, env=env, timeout=300)  # none of OPTIONAL is installed
    missing = subprocess.run(
        [py.parent / "detkit", "fit", "--config", "shapes_faster_rcnn_tiny"],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
    )
    assert missing.returncode == 2 and "pip install 'detkit-rcnn[train]'" in missing.stderr, missing.stderr

    _run([*pip, f"{wheel}[train]", *TORCH_PINS], cwd=work, env=env, timeout=900)
    detkit_cmd = py.parent / "detkit"
    version = _run([py, "-m", "detkit", "--version"], cwd=work, env=env).stdout.strip()
    dist_version = _run(
        [py, "-c", f"import importlib.metadata as m; print(m.version({DISTRIBUTION!r}))"], cwd=work, env=env
    )
    assert version == f"detkit {detkit.__version__}" and dist_version.stdout.strip() == detkit.__version__
    _run(
        [
            detkit_cmd,
            "fit",
            "--config",
            "shapes_faster_rcnn_tiny",
            "--trainer.max_steps",
            "2",
            "--data.num_train",
            "4",
            "--data.num_val",
            "2",
            "--data.batch_size",
            "2",
            "--model.num_visualize",
            "0",
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=work,
        env=env,
        timeout=600,
    )
    (run_dir,) = (work / "runs" / "shapes_faster_rcnn_tiny").glob("version_*")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    predictions = run_dir / "eval" / "epoch_000" / "predictions.json"
    _run(
        [
            detkit_cmd,
            "evaluate",
            "--annotations",
            work / "data" / "shapes" / "val" / "annotations.json",
            "--predictions",
            predictions,
            "--output",
            work / "metrics.json",
        ],
        cwd=work,
        env=env,
        timeout=300,
    )
    fit_stats = json.loads((run_dir / "eval" / "epoch_000" / "metrics.json").read_text())
    cli_stats = json.loads((work / "metrics.json").read_text())["stats"]
    assert cli_stats == pytest.approx(fit_stats["bbox"]["stats"], abs=1e-12)  # the command = the validation


@pytest.mark.slow
def test_wheel_with_the_export_extra_alone_exports_and_predicts(wheel, tmp_path, request):
    """`pip install detkit-rcnn[export]` (and the core) into a fresh venv: `detkit export --checkpoint` and
    `detkit predict --onnx` on PNG files work, with Lightning, the COCO tools and OpenCV not installed."""
    py, pip, env = _fresh_venv(tmp_path / "venv", request)
    work = tmp_path / "empty"
    work.mkdir()
    _run([*pip, f"{wheel}[export]", *TORCH_PINS], cwd=work, env=env, timeout=900)
    installed = _run(
        [py, "-c", f"import importlib.util as u; print([m for m in {list(TRAINING_STACK)!r} if u.find_spec(m)])"],
        cwd=work,
        env=env,
    )
    assert installed.stdout.strip() == "[]"  # none of the training stack came with [export]
    _tiny_training_checkpoint(tmp_path / "tiny.ckpt")
    setup = f"WORK = {str(work)!r}\nCHECKPOINT = {str(tmp_path / 'tiny.ckpt')!r}\n"
    out = _run([py, "-c", setup + DEPLOYMENT], cwd=work, env=env, timeout=900)
    assert _deployment_report(out.stdout) == DEPLOYED, out.stderr[-3000:]


def test_output_piped_into_a_reader_that_stops_is_not_an_error(tmp_path):
    """`detkit configs | head -1`: the reader closes the pipe; detkit exits 0 without an error line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "detkit", "configs"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # before detkit writes anything: its first write meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, stderr
    assert "error" not in stderr.lower(), stderr
