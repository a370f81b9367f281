"""DetectionModule: training / validation on a tiny shapes split, NaN handling, optimizer set-up."""

import json
import math
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from trainers import cpu_trainer

from detkit.engine import DetectionModule, ShapesDataModule, WarmupSchedule, parameter_groups
from detkit.engine.module import resolve_milestones
from detkit.evaluation import STAT_NAMES

FAST = {"rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "roi_batch_size_per_image": 32}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("shapes"))


def _data(root, **kw):
    args = dict(root=root, num_train=8, num_val=6, batch_size=4, image_size=128)
    args.update(kw)
    return ShapesDataModule(**args)


def test_fit_logs_coco_metrics_and_writes_artifacts(tmp_path, shapes_root):
    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, lr=0.01, warmup_steps=2, num_visualize=3)
    trainer = cpu_trainer(tmp_path, max_steps=2, limit_val_batches=1, log_every_n_steps=1)
    trainer.fit(module, datamodule=_data(shapes_root))

    metrics = trainer.callback_metrics
    for name in STAT_NAMES:
        assert f"val/{name}" in metrics
    assert 0.0 <= float(metrics["val/AP"]) <= 1.0
    assert "val/loss" in metrics and math.isfinite(float(metrics["val/loss"]))
    assert "train/loss" in metrics and float(metrics["train/skipped_steps"]) == 0

    out = module.last_eval_dir
    assert out is not None and out.startswith(trainer.log_dir)
    files = sorted(os.listdir(out))
    assert "metrics.json" in files and "pr_curve_bbox.png" in files and "predictions.json" in files
    assert len([f for f in files if f.startswith("detections_")]) == 3  # first num_visualize images of the batch
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["bbox"]["stats"]["AP"] == pytest.approx(float(metrics["val/AP"]), abs=1e-6)
    # limit_val_batches=1: only the 4 images of that batch are evaluated
    with open(os.path.join(out, "predictions.json")) as f:
        assert {r["image_id"] for r in json.load(f)} <= {1, 2, 3, 4}


def test_mask_model_validate_reports_segm(tmp_path, shapes_root):
    torch.manual_seed(0)
    module = DetectionModule(
        model_name="mask_rcnn_tiny", num_classes=3, model_kwargs=FAST, num_visualize=1, compute_val_loss=False
    )
    assert module.eval_iou_types == ["bbox", "segm"]
    trainer = cpu_trainer(tmp_path, limit_val_batches=1)
    (result,) = trainer.validate(module, datamodule=_data(shapes_root, with_masks=True))
    assert 0.0 <= result["val/segm_AP"] <= 1.0 and 0.0 <= result["val/AP"] <= 1.0
    assert "val/loss" not in result
    assert os.path.isfile(os.path.join(module.last_eval_dir, "pr_curve_segm.png"))


def test_segm_rejected_for_box_only_model():
    with pytest.raises(ValueError, match="segm"):
        DetectionModule(num_classes=3, eval_iou_types=["bbox", "segm"])


def _nan_forward(module, bad_calls):
    """Replace the detector's forward: NaN classifier loss for the first `bad_calls` calls."""
    real = module.model.forward
    calls = {"n": 0}

    def forward(images, targets=None, **kw):
        calls["n"] += 1
        losses = real(images, targets, **kw)
        if targets is not None and module.training and calls["n"] <= bad_calls:
            losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
        return losses

    module.model.forward = forward
    return calls


# DetectionModule.training_step returns None to skip a step with a non-finite loss; Lightning says it may be a mistake
SKIPS_STEPS = pytest.mark.filterwarnings("ignore:`training_step` returned `None`:UserWarning")


@SKIPS_STEPS
def test_nonfinite_loss_step_is_skipped(tmp_path, shapes_root):
    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, max_bad_steps=5, weight_decay=0.1)
    before = {k: v.clone() for k, v in module.model.state_dict().items() if v.is_floating_point()}
    _nan_forward(module, bad_calls=2)
    trainer = cpu_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0, log_every_n_steps=1)
    trainer.fit(module, datamodule=_data(shapes_root))
    assert module.skipped_steps == 2
    assert float(trainer.callback_metrics["train/skipped_steps"]) == 2
    after = module.model.state_dict()
    trainable = {n for n, p in module.model.named_parameters()}
    for name in trainable:  # no optimizer update happened (weight decay alone would change weights)
        assert torch.equal(before[name], after[name]), name


