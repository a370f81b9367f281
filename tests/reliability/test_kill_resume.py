"""SIGKILL during `detkit fit` (mid-epoch, and while a checkpoint is being written), then resume.

Each run is a real `python -m detkit.cli fit` subprocess on a tiny shapes split (16 train
images, batch 4: 4 steps per epoch, 8 steps in all, `last.ckpt` every 2 steps).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from detkit.engine.checkpoint_io import AtomicCheckpointIO
from detkit.utils.checkpoint import load_checkpoint

CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "configs",
    "shapes_faster_rcnn_tiny.yaml",
)
MAX_STEPS = 8
WRITE_KILL_ARGS = ("--checkpoint.monitor", "train/loss", "--checkpoint.mode", "min", "--checkpoint.filename", "s{step}")
STEPS_PER_EPOCH = 4

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL / /proc based tests")


def _args(shapes: str, ckpt_dir: str, *extra: str) -> list[str]:
    return [
        "fit",
        "--config",
        CONFIG,
        "--data.root",
        shapes,
        "--data.num_train",
        "16",
        "--data.num_val",
        "4",
        "--data.batch_size",
        "4",
        "--model.model_kwargs",
        '{"rpn_post_nms_top_n_test": 50, "roi_batch_size_per_image": 32}',
        "--model.warmup_steps",
        "3",
        "--model.compute_val_loss",
        "false",
        "--model.num_visualize",
        "0",
        "--trainer.max_steps",
        str(MAX_STEPS),
        "--trainer.max_epochs",
        "-1",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--checkpoint.dirpath",
        ckpt_dir,
        "--checkpoint.every_n_train_steps",
        "2",
        *extra,
    ]


# Runs detkit's CLI; with DETKIT_TEST_HOLD_CKPT_WRITE=N, the N-th fsync of a checkpoint temp
# file (data written, not yet renamed: the window a non-atomic writer leaves a torn file in)
# writes the marker file DETKIT_TEST_MARKER and then blocks, so the parent can SIGKILL there.
_LAUNCHER = textwrap.dedent(
    """
    import os, sys, time
    hold = int(os.environ.get("DETKIT_TEST_HOLD_CKPT_WRITE", "0"))
    if hold:
        real_fsync, calls = os.fsync, [0]
        def fsync(fd):
            real_fsync(fd)
            try:
                name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                return
            if name.startswith(".last.ckpt.") and name.endswith(".tmp"):
                calls[0] += 1
                if calls[0] == hold:
                    with open(os.environ["DETKIT_TEST_MARKER"], "w") as f:
                        f.write(name)
                    time.sleep(600)
        os.fsync = fsync
    from detkit.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def _popen(args, cwd, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    out = open(os.path.join(cwd, f"stdout_{time.monotonic_ns()}.txt"), "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", _LAUNCHER, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
    )
    proc.log_path = out.name
    out.close()
    return proc


def _log(proc) -> str:
    with open(proc.log_path) as f:
        return f.read()[-4000:]


def _finish(proc, timeout=300):
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"detkit fit did not finish in {timeout}s:\n{_log(proc)}") from None
    assert rc == 0, f"detkit fit exited with {rc}:\n{_log(proc)}"


def _wait_for(condition, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"detkit fit ended (rc={proc.returncode}) before the kill point:\n{_log(proc)}")
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    raise AssertionError(f"kill point not reached in {timeout}s:\n{_log(proc)}")


def _sigkill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def _train_steps(run_dir) -> list[int]:
    """Steps at which train/loss was logged in the run's metrics.csv."""
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def _final_eval(run_dir) -> dict:
    with open(os.path.join(run_dir, "eval", f"epoch_{MAX_STEPS // STEPS_PER_EPOCH - 1:03d}", "metrics.json")) as f:
        return json.load(f)


def _versions(cwd):
    root = os.path.join(cwd, "runs", "shapes_faster_rcnn_tiny")
    return sorted(os.listdir(root), key=lambda v: int(v.split("_")[1])) if os.path.isdir(root) else []


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return tmp_path_factory.mktemp("kill_resume")


