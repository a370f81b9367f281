"""Optional dependencies: import one, or fail with a one-line message naming the extra.

`pip install detkit` gives the models; commands and tools need extras (see the README's
Install section), e.g. selective search needs OpenCV from `detkit[proposals]`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "MissingExtraError", "extra_for", "missing_message", "require"]

# Top-level import name -> (pip distribution, the extras that install it; as in setup.cfg,
# which a test checks).
_DISTRIBUTIONS = {
    "lightning": ("lightning", ("train",)),
    "jsonargparse": ("jsonargparse[signatures]", ("train",)),
    "yaml": ("pyyaml", ("train",)),
    "tqdm": ("tqdm", ("proposals", "train")),
    "pycocotools": ("pycocotools", ("eval", "train")),
    "faster_coco_eval": ("faster-coco-eval", ("eval", "train")),
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


class MissingExtraError(ModuleNotFoundError):
    """An optional dependency is not installed; the message says which extra installs it."""


def extra_for(module: str, command: str = "") -> str | None:
    """The extra that installs `module`: the command's own extra where that has it (None: not optional)."""
    entry = _DISTRIBUTIONS.get(module.partition(".")[0])
    if entry is None:
        return None
    return EXTRAS[command] if EXTRAS.get(command) in entry[1] else entry[1][0]


def missing_message(module: str, extra: str, feature: str = "") -> str:
    """`<distribution> is not installed (<feature> needs it): pip install 'detkit[<extra>]'`."""
    dist = _DISTRIBUTIONS.get(module.partition(".")[0], (module,))[0]
    needs = f" ({feature} needs it)" if feature else ""
    return f"{dist} is not installed{needs}: pip install 'detkit[{extra}]'"


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