@SKIPS_STEPS
def test_consecutive_nonfinite_losses_raise(tmp_path, shapes_root):
    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, max_bad_steps=2)
    _nan_forward(module, bad_calls=100)
    trainer = cpu_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    with pytest.raises(RuntimeError, match=r"2 consecutive .*loss_classifier=nan"):
        trainer.fit(module, datamodule=_data(shapes_root))
    assert module.skipped_steps == 2


@SKIPS_STEPS
def test_good_step_resets_the_bad_streak(tmp_path, shapes_root):
    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, max_bad_steps=2)
    real = module.model.forward
    pattern = iter([True, False, True, False])  # bad, good, bad, good: never 2 in a row

    def forward(images, targets=None, **kw):
        losses = real(images, targets, **kw)
        if targets is not None and module.training and next(pattern):
            losses["loss_box_reg"] = losses["loss_box_reg"] + float("inf")
        return losses

    module.model.forward = forward
    trainer = cpu_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(module, datamodule=_data(shapes_root))
    assert module.skipped_steps == 2


def test_parameter_groups_exclude_norms_and_biases():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Linear(4, 2), nn.Conv2d(4, 4, 1, bias=False)
    )
    model[4].weight.requires_grad_(False)
    decay, no_decay = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    expected = [model[0].bias, model[1].weight, model[1].bias, model[2].weight, model[2].bias, model[3].bias]
    assert {id(p) for p in no_decay["params"]} == {id(p) for p in expected}


def test_detector_parameter_groups_cover_every_trainable_parameter():
    module = DetectionModule(num_classes=3)
    groups = parameter_groups(module.model, 1e-4)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == sum(1 for p in module.model.parameters() if p.requires_grad)
    names = {id(p): n for n, p in module.model.named_parameters()}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert all(n.endswith("bias") or ".norm." in n for n in no_decay), no_decay
    assert not any(n.endswith("bias") for n in (names[id(p)] for p in groups[0]["params"]))


def test_warmup_step_schedule_values():
    s = WarmupSchedule(warmup_steps=10, warmup_factor=0.1, schedule="step", milestones=[20, 30], gamma=0.1)
    assert s(0) == pytest.approx(0.1)
    assert s(5) == pytest.approx(0.55)  # 0.1 * 0.5 + 0.5
    assert s(9) == pytest.approx(0.91)
    assert s(10) == pytest.approx(1.0)
    assert s(19) == pytest.approx(1.0)
    assert s(20) == pytest.approx(0.1)
    assert s(30) == pytest.approx(0.01)


def test_cosine_and_constant_schedules():
    cos = WarmupSchedule(warmup_steps=0, schedule="cosine", total_steps=100)
    assert [cos(0), cos(50), cos(100)] == pytest.approx([1.0, 0.5, 0.0])
    warm = WarmupSchedule(warmup_steps=4, warmup_factor=0.0, schedule="cosine", total_steps=100)
    assert warm(2) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.02)))
    assert WarmupSchedule(warmup_steps=0, schedule="constant")(1000) == 1.0
    with pytest.raises(ValueError, match="finite"):
        WarmupSchedule(schedule="cosine")


def test_milestones_fractions_and_steps():
    assert resolve_milestones([0.5, 0.75], 100) == [50, 75]
    assert resolve_milestones([60000, 80000], 90000) == [60000, 80000]
    assert resolve_milestones([2 / 3, 8 / 9], 90000) == [60000, 80000]
    with pytest.raises(ValueError, match="max_steps"):
        resolve_milestones([0.5], math.inf)


def test_configure_optimizers_lr_per_step():
    module = DetectionModule(
        num_classes=3, lr=0.02, warmup_steps=4, warmup_factor=0.25, lr_milestones=[0.5], lr_gamma=0.1, weight_decay=0.01
    )
    module.trainer = SimpleNamespace(estimated_stepping_batches=10)
    cfg = module.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step"
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    # warm-up 0.25 -> 1 over 4 steps, decay x0.1 at step 5 (= 0.5 * 10)
    assert lrs == pytest.approx([0.005, 0.00875, 0.0125, 0.01625, 0.02, 0.002, 0.002])
    state = sched.state_dict()  # torch schedulers (warm-up chained with the step decay): plain values
    assert state["last_epoch"] == 7 and dict(state["_schedulers"][1]["milestones"]) == {5: 1}