@pytest.fixture(scope="module")
def reference(workspace):
    """An uninterrupted run: its final checkpoint and evaluation."""
    cwd = workspace / "reference"
    cwd.mkdir()
    ckpt_dir = str(cwd / "ckpts")
    _finish(_popen(_args(str(workspace / "shapes"), ckpt_dir), str(cwd)))
    (version,) = _versions(str(cwd))
    run_dir = cwd / "runs" / "shapes_faster_rcnn_tiny" / version
    return {
        "ckpt": load_checkpoint(os.path.join(ckpt_dir, "last.ckpt")),
        "eval": _final_eval(run_dir),
        "train_steps": _train_steps(run_dir),
    }


def _check_resumed_like_reference(resumed_ckpt, resumed_eval, reference, resumed_from: int, resumed_steps):
    # the step counter continued to max_steps (neither restarted at 0 nor overshot)
    assert resumed_ckpt["global_step"] == reference["ckpt"]["global_step"] == MAX_STEPS
    # the resumed process trained only the remaining steps
    assert resumed_steps and min(resumed_steps) >= resumed_from, (resumed_from, resumed_steps)
    assert len(resumed_steps) == MAX_STEPS - resumed_from
    # LR scheduler continued: a restarted LambdaLR would stand at MAX_STEPS - resumed_from
    (sched,) = resumed_ckpt["lr_schedulers"]
    (ref_sched,) = reference["ckpt"]["lr_schedulers"]
    assert sched["last_epoch"] == ref_sched["last_epoch"] == MAX_STEPS
    assert sched["_last_lr"] == pytest.approx(ref_sched["_last_lr"], rel=1e-12)
    # optimizer: same LR per group, same per-parameter state (momentum / Adam moments); Adam's
    # step count continued (a fresh optimizer would count only MAX_STEPS - resumed_from)
    (opt,) = resumed_ckpt["optimizer_states"]
    (ref_opt,) = reference["ckpt"]["optimizer_states"]
    assert [g["lr"] for g in opt["param_groups"]] == pytest.approx([g["lr"] for g in ref_opt["param_groups"]])
    assert set(opt["state"]) == set(ref_opt["state"]) and opt["state"]
    for index, state in opt["state"].items():
        assert state.keys() == ref_opt["state"][index].keys()
        assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))
        if "step" in state:
            assert float(state["step"]) == float(ref_opt["state"][index]["step"]) == MAX_STEPS
    # weights finite, same keys; metrics equal within noise. The noise is large here (8 steps, 4
    # validation images) and the data order after a resume differs from the uninterrupted run's
    # (Lightning does not checkpoint the sampler's RNG), so this comparison is coarse.
    ref_sd = reference["ckpt"]["state_dict"]
    assert resumed_ckpt["state_dict"].keys() == ref_sd.keys()
    assert all(torch.isfinite(v).all() for v in resumed_ckpt["state_dict"].values() if v.is_floating_point())
    for name in ("AP", "AP50", "AR100"):
        assert resumed_eval["bbox"]["stats"][name] == pytest.approx(
            reference["eval"]["bbox"]["stats"][name], abs=0.3
        ), name
    assert resumed_eval["num_detections"] > 0
    assert resumed_eval["global_step"] == reference["eval"]["global_step"] == MAX_STEPS


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_with_ckpt_path_last(workspace, reference):
    cwd = workspace / "mid_epoch"
    cwd.mkdir()
    ckpt_dir = cwd / "ckpts"
    last = ckpt_dir / "last.ckpt"
    proc = _popen(_args(str(workspace / "shapes"), str(ckpt_dir)), str(cwd))

    # kill as soon as last.ckpt holds a mid-epoch step (DetectionCheckpoint writes it from the
    # first step save point on, before val/AP exists)
    def mid_epoch_checkpoint():
        return last.exists() and load_checkpoint(last)["global_step"] % STEPS_PER_EPOCH != 0

    _wait_for(mid_epoch_checkpoint, proc)
    _sigkill(proc)

    ckpt = load_checkpoint(last)  # complete and loadable (written through temp file + rename)
    killed_at = ckpt["global_step"]
    assert 0 < killed_at < MAX_STEPS and killed_at % STEPS_PER_EPOCH != 0, killed_at  # mid-epoch
    assert all(f.endswith(".ckpt") for f in os.listdir(ckpt_dir))  # no temp file: the kill was not mid-write

    proc = _popen([*_args(str(workspace / "shapes"), str(ckpt_dir)), "--ckpt_path", "last"], str(cwd))
    _finish(proc)
    assert "Restoring states from the checkpoint path" in _log(proc)
    versions = _versions(str(cwd))
    run_dir = cwd / "runs" / "shapes_faster_rcnn_tiny" / versions[-1]
    _check_resumed_like_reference(
        load_checkpoint(last), _final_eval(run_dir), reference, killed_at, _train_steps(run_dir)
    )


