"""Checkpoint I/O: atomic writes and safe (`weights_only=True`) loading."""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from detkit.utils.io import atomic_write

__all__ = ["AtomicCheckpointIO", "UnsafeCheckpointError", "build_model_from_checkpoint", "load_checkpoint"]


class UnsafeCheckpointError(RuntimeError, ValueError):
    """A checkpoint holds objects that `torch.load(weights_only=True)` refuses to unpickle."""


def _is_local(path: _PATH) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


def load_checkpoint(path: _PATH, map_location: Any = "cpu") -> dict[str, Any]:
    """`torch.load(path, weights_only=True)` with clear errors.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpointError: the file needs arbitrary unpickling; it is never loaded unsafely.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise UnsafeCheckpointError(f"{path}: not a readable torch checkpoint ({_first_line(e)})") from None
        reason = next(
            (ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln or "Unsupported" in ln), _first_line(e)
        )
        raise UnsafeCheckpointError(
            f"{path}: torch.load(weights_only=True) refused this checkpoint ({reason}). detkit never falls back "
            "to unsafe unpickling. If you trust the file, load it yourself with weights_only=False and re-save "
            "only tensors, numbers, strings, lists and dicts."
        ) from None
    except Exception as e:  # truncated / corrupt files raise many kinds of errors
        raise UnsafeCheckpointError(
            f"{path}: not a readable torch checkpoint ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes through a temporary file in the target folder, then `os.replace`.

    A crash while saving leaves the previous checkpoint untouched and no temporary file; a
    process killed mid-write (SIGKILL, power loss) leaves its hidden `.<name>.<pid>.*.tmp`,
    which the next successful save of the same file removes once that pid is gone.
    Loading uses `torch.load(weights_only=True)` and fails with a clear message (no unsafe
    fallback) when a checkpoint holds other objects. Remote (fsspec URL) paths are delegated
    to Lightning's own implementation.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = os.fspath(path).removeprefix("file://")
        # temporary file, fsync, replace, fsync of the folder; dead writers' temporary files removed
        atomic_write(path, lambda f: torch.save(checkpoint, f), remove_stale=True)

    def load_checkpoint(
        self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not _is_local(path):
            return super().load_checkpoint(path, map_location=map_location, weights_only=True)
        if weights_only is False:
            raise UnsafeCheckpointError(
                f"{os.fspath(path)}: loading with weights_only=False was requested; {type(self).__name__} only "
                "loads checkpoints safely (weights_only=True)"
            )
        fs = get_filesystem(path)
        if not fs.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return load_checkpoint(os.fspath(path).removeprefix("file://"), map_location=map_location or "cpu")


def build_model_from_checkpoint(
    path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[torch.nn.Module, list[str] | None]:
    """Detector and class names from a detkit Lightning checkpoint (loaded with weights_only=True).

    The detector's `label_to_category_id` attribute holds the training data's `{label: category id}`
    (None for checkpoints written before detkit stored it).

    `backbone_weights` in the saved model arguments is ignored: the checkpoint holds all weights.
    """
    from detkit.engine.module import STATS_KEY
    from detkit.models import build_model

    ckpt = load_checkpoint(path, map_location=map_location)
    info = ckpt.get(STATS_KEY) or {}
    hparams = ckpt.get("hyper_parameters") or {}
    model_name = info.get("model_name", hparams.get("model_name"))
    num_classes = info.get("num_classes", hparams.get("num_classes"))
    model_kwargs = dict(info.get("model_kwargs", hparams.get("model_kwargs")) or {})
    if model_name is None or num_classes is None or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a detkit training checkpoint (no model name / num_classes / state_dict)")
    model_kwargs.pop("backbone_weights", None)
    model = build_model(model_name, num_classes=int(num_classes), **model_kwargs)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not match {model_name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.label_to_category_id = _load_category_map(path, info, int(num_classes))  # type: ignore[assignment]
    model.proposal_settings = info.get("proposals")  # type: ignore[assignment]  # selective search of training
    return model.eval(), info.get("class_names")


def _load_category_map(path: str | os.PathLike, info: dict, num_classes: int) -> dict[int, int] | None:
    """`{label: category_id}` stored in a checkpoint (None for checkpoints written before it was stored)."""
    stored = info.get("label_to_category_id")
    if not stored:
        return None
    mapping = {int(k): int(v) for k, v in dict(stored).items()}
    if sorted(mapping) != list(range(1, num_classes + 1)):
        raise ValueError(f"{path}: label_to_category_id does not cover labels 1..{num_classes}: {mapping}")
    return mapping
