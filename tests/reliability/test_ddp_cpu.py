"""Two CPU processes (gloo): evaluation gathering / de-duplication, and DDP training with a
non-finite loss on one rank only.

The validation set has 7 images: `DistributedSampler` pads rank 1 with a repeat of image 0,
whose detections must be counted once. (tests/engine/test_distributed.py runs
`Trainer.validate` under ddp_spawn for the same property.)
"""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DistributedSampler

from detkit.data import generate_shapes
from detkit.engine import DetectionModule, ShapesDataModule
from detkit.evaluation import COCOEvaluator, gather_and_deduplicate

FAST = {"rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50, "roi_batch_size_per_image": 32}
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fake_detections(image_id: int, gt: list[dict]) -> list[dict]:
    """Deterministic results of one image: jittered ground truth plus one false positive."""
    out = []
    for k, a in enumerate(gt):
        x, y, w, h = a["bbox"]
        d = (image_id % 3) + k
        out.append(
            {
                "image_id": image_id,
                "category_id": a["category_id"],
                "bbox": [x + d, y - d, w, h + d],
                "score": 0.3 + 0.07 * ((image_id * 5 + k) % 10),
            }
        )
    category = gt[0]["category_id"] if gt else 1
    out.append({"image_id": image_id, "category_id": category, "bbox": [1, 1, 30, 30], "score": 0.65})
    return out


def _gather_worker(rank: int, port: int, ann_file: str, out_dir: str) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60)
    )
    try:
        with open(ann_file) as f:
            gt = json.load(f)
        image_ids = [img["id"] for img in gt["images"]]
        sampler = DistributedSampler(range(len(image_ids)), num_replicas=WORLD, rank=rank, shuffle=False)
        mine = [image_ids[i] for i in sampler]  # rank 1 gets a padded repeat of the first image
        results = [r for i in mine for r in _fake_detections(i, [a for a in gt["annotations"] if a["image_id"] == i])]
        gathered: list = [None] * WORLD
        dist.all_gather_object(gathered, (results, mine))
        if rank == 0:
            merged = gather_and_deduplicate([g[0] for g in gathered])
            ids = sorted({i for g in gathered for i in g[1]})
            naive = [r for g in gathered for r in g[0]]
            evaluator = COCOEvaluator(ann_file)
            report = {
                "per_rank_ids": [g[1] for g in gathered],
                "ddp": evaluator.evaluate(merged, "bbox", img_ids=ids, verbose=False).stats,
                "naive": evaluator.evaluate(naive, "bbox", img_ids=ids, verbose=False).stats,
                "num_merged": len(merged),
            }
            with open(os.path.join(out_dir, "report.json"), "w") as f:
                json.dump(report, f)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # > 6 s: `make test-all`
def test_gloo_gather_deduplicates_padded_images_and_matches_single_process(tmp_path):
    ann_file = generate_shapes(tmp_path, split="val", num_images=7, seed=3)
    mp.spawn(_gather_worker, args=(_free_port(), str(ann_file), str(tmp_path)), nprocs=WORLD, join=True)
    with open(tmp_path / "report.json") as f:
        report = json.load(f)
    with open(ann_file) as f:
        gt = json.load(f)
    ids = [img["id"] for img in gt["images"]]
    assert report["per_rank_ids"][1][-1] == ids[0] and len(report["per_rank_ids"][1]) == 4  # padding happened

    single = [r for i in ids for r in _fake_detections(i, [a for a in gt["annotations"] if a["image_id"] == i])]
    expected = COCOEvaluator(str(ann_file)).evaluate(single, "bbox", verbose=False).stats
    assert report["num_merged"] == len(single)
    assert report["ddp"] == expected  # exactly the single-process numbers
    assert report["naive"] != expected  # without de-duplication the repeat would change them


# ------------------------------------------------------------------------------ DDP training
class NonFiniteOnRank1(DetectionModule):
    """NaN classifier loss on rank 1 only, in its first training step."""

    def training_step(self, batch, batch_idx):
        if self.global_rank != 1 or batch_idx != 0 or self.current_epoch != 0:
            return super().training_step(batch, batch_idx)
        real = self.model.forward

        def forward(images, targets=None, **kw):
            losses = real(images, targets, **kw)
            losses["loss_classifier"] = losses["loss_classifier"] * float("nan")
            return losses

        self.model.forward = forward
        try:
            return super().training_step(batch, batch_idx)
        finally:
            del self.model.forward