def test_adamw_optimizer():
    module = DetectionModule(
        num_classes=3, optimizer="adamw", lr=1e-3, momentum=0.9, lr_schedule="constant", warmup_steps=0
    )
    module.trainer = SimpleNamespace(estimated_stepping_batches=float("inf"))
    opt = module.configure_optimizers()["optimizer"]
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_cached_proposals_reach_the_detector(tmp_path, shapes_root):
    """R-CNN / Fast R-CNN inputs: `target["proposals"]` from a proposal cache is passed as `proposals=`."""
    from detkit.data.proposals import dataset_images
    from detkit.proposals.cache import ProposalCache, image_records

    cache_path = str(tmp_path / "val.bin")
    plain = _data(shapes_root)
    plain.prepare_data()
    plain.setup("validate")
    cache = ProposalCache(cache_path, params={"test": 1}, images=image_records(dataset_images(plain.val_dataset)))
    for image_id in range(1, 7):
        cache.put(image_id, torch.tensor([[0.0, 0.0, 32.0, 32.0], [10.0, 20.0, 60.0, 90.0]]))
    cache.close()
    module = DetectionModule(
        model_name="fast_rcnn_tiny",
        num_classes=3,
        model_kwargs={"roi_batch_size_per_image": 32},  # no RPN: FAST's proposal counts are refused
        compute_val_loss=True,
        num_visualize=0,
    )
    assert module.model.requires_proposals
    seen = []
    real_predict, real_forward = module.model.predict, module.model.forward

    def predict(images, **kw):
        seen.append(("predict", kw["proposals"]))
        return real_predict(images, **kw)

    def forward(images, targets=None, **kw):
        seen.append(("forward", kw["proposals"]))
        return real_forward(images, targets, **kw)

    module.model.predict, module.model.forward = predict, forward
    dm = _data(shapes_root, val_proposals=cache_path)
    cpu_trainer(tmp_path, limit_val_batches=1).validate(module, datamodule=dm)
    assert [kind for kind, _ in seen] == ["forward", "predict"]
    for _, proposals in seen:
        assert len(proposals) == 4 and proposals[0].shape == (2, 4)
        assert torch.equal(proposals[1][1], torch.tensor([10.0, 20.0, 60.0, 90.0]))
    with pytest.raises(FileNotFoundError, match="proposal cache not found"):
        _data(shapes_root, train_proposals=str(tmp_path / "missing.bin")).setup("fit")
    # the module asks the model: no proposals for a model with an RPN, a clear error for one without them
    rpn_model = DetectionModule(num_classes=3, model_kwargs=FAST)
    assert not rpn_model.model.requires_proposals and rpn_model._proposals([{"proposals": torch.zeros(1, 4)}]) == {}
    with pytest.raises(ValueError, match="fast_rcnn_tiny requires region proposals but the batch has no"):
        module._proposals([{"boxes": torch.zeros(0, 4)}])


def test_last_checkpoint_is_current_when_the_metric_stops_improving(tmp_path, shapes_root):
    from detkit.engine import AtomicCheckpointIO, DetectionCheckpoint
    from detkit.utils.checkpoint import load_checkpoint

    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, num_visualize=0, compute_val_loss=False)
    # a monitored value that never improves after the first epoch: only epoch 0 is "best"
    ckpt = DetectionCheckpoint(
        dirpath=str(tmp_path / "ckpt"), monitor="train/skipped_steps", mode="max", save_last=True
    )
    trainer = cpu_trainer(
        tmp_path,
        max_epochs=3,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[ckpt],
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=_data(shapes_root))
    last = load_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 3)
    assert load_checkpoint(ckpt.best_model_path)["global_step"] == 1


def test_channels_last_module_gives_the_same_losses_and_detections():
    torch.manual_seed(0)
    kwargs = dict(FAST, min_size=None, max_size=None)  # no resize: the layouts' interpolation differs by ~1e-4
    plain = DetectionModule(num_classes=3, model_kwargs=kwargs)
    nhwc = DetectionModule(num_classes=3, model_kwargs=kwargs, channels_last=True)
    nhwc.load_state_dict(plain.state_dict())
    convs = [m.weight for m in nhwc.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 128, 112, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 20.0, 90.0, 100.0], [5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([2, 3])},
    ]
    losses = []
    for module in (plain, nhwc):
        module.model.train()
        torch.manual_seed(3)  # same anchor/RoI sampling
        losses.append(module.model(images, targets))
        loss = sum(losses[-1].values())
        loss.backward()
    for name in losses[0]:
        torch.testing.assert_close(losses[1][name], losses[0][name], rtol=1e-4, atol=1e-5)
    grads = [[p.grad for p in m.parameters() if p.grad is not None] for m in (plain, nhwc)]
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-4)
    plain.eval()
    nhwc.eval()
    with torch.no_grad():
        det_plain, det_nhwc = plain(images), nhwc(images)
    for a, b in zip(det_plain, det_nhwc):
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(b["boxes"], a["boxes"], rtol=1e-4, atol=1e-3)
