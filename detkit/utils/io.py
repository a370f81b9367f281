"""Writing files atomically: readers see the old file or the whole new one, never a part of it.

Every file detkit writes as a result (checkpoints, COCO json, proposal caches, pictures) goes
through `atomic_write`. The new content is written to a hidden temporary file next to the
target, ``.<name>.<pid>.<random>.tmp`` (same folder, so same filesystem, so `os.replace` is
atomic), which then replaces the target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

__all__ = ["atomic_write", "remove_stale_temp_files"]


def atomic_write(
    path: str | os.PathLike,
    data: bytes | bytearray | memoryview | Callable[[BinaryIO], object],
    *,
    fsync: bool = True,
    mode: int = 0o644,
    remove_stale: bool = False,
) -> str:
    """Replace the file `path` with `data` atomically; returns `path` as a str.

    Args:
        path: the file to write; its folder is created if needed.
        data: the bytes to write, or a callback ``write(file)`` that writes into the open binary
            temporary file (e.g. ``lambda f: torch.save(obj, f)``), for content too large to
            hold twice or produced by a library that takes a file object.
        fsync: flush the data to disk before the replace and the folder entry after it, so
            that a power loss leaves the old or the new file (a few ms per call on most disks).
        mode: permission bits of the new file (the temporary file is created 0o600).
        remove_stale: after a successful write, delete the temporary files of `path` that
            writers no longer running left behind (a process killed mid-write cannot clean up).

    On any error (also KeyboardInterrupt) the temporary file is removed, `path` is left as it
    was, and the error propagates.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if remove_stale:
        remove_stale_temp_files(path)
    if fsync:
        _fsync_folder(folder)
    return path


def _fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable (not possible on every OS / filesystem: then skipped)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[str]:
    """Delete the `atomic_write` temporary files of `path` whose writer process is gone; returns them.

    Files of this process and of running processes are kept (they may be writing right now).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}."
    try:
        entries = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid = entry[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                os.unlink(os.path.join(folder, entry))
                removed.append(entry)
            except OSError:
                pass
    return removed