class RecordPerRank(Callback):
    """Each rank writes its step count, skipped steps and a weight checksum."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        weights = torch.cat([p.detach().flatten().double() for p in pl_module.model.parameters()])
        record = {
            "global_step": trainer.global_step,
            "skipped": pl_module.skipped_steps,
            "checksum": float(weights.sum()),
            "abs_checksum": float(weights.abs().sum()),
        }
        with open(os.path.join(self.out_dir, f"rank{trainer.global_rank}.json"), "w") as f:
            json.dump(record, f)


def _ddp(timeout_s: int = 120) -> DDPStrategy:
    # a timeout turns a collective mismatch (hang) into an error
    return DDPStrategy(start_method="spawn", process_group_backend="gloo", timeout=timedelta(seconds=timeout_s))


@pytest.mark.slow
def test_ddp_fit_skips_a_nonfinite_step_on_every_rank_together(tmp_path, release_process_group):
    torch.manual_seed(0)
    module = NonFiniteOnRank1(num_classes=3, model_kwargs=FAST, warmup_steps=1, max_bad_steps=3, num_visualize=0)
    data = ShapesDataModule(root=str(tmp_path / "shapes"), num_train=8, num_val=3, batch_size=2)
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=_ddp(),
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RecordPerRank(str(tmp_path)), release_process_group],
        default_root_dir=str(tmp_path),
    )
    trainer.fit(module, datamodule=data)
    ranks = []
    for r in range(WORLD):
        with open(tmp_path / f"rank{r}.json") as f:
            ranks.append(json.load(f))
    # rank 0's losses were finite, yet it skipped too: otherwise its backward would wait for
    # rank 1's gradients forever (DDP all-reduce)
    assert [r["skipped"] for r in ranks] == [1, 1]
    assert [r["global_step"] for r in ranks] == [2, 2]  # as on one process, a skipped batch counts as a step
    assert ranks[0]["checksum"] == ranks[1]["checksum"] and ranks[0]["abs_checksum"] == ranks[1]["abs_checksum"]


@pytest.mark.slow
def test_ddp_fit_with_validation_matches_single_process_metrics(tmp_path, release_process_group):
    """Validation inside DDP `fit` (CSV logger, as the CLI runs it) over 7 images on 2 ranks."""
    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, warmup_steps=1, num_visualize=0, compute_val_loss=False)
    data = dict(root=str(tmp_path / "shapes"), num_train=4, num_val=7, batch_size=2, val_batch_size=2)
    kwargs = dict(
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),  # the single-process validate writes its eval/ folder here
    )
    trainer = Trainer(
        devices=WORLD,
        strategy=_ddp(),
        max_steps=1,
        logger=CSVLogger(str(tmp_path), name="ddp"),
        callbacks=[release_process_group],
        **kwargs,
    )
    trainer.fit(module, datamodule=ShapesDataModule(**data))
    ddp = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    # ddp_spawn copies rank 0's trained weights back into `module`
    (single,) = Trainer(devices=1, logger=False, **kwargs).validate(module, datamodule=ShapesDataModule(**data))
    assert ddp, "no validation metrics came back from the DDP run"
    for name in ("val/AP", "val/AP50", "val/AR100"):
        assert ddp[name] == pytest.approx(single[name], abs=1e-6), name


@pytest.mark.slow
def test_ddp_predict_writes_deduplicated_coco_results(tmp_path, release_process_group):
    """`trainer.predict` under DDP with detkit's CocoPredictionWriter (what `detkit predict --config` runs)."""
    from detkit.engine import CocoPredictionWriter

    torch.manual_seed(0)
    module = DetectionModule(num_classes=3, model_kwargs=FAST, num_visualize=0)
    data = ShapesDataModule(root=str(tmp_path / "shapes"), num_train=2, num_val=3, batch_size=1, val_batch_size=1)
    trainer = Trainer(
        accelerator="cpu",
        devices=WORLD,
        strategy=_ddp(60),
        logger=CSVLogger(str(tmp_path), name="pred"),
        callbacks=[CocoPredictionWriter(), release_process_group],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.predict(module, datamodule=data, return_predictions=False)
    files = list(tmp_path.glob("pred/version_*/predictions.json"))
    assert len(files) == 1, files
    with open(files[0]) as f:
        results = json.load(f)
    assert results and {r["image_id"] for r in results} <= {1, 2, 3}
    keys = [(r["image_id"], r["category_id"], tuple(r["bbox"]), r["score"]) for r in results]
    assert len(set(keys)) == len(keys)  # the padded repeat (3 images on 2 ranks) was not added twice
