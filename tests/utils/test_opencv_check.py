"""OpenCV packages that shadow each other: one line naming the installed packages and the fix, at import of
the parts that need cv2; selective search fails once, before any image and before a cache file exists."""

import importlib
import importlib.metadata
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from detkit.cli import main
from detkit.proposals.cache import compute_proposals
from detkit.utils.optional import BrokenOpenCVError, MissingExtraError, require_opencv

SELECTIVE_SEARCH = ("ximgproc.segmentation.createSelectiveSearchSegmentation",)
FIX_BOTH = (
    "pip uninstall -y opencv-contrib-python-headless opencv-python "
    "&& pip install --force-reinstall opencv-contrib-python-headless"
)


def _installed(monkeypatch, packages: dict[str, str]) -> None:
    """importlib.metadata lists these distributions (name -> version) besides detkit's others."""
    dists = [SimpleNamespace(metadata={"Name": name}, version=v) for name, v in packages.items()]
    dists.append(SimpleNamespace(metadata={"Name": "numpy"}, version="2.0.0"))
    monkeypatch.setattr(importlib.metadata, "distributions", lambda: iter(dists))


def _fake_cv2(monkeypatch, *, ximgproc: str | None) -> types.ModuleType:
    """A cv2 with the basic drawing / reading names; `ximgproc`: None (opencv-python), "empty" (a
    contrib module left without `segmentation`, as after `pip install opencv-python` over contrib),
    or "full"."""
    cv2 = types.ModuleType("cv2")
    for name in ("FONT_HERSHEY_SIMPLEX", "putText", "rectangle", "imencode", "imdecode", "IMREAD_COLOR", "resize"):
        setattr(cv2, name, 0)
    cv2.setNumThreads = lambda n: None
    if ximgproc is not None:
        cv2.ximgproc = types.ModuleType("cv2.ximgproc")
        if ximgproc == "full":
            cv2.ximgproc.segmentation = SimpleNamespace(createSelectiveSearchSegmentation=lambda: None)
    monkeypatch.setitem(sys.modules, "cv2", cv2)
    return cv2


@pytest.mark.parametrize("ximgproc", [None, "empty"], ids=["opencv-python-only", "shadowed-contrib"])
def test_selective_search_without_contrib_names_the_packages_and_the_fix(ximgproc, monkeypatch):
    _fake_cv2(monkeypatch, ximgproc=ximgproc)
    _installed(monkeypatch, {"opencv-python": "4.10.0.84", "opencv_contrib_python_headless": "4.10.0.84"})
    with pytest.raises(BrokenOpenCVError) as e:
        require_opencv("selective search", SELECTIVE_SEARCH, "proposals")
    message = str(e.value)
    assert "\n" not in message
    assert "cv2 has no cv2.ximgproc.segmentation.createSelectiveSearchSegmentation" in message
    assert "opencv-contrib-python-headless 4.10.0.84, opencv-python 4.10.0.84" in message
    assert message.endswith(FIX_BOTH)
    assert isinstance(e.value, ImportError)  # `detkit` prints it as one line (see below)


def test_a_working_contrib_build_passes(monkeypatch):
    cv2 = _fake_cv2(monkeypatch, ximgproc="full")
    assert require_opencv("selective search", SELECTIVE_SEARCH, "proposals") is cv2


def test_half_uninstalled_cv2_breaks_drawing_with_the_fix(monkeypatch):
    """`pip uninstall opencv-python` after both were installed: the shared cv2 folder is left without its
    Python files, `import cv2` finds an empty namespace package. Importing the drawing module says so."""
    importlib.import_module("detkit.visualize.drawing")
    monkeypatch.delitem(sys.modules, "detkit.visualize.drawing")  # imported afresh below, restored afterwards
    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))
    _installed(monkeypatch, {"opencv-contrib-python-headless": "4.10.0.84"})
    with pytest.raises(BrokenOpenCVError) as e:
        importlib.import_module("detkit.visualize.drawing")
    message = str(e.value)
    assert message.startswith("OpenCV does not work for drawing: cv2 has no cv2.FONT_HERSHEY_SIMPLEX")
    assert "installed OpenCV packages: opencv-contrib-python-headless 4.10.0.84 " in message
    fix = "pip uninstall -y opencv-contrib-python-headless && pip install --force-reinstall "
    fix += "opencv-contrib-python-headless"
    assert message.endswith(fix) and "\n" not in message


