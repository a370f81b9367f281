"""Optimisers and LR schedules: torch.optim classes from the config, detkit's parameter groups and warm-up."""

import csv
import os
from types import SimpleNamespace

import pytest
import torch
import yaml
from torch import nn

from detkit.cli.lightning import cli_main
from detkit.engine import DetectionModule, WarmupSchedule
from detkit.engine.module import build_warmup_schedule, with_warmup

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def _optimizer(lr=1.0):
    return torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)


def _lrs(opt, scheduler, steps):
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(warmup_steps=10, warmup_factor=0.1, schedule="step", milestones=[20, 30], gamma=0.1),
        dict(warmup_steps=10, warmup_factor=0.001, schedule="step", milestones=[5, 30], gamma=0.5),  # decay in warm-up
        dict(warmup_steps=0, schedule="step", milestones=[7], gamma=0.1),
        dict(warmup_steps=8, warmup_factor=0.25, schedule="cosine", total_steps=40),
        dict(warmup_steps=0, schedule="cosine", total_steps=40),
        dict(warmup_steps=5, warmup_factor=0.5, schedule="constant"),
        dict(warmup_steps=0, schedule="constant"),
    ],
)
def test_torch_schedulers_reproduce_the_warmup_schedule(kwargs):
    """LinearLR + MultiStepLR / CosineAnnealingLR (chained) give the closed-form `WarmupSchedule` curve."""
    opt = _optimizer(lr=0.02)
    schedule = WarmupSchedule(**kwargs)
    scheduler = build_warmup_schedule(opt, schedule)
    expected = [0.02 * schedule(step) for step in range(41)]
    assert _lrs(opt, scheduler, 41) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_warmup_then_scheduler_counts_from_the_end_of_the_warmup():
    opt = _optimizer(lr=0.1)
    main = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[3], gamma=0.1)
    scheduler = with_warmup(main, warmup_steps=2, warmup_factor=0.5)
    assert isinstance(scheduler, torch.optim.lr_scheduler.SequentialLR)
    assert _lrs(opt, scheduler, 7) == pytest.approx([0.05, 0.075, 0.1, 0.1, 0.1, 0.01, 0.01])
    opt = _optimizer(lr=0.1)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)
    assert with_warmup(cosine, warmup_steps=0, warmup_factor=0.5) is cosine
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        with_warmup(torch.optim.lr_scheduler.ReduceLROnPlateau(opt), warmup_steps=2, warmup_factor=0.5)