@pytest.mark.slow
def test_sigkill_while_writing_checkpoint_then_resume(workspace, reference):
    cwd = workspace / "during_write"
    cwd.mkdir()
    ckpt_dir = cwd / "ckpts"
    last = ckpt_dir / "last.ckpt"
    marker = cwd / "holding"
    env = {"DETKIT_TEST_HOLD_CKPT_WRITE": "2", "DETKIT_TEST_MARKER": str(marker)}
    # monitor the training loss so that checkpoints are written from step 2 on (steps 2, 4, ...)
    args = _args(str(workspace / "shapes"), str(ckpt_dir), *WRITE_KILL_ARGS)
    proc = _popen(args, str(cwd), env)
    _wait_for(marker.exists, proc)  # the step-4 checkpoint is fully written to its temp file, not renamed
    before = last.read_bytes()
    _sigkill(proc)

    assert last.read_bytes() == before  # last.ckpt untouched by the interrupted write
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 2
    tmp_name = marker.read_text()
    leftovers = [f for f in os.listdir(ckpt_dir) if not f.endswith(".ckpt")]
    assert leftovers == [tmp_name]  # SIGKILL leaves the hidden temp file; nothing else
    assert AtomicCheckpointIO().load_checkpoint(last)["global_step"] == 2

    proc = _popen([*args, "--ckpt_path", str(last)], str(cwd))
    _finish(proc)
    run_dir = cwd / "runs" / "shapes_faster_rcnn_tiny" / _versions(str(cwd))[-1]
    _check_resumed_like_reference(load_checkpoint(last), _final_eval(run_dir), reference, 2, _train_steps(run_dir))


_SLOW_WRITER = textwrap.dedent(
    """
    import io, sys, time, torch
    from detkit.engine.checkpoint_io import AtomicCheckpointIO
    path, marker = sys.argv[1], sys.argv[2]
    real_save = torch.save
    def slow_save(obj, f, *args, **kwargs):  # the bytes reach the file in two halves
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        with open(marker, "w") as m:
            m.write(str(len(data)))
        time.sleep(600)
        f.write(data[len(data) // 2 :])
    torch.save = slow_save
    AtomicCheckpointIO().save_checkpoint({"global_step": 2, "w": torch.full((512, 512), 2.0)}, path)
    """
)


def test_sigkill_inside_torch_save_keeps_the_previous_checkpoint(tmp_path):
    """AtomicCheckpointIO.save_checkpoint in a child process, SIGKILLed half-way through the bytes."""
    path, marker = tmp_path / "last.ckpt", tmp_path / "half_written"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint({"global_step": 1, "w": torch.ones(512, 512)}, path)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(path), str(marker)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.01)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()

    assert path.read_bytes() == before
    assert io_plugin.load_checkpoint(path)["global_step"] == 1
    (tmp,) = [p for p in tmp_path.iterdir() if p.name not in ("last.ckpt", "half_written")]
    assert tmp.name.startswith(".last.ckpt.") and tmp.name.endswith(".tmp")
    assert tmp.stat().st_size == int(marker.read_text()) // 2  # the kill really came mid-write
    # this torn file is what a plain open(path, "wb") writer would have left as last.ckpt
    with pytest.raises(RuntimeError, match="not a torch checkpoint"):
        load_checkpoint(tmp)
    assert f".{proc.pid}." in tmp.name  # named after its writer
    # the next save still works, replaces last.ckpt atomically and removes the dead writer's file
    live = tmp_path / f".last.ckpt.{os.getpid()}.other.tmp"  # a live writer's file stays
    live.write_bytes(b"x")
    io_plugin.save_checkpoint({"global_step": 3, "w": torch.zeros(2)}, path)
    assert load_checkpoint(path)["global_step"] == 3
    assert not tmp.exists() and live.exists()