class _FailingImport:
    """A meta path finder under which `import cv2` raises what a GUI build without libGL raises."""

    def find_spec(self, name, path=None, target=None):
        if name == "cv2":
            raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")
        return None


def test_cv2_that_fails_to_import(monkeypatch):
    monkeypatch.delitem(sys.modules, "cv2")
    monkeypatch.setattr(sys, "meta_path", [_FailingImport(), *sys.meta_path])
    _installed(monkeypatch, {"opencv-python": "4.10.0.84"})
    with pytest.raises(BrokenOpenCVError) as e:
        require_opencv("drawing", ("putText",))
    message = str(e.value)
    assert "import cv2 fails (libGL.so.1: cannot open shared object file" in message
    assert message.endswith(
        "pip uninstall -y opencv-python && pip install --force-reinstall opencv-contrib-python-headless"
    )


def test_cv2_not_installed_names_the_extra_or_stays_a_missing_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import fails: not installed
    with pytest.raises(MissingExtraError) as e:
        require_opencv("selective search", SELECTIVE_SEARCH, "proposals")
    assert not isinstance(e.value, BrokenOpenCVError)
    assert str(e.value) == (
        "opencv-contrib-python-headless is not installed (selective search needs it): "
        "pip install 'detkit-rcnn[proposals]'"
    )
    with pytest.raises(ModuleNotFoundError) as e:  # no extra given: the command names its own
        require_opencv("drawing", ("putText",))
    assert e.value.name == "cv2" and not isinstance(e.value, MissingExtraError)


@pytest.fixture
def image_file(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "img.png"
    image = np.zeros((40, 50, 3), np.uint8)
    image[5:25, 10:30] = 200
    assert cv2.imwrite(str(path), image)
    return path


def test_compute_proposals_fails_before_writing_a_cache(image_file, tmp_path, monkeypatch):
    _fake_cv2(monkeypatch, ximgproc="empty")
    _installed(monkeypatch, {"opencv-python": "4.10.0.84", "opencv-contrib-python-headless": "4.10.0.84"})
    out = tmp_path / "proposals.bin"
    with pytest.raises(BrokenOpenCVError, match="selective search: cv2 has no cv2.ximgproc.segmentation"):
        compute_proposals([(1, image_file), (2, image_file)], out, workers=1, progress=False)
    assert not out.exists()


def test_detkit_proposals_is_one_line(image_file, tmp_path, monkeypatch, capsys):
    import json

    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": image_file.name}]}))
    _fake_cv2(monkeypatch, ximgproc=None)
    _installed(monkeypatch, {"opencv-python": "4.10.0.84", "opencv-contrib-python-headless": "4.10.0.84"})
    out = tmp_path / "proposals.bin"
    args = ["--annotations", str(ann), "--image-root", str(tmp_path), "--output", str(out), "--workers", "1"]
    assert main(["proposals", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("detkit proposals: error: OpenCV does not work for selective search")
    assert lines[0].endswith(FIX_BOTH)
    assert not out.exists()


def test_a_run_where_every_image_fails_leaves_no_cache_file(tmp_path):
    pytest.importorskip("cv2")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "proposals.bin"
    with pytest.raises(RuntimeError, match=r"failed for 1 image\(s\), none cached \(.*not written\): id 3: OSError"):
        compute_proposals([(3, bad)], out, workers=1, progress=False)
    assert not out.exists()
