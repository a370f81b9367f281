"""Reading torch checkpoints safely: `torch.load(weights_only=True)` with one-line errors.

The lowest layer of checkpoint reading, shared by backbone weights, detector weights
(`detkit.models.weights`) and training checkpoints (`detkit.io`). A file is never loaded
unsafely: where torch's weights-only unpickler refuses an object, so does detkit.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Any

import torch

__all__ = ["STATS_KEY", "CheckpointReadError", "UnsafeCheckpointError", "load_checkpoint"]

STATS_KEY = "detkit"  # detkit's checkpoint entry: class names and how to rebuild the detector


class UnsafeCheckpointError(RuntimeError, ValueError):
    """A checkpoint holds objects that `torch.load(weights_only=True)` refuses to unpickle."""


class CheckpointReadError(RuntimeError, ValueError):
    """A file that is not a torch checkpoint at all (random bytes, a truncated file, text)."""


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with clear errors.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: torch's weights-only unpickler refused a global (a class or function
            pickled by reference); the file is never loaded unsafely.
        CheckpointReadError: the file is not a torch checkpoint (corrupt, truncated, another format).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of non-torch pickles
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        refused = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL " in ln), None)
        if refused is None:  # e.g. "Unsupported operand": bytes that are no torch pickle
            raise CheckpointReadError(f"{path}: not a torch checkpoint ({_unpickler_reason(e)})") from None
        raise UnsafeCheckpointError(
            f"{path}: torch.load(weights_only=True) refused this checkpoint "
            f"({refused.removeprefix('WeightsUnpickler error: ').split('. ')[0]}). detkit never falls back to "
            "unsafe unpickling. If you trust the file, load it yourself with weights_only=False and re-save "
            "only tensors, numbers, strings, lists and dicts."
        ) from None
    except Exception as e:  # truncated / corrupt files raise many kinds of errors
        raise CheckpointReadError(f"{path}: not a torch checkpoint ({type(e).__name__}: {_first_line(e)})") from None


def _unpickler_reason(e: BaseException) -> str:
    """The weights-only unpickler's own reason (torch wraps it in paragraphs of advice)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    after = [ln for i, ln in enumerate(lines) if i and "WeightsUnpickler error" in lines[i - 1]]
    return (after or [ln for ln in lines if ln.startswith("Unsupported")] or [_first_line(e)])[0]


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
