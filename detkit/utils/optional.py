"""Optional dependencies: import one, or fail with a one-line message naming the extra.

`pip install detkit-rcnn` gives the models; commands and tools need extras (see the README's
Install section), e.g. selective search needs OpenCV from `detkit-rcnn[proposals]`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Sequence
from types import ModuleType

__all__ = [
    "DISTRIBUTION",
    "EXTRAS",
    "OPENCV_PACKAGE",
    "BrokenOpenCVError",
    "MissingExtraError",
    "extra_for",
    "installed_opencv",
    "missing_message",
    "require",
    "require_opencv",
]

DISTRIBUTION = "detkit-rcnn"  # detkit's own name on the package index (setup.cfg's [metadata] name)

# Top-level import name -> (pip distribution, the extras that install it; as in setup.cfg,
# which a test checks).
_DISTRIBUTIONS = {
    "lightning": ("lightning", ("train",)),
    "jsonargparse": ("jsonargparse[signatures]", ("train",)),
    "yaml": ("pyyaml", ("train",)),
    "tqdm": ("tqdm", ("proposals", "train")),
    "pycocotools": ("pycocotools", ("eval", "train")),
    "faster_coco_eval": ("faster-coco-eval", ("eval", "train")),
    "matplotlib": ("matplotlib", ("eval", "train")),  # detkit analyze's charts
    "cv2": ("opencv-contrib-python-headless", ("proposals", "train")),
    "onnx": ("onnx", ("export",)),
    "onnxruntime": ("onnxruntime", ("export",)),
    "onnxscript": ("onnxscript", ("export",)),
}

# Which extra each `detkit` command needs.
EXTRAS = {
    "fit": "train",
    "validate": "train",
    "test": "train",
    "predict": "train",
    "evaluate": "eval",
    "proposals": "proposals",
    "export": "export",
}


# The one OpenCV distribution detkit installs (contrib: selective search; headless: no libGL).
OPENCV_PACKAGE = "opencv-contrib-python-headless"


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message says which extra installs it."""


class BrokenOpenCVError(MissingExtraError):
    """cv2 is installed but fails to import or lacks what a caller needs (another OpenCV package
    shadows the contrib build, or uninstalling one deleted files the others share); the message
    names the installed OpenCV packages and the commands that fix it."""


def extra_for(module: str, command: str = "") -> str | None:
    """The extra that installs `module`: the command's own extra where that has it (None: not optional)."""
    entry = _DISTRIBUTIONS.get(module.partition(".")[0])
    if entry is None:
        return None
    return EXTRAS[command] if EXTRAS.get(command) in entry[1] else entry[1][0]


def missing_message(module: str, extra: str, feature: str = "") -> str:
    """`<distribution> is not installed (<feature> needs it): pip install 'detkit-rcnn[<extra>]'`."""
    dist = _DISTRIBUTIONS.get(module.partition(".")[0], (module,))[0]
    needs = f" ({feature} needs it)" if feature else ""
    return f"{dist} is not installed{needs}: pip install '{DISTRIBUTION}[{extra}]'"


def require(module: str, extra: str, feature: str = "") -> ModuleType:
    """Import `module`; if it is missing, raise `MissingExtraError` naming `extra`.

    Only a missing module is translated: an installed package that fails to import for
    another reason raises its own error.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.partition(".")[0]
        if e.name is not None and e.name.partition(".")[0] != top:
            raise  # the package is there but one of its own dependencies is not
        raise MissingExtraError(missing_message(module, extra, feature), name=top) from e


def installed_opencv() -> dict[str, str]:
    """{distribution name: version} of the installed OpenCV pip packages (all install one `cv2` folder)."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("opencv-") and "python" in name:
            found[name] = dist.version
    return dict(sorted(found.items()))


def _opencv_fix_message(feature: str, problem: str, location: str | None) -> str:
    installed = installed_opencv()
    names = " ".join(installed)
    fix = f"pip install --force-reinstall {OPENCV_PACKAGE}"
    if installed:
        fix = f"pip uninstall -y {names} && {fix}"
    have = ", ".join(f"{n} {v}" for n, v in installed.items()) or "none found by pip"
    where = f" (cv2 at {location})" if location else ""
    return (
        f"OpenCV does not work for {feature}: {problem}{where}; installed OpenCV packages: {have} "
        f"(they share one cv2 folder: the last one installed wins, uninstalling one breaks the others); "
        f"detkit needs {OPENCV_PACKAGE} alone: {fix}"
    )


def _has(module: ModuleType, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    return True


def require_opencv(feature: str, attributes: Sequence[str], extra: str | None = None) -> ModuleType:
    """Import cv2 and check that it has `attributes` (dotted, e.g. "ximgproc.segmentation").

    A cv2 that fails to import or lacks one of them (a non-contrib or half-uninstalled OpenCV)
    raises `BrokenOpenCVError`: one line naming the installed OpenCV packages and the pip
    commands that leave `opencv-contrib-python-headless` alone. A cv2 that is not installed raises
    `MissingExtraError` naming `extra`, or (`extra=None`) the import's own ModuleNotFoundError, so
    that a command names its own extra.
    """
    try:
        cv2 = importlib.import_module("cv2")
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.startswith("cv2."):  # cv2's own files are gone
            raise BrokenOpenCVError(_opencv_fix_message(feature, f"import cv2 fails ({e})", None), name="cv2") from e
        if e.name != "cv2":
            raise  # cv2 is there, one of its own dependencies is not
        if extra is None:
            raise
        raise MissingExtraError(missing_message("cv2", extra, feature), name="cv2") from e
    except (ImportError, AttributeError) as e:  # a GUI build without libGL, a cv2 folder left half deleted
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BrokenOpenCVError(_opencv_fix_message(feature, f"import cv2 fails ({first})", None), name="cv2") from e
    missing = [name for name in attributes if not _has(cv2, name)]
    if missing:
        location = getattr(cv2, "__file__", None) or next(iter(getattr(cv2, "__path__", [])), None)
        problem = "cv2 has no " + ", ".join(f"cv2.{name}" for name in missing)
        raise BrokenOpenCVError(_opencv_fix_message(feature, problem, location), name="cv2")
    return cv2
