"""detkit.utils.io.atomic_write: bytes or a writer callback, same-folder temp file, replace, cleanup."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

from detkit.utils import io as dio
from detkit.utils.io import atomic_write, remove_stale_temp_files


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_bytes_into_a_new_folder(tmp_path):
    path = tmp_path / "a" / "b" / "out.json"
    assert atomic_write(path, b'{"x": 1}') == str(path)
    assert json.loads(path.read_text()) == {"x": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0o600
    assert leftovers(path.parent) == []


def test_writer_callback_and_mode(tmp_path):
    path = tmp_path / "w.pt"
    atomic_write(path, lambda f: torch.save({"w": torch.arange(5)}, f), mode=0o600)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(5))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_replace_is_atomic_for_open_readers(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old content")
    with open(path, "rb") as reader:
        atomic_write(path, b"new")
        assert reader.read() == b"old content"  # the old file, whole: a new inode replaced it
    assert path.read_bytes() == b"new"


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_error_while_writing_keeps_the_old_file_and_no_temp(tmp_path, error):
    path = tmp_path / "keep.txt"
    path.write_bytes(b"previous")

    def half_then_fail(f):
        f.write(b"half of the new")
        raise error("disk on fire")

    with pytest.raises(error, match="disk on fire"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"previous" and leftovers(tmp_path) == []
    with pytest.raises(TypeError):  # text is refused, not written half
        atomic_write(path, "text")
    assert path.read_bytes() == b"previous" and leftovers(tmp_path) == []


def test_fsync_of_file_and_folder(tmp_path, monkeypatch):
    calls = []
    real = os.fsync
    monkeypatch.setattr(dio.os, "fsync", lambda fd: calls.append(fd) or real(fd))
    atomic_write(tmp_path / "a", b"1")
    assert len(calls) == 2  # the data, then the folder entry
    calls.clear()
    atomic_write(tmp_path / "b", b"2", fsync=False)
    assert calls == []


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "last.ckpt"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # exited: its pid names no running process (unless reused at once)
    stale = tmp_path / f".last.ckpt.{dead_pid}.abc123.tmp"
    mine = tmp_path / f".last.ckpt.{os.getpid()}.def456.tmp"  # this process may be writing it
    other = tmp_path / f".other.ckpt.{dead_pid}.x.tmp"  # another target's: not ours to touch
    for p in (stale, mine, other):
        p.write_bytes(b"torn")
    atomic_write(path, b"ok")  # remove_stale is opt-in
    assert stale.exists()
    atomic_write(path, b"ok", remove_stale=True)
    assert not stale.exists() and mine.exists() and other.exists()
    assert remove_stale_temp_files(tmp_path / "other.ckpt") == [other.name]


def test_old_import_path_of_atomic_write_bytes(tmp_path):
    from detkit.evaluation.results import atomic_write_bytes, save_results_json

    atomic_write_bytes(tmp_path / "x.png", b"\x89PNG")
    save_results_json([{"image_id": 1}], tmp_path / "r.json")
    assert (tmp_path / "x.png").read_bytes() == b"\x89PNG"
    assert json.loads((tmp_path / "r.json").read_text()) == [{"image_id": 1}]
    assert leftovers(tmp_path) == []
