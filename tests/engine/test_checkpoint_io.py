"""AtomicCheckpointIO: no half-written checkpoints, safe loading only (the reading itself: tests/io)."""

import os

import pytest
import torch

from detkit.engine.checkpoint_io import AtomicCheckpointIO
from detkit.utils.checkpoint import UnsafeCheckpointError


class NotATensor:  # pickled by reference: torch.load(weights_only=True) rejects it
    def __init__(self):
        self.value = 3


def test_roundtrip(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "sub" / "a.ckpt"
    ckpt = {"state_dict": {"w": torch.arange(4.0)}, "epoch": 2, "names": ["x", "y"], "nested": {"lr": 0.1}}
    io.save_checkpoint(ckpt, path)
    loaded = io.load_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["w"], ckpt["state_dict"]["w"])
    assert loaded["epoch"] == 2 and loaded["names"] == ["x", "y"] and loaded["nested"] == {"lr": 0.1}
    assert os.listdir(tmp_path / "sub") == ["a.ckpt"]


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"partial bytes of a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["last.ckpt"]  # no temporary file left behind
    assert io.load_checkpoint(path)["step"] == 1


def test_interrupt_mid_write_cleans_up(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "x.ckpt"

    def interrupted(obj, f, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"a": 1}, path)
    assert os.listdir(tmp_path) == []


def test_unsafe_checkpoint_is_refused(tmp_path):
    path = tmp_path / "unsafe.ckpt"
    torch.save({"obj": NotATensor()}, path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True.*never falls back"):
        AtomicCheckpointIO().load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=False was requested"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
