"""Lightning's checkpoint I/O plugin: atomic writes and safe loading (`detkit.utils.checkpoint.load_checkpoint`)."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from detkit.utils.checkpoint import UnsafeCheckpointError, load_checkpoint
from detkit.utils.io import atomic_write

__all__ = ["AtomicCheckpointIO"]


def _is_local(path: _PATH) -> bool:
    return "://" not in str(path) or str(path).startswith("file://")


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