def test_last_ckpt_is_the_latest_state_even_when_val_ap_gets_worse(tmp_path, monkeypatch):
    """`last.ckpt` is what a crashed run resumes from: it must follow every epoch, not only the
    epochs whose val/AP improved (Lightning >= 2.6 writes `save_last` only together with a top-k
    save of the same callback)."""
    from detkit.cli.lightning import cli_main

    monkeypatch.chdir(tmp_path)
    args = _args(str(tmp_path / "shapes"), str(tmp_path / "ckpts"))[1:]  # no subcommand with run=False
    drop = {"--checkpoint.every_n_train_steps", "--trainer.max_steps", "--data.num_train", "--data.num_val"}
    args = [a for i, a in enumerate(args) if a not in drop and (i == 0 or args[i - 1] not in drop)]
    assert "--trainer.max_steps" not in args and "fit" not in args
    args += ["--data.num_train", "8", "--data.num_val", "2", "--trainer.max_epochs", "3"]
    cli = cli_main(args, run=False)
    real = cli.model._compute_metrics
    ap_per_epoch = [0.5, 0.2, 0.1]  # best at epoch 0, worse afterwards

    def compute_metrics(stage, results, image_ids, *rest):
        metrics = real(stage, results, image_ids, *rest)
        return {**metrics, "val/AP": ap_per_epoch[cli.model.current_epoch]}

    monkeypatch.setattr(cli.model, "_compute_metrics", compute_metrics)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 6
    best = [f for f in os.listdir(tmp_path / "ckpts") if f.startswith("best")]
    assert len(best) == 1 and "epoch000" in best[0]  # the best checkpoint is the epoch-0 one
    last = load_checkpoint(tmp_path / "ckpts" / "last.ckpt")
    assert last["global_step"] == 6, f"last.ckpt is from step {last['global_step']}, training ended at step 6"


@pytest.mark.parametrize("on_train_epoch_end", [True, False])
def test_step_checkpoints_start_before_the_first_validation(tmp_path, monkeypatch, on_train_epoch_end):
    """With `every_n_train_steps`, `last.ckpt` is written from the first save point on, not only
    once `val/AP` exists (a COCO epoch is hours of work); the best checkpoint is still kept,
    also when a validation ends at a step that was just saved (`save_on_train_epoch_end` false)."""
    from detkit.cli.lightning import cli_main
    from detkit.engine.callbacks import DetectionCheckpoint

    monkeypatch.chdir(tmp_path)
    args = _args(str(tmp_path / "shapes"), str(tmp_path / "ckpts"))[1:]
    drop = {"--trainer.max_steps", "--data.num_train", "--data.num_val"}
    args = [a for i, a in enumerate(args) if a not in drop and (i == 0 or args[i - 1] not in drop)]
    epochs = 2 if on_train_epoch_end else 1
    args += ["--data.num_train", "16", "--data.num_val", "2", "--trainer.max_epochs", str(epochs)]
    args += ["--checkpoint.save_on_train_epoch_end", str(on_train_epoch_end).lower()]
    cli = cli_main(args, run=False)
    callback = next(c for c in cli.trainer.callbacks if isinstance(c, DetectionCheckpoint))
    seen = []
    real_write = callback.write_last

    def write_last(trainer):
        seen.append((trainer.global_step, "val/AP" in trainer.callback_metrics))
        return real_write(trainer)

    monkeypatch.setattr(callback, "write_last", write_last)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    steps = 4 * epochs  # 16 images, batch 4
    assert cli.trainer.global_step == steps
    assert seen[0] == (2, False), seen  # mid-epoch step 2, before val/AP exists
    best = [f for f in os.listdir(tmp_path / "ckpts") if f.startswith("best")]
    assert len(best) == 1, (best, seen)
    assert load_checkpoint(tmp_path / "ckpts" / "last.ckpt")["global_step"] == steps