def _config(tmp_path, **top):
    with open(os.path.join(CONFIGS, "shapes_faster_rcnn_tiny.yaml")) as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["init_args"].update(root=str(tmp_path / "shapes"), num_train=8, num_val=4, batch_size=4)
    cfg["model"]["model_kwargs"] = {"rpn_post_nms_top_n_test": 50, "roi_batch_size_per_image": 32}
    cfg["model"].update(warmup_steps=2, warmup_factor=0.5)
    cfg["trainer"].update(max_steps=6, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    cfg.update(top)
    path = tmp_path / "shapes.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _groups_by_name(module: DetectionModule, opt):
    names = {id(p): n for n, p in module.model.named_parameters()}
    return [{names[id(p)] for p in g["params"]} for g in opt.param_groups]


@pytest.mark.parametrize(
    "name, args, check",
    [
        ("RMSprop", ["--optimizer.momentum", "0.9", "--optimizer.alpha", "0.95"], {"momentum": 0.9, "alpha": 0.95}),
        ("Adagrad", ["--optimizer.lr_decay", "0.001"], {"lr_decay": 0.001}),
        ("SGD", ["--optimizer.momentum", "0.9", "--optimizer.nesterov", "true"], {"nesterov": True}),
        ("Adam", ["--optimizer.betas", "[0.8,0.99]"], {"betas": (0.8, 0.99)}),
        ("AdamW", [], {"amsgrad": False}),
    ],
)
def test_any_torch_optimizer_from_the_command_line(tmp_path, monkeypatch, name, args, check):
    monkeypatch.chdir(tmp_path)
    argv = [
        "--config",
        _config(tmp_path),
        "--optimizer",
        name,
        "--optimizer.lr",
        "0.001",
        "--optimizer.weight_decay",
        "0.01",
        *args,
    ]
    module = cli_main(argv, run=False).model
    module.trainer = SimpleNamespace(estimated_stepping_batches=6)
    cfg = module.configure_optimizers()
    opt = cfg["optimizer"]
    assert type(opt).__name__ == name and cfg["lr_scheduler"]["interval"] == "step"
    for key, value in check.items():
        got = opt.param_groups[0][key]
        assert (tuple(got) if isinstance(value, tuple) else got) == value, key
    # detkit's groups: weight decay on weights only, never on norms and biases
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    decay, no_decay = _groups_by_name(module, opt)
    assert all(n.endswith("weight") for n in decay) and any(".norm." in n for n in no_decay)
    assert all(n.endswith("bias") or ".norm." in n for n in no_decay)
    # warm-up (2 steps from 0.5) with the shorthand schedule: x0.1 at 0.75 and 0.9 of 6 steps (4, 5)
    assert _lrs(opt, cfg["lr_scheduler"]["scheduler"], 6) == pytest.approx([5e-4, 7.5e-4, 1e-3, 1e-3, 1e-4, 1e-5])


def test_optimizer_and_scheduler_keys_in_the_yaml_and_a_real_fit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    top = {
        "optimizer": {
            "class_path": "torch.optim.SGD",
            "init_args": {"lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4},
        },
        "lr_scheduler": {"class_path": "torch.optim.lr_scheduler.CosineAnnealingLR", "init_args": {"T_max": 4}},
    }
    config = _config(tmp_path, **top)
    assert cli_main(["fit", "--config", config]) is not None
    run = tmp_path / "runs" / "shapes_faster_rcnn_tiny" / "version_0"
    with open(run / "metrics.csv") as f:
        lrs = [float(r["train/lr"]) for r in csv.DictReader(f) if r.get("train/lr")]
    # warm-up 0.5 -> 1 over 2 steps, then cosine over T_max = 4 steps: the logged LR of each of the 6 steps
    cosine = [0.01 * (1 + torch.cos(torch.tensor(torch.pi * t / 4)).item()) / 2 for t in range(4)]
    assert lrs == pytest.approx([0.005, 0.0075, *cosine], rel=1e-6)
    with open(run / "config.yaml") as f:
        saved = yaml.safe_load(f)
    assert saved["optimizer"]["class_path"] == "torch.optim.SGD"
    assert saved["lr_scheduler"]["init_args"]["T_max"] == 4


def test_shorthand_without_the_keys_and_bad_specs():
    module = DetectionModule(num_classes=3, optimizer="adamw", lr=1e-3, warmup_steps=0, lr_schedule="constant")
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)
    assert isinstance(module.configure_optimizers()["optimizer"], torch.optim.AdamW)
    module.use_optimizer({"class_path": "torch.optim.Adagrad", "init_args": {"lr": 0.05}})
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.Adagrad) and opt.param_groups[0]["lr"] == 0.05
    assert [g["weight_decay"] for g in opt.param_groups] == [1e-4, 0.0]  # the model's weight_decay by default
    with pytest.raises(ValueError, match="class_path"):
        module.use_optimizer({"lr": 0.1})


def test_checkpoint_of_the_former_lambdalr_schedule_resumes_at_its_step():
    module = DetectionModule(num_classes=3, lr=0.02, warmup_steps=4, warmup_factor=0.25, lr_milestones=[5])
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)
    old = {
        "state_dict": module.state_dict(),
        "lr_schedulers": [{"lr_lambdas": [{"milestones": [5]}], "last_epoch": 6, "base_lrs": [0.02, 0.02]}],
    }
    module.on_load_checkpoint(old)
    assert old["lr_schedulers"] == []  # not handed to the new scheduler's load_state_dict
    cfg = module.configure_optimizers()
    opt, scheduler = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert scheduler.last_epoch == 6 and opt.param_groups[0]["lr"] == pytest.approx(0.002)
