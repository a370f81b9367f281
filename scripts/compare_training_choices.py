"""Box losses and optimisers compared on the shapes data with faster_rcnn_tiny: same schedule, several seeds.

    python scripts/compare_training_choices.py --epochs 3 --seeds 0 1 --output runs/choices.json

Every run is one `detkit fit` of `configs/shapes_faster_rcnn_tiny.yaml` (subprocess) on
--train-images images for --epochs epochs (warm-up 50 steps, lr x0.1 at 75% and 90% of the
steps), evaluated once at the end on --val-images validation images (COCO AP, AP50, AP75).
Optimisers come through LightningCLI's `--optimizer` key, box losses through
`--model.model_kwargs.box_loss`; the loss runs use AdamW (the config's optimiser). Prints a
markdown table of mean +- spread over the seeds and the wall time per run.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

OPTIMIZERS = {
    "SGD momentum": ["--optimizer", "SGD", "--optimizer.lr", "0.02", "--optimizer.momentum", "0.9"],
    "RMSprop": ["--optimizer", "RMSprop", "--optimizer.lr", "0.001"],
    "Adam": ["--optimizer", "Adam", "--optimizer.lr", "0.001"],
    "AdamW": ["--optimizer", "AdamW", "--optimizer.lr", "0.001"],
}
LOSSES = ("smooth_l1", "giou", "ciou")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="data/shapes_choices")
    p.add_argument("--runs", default="runs/choices")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--only", choices=("optimizers", "losses"), default=None)
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    p.add_argument("--rpn-box-loss", default=None, choices=LOSSES, help="loss runs: the RPN's box loss apart")
    p.add_argument("--output", default=None, help="json with every run (updated after each)")
    return p.parse_args(argv)


def settings(
    only: str | None, losses=LOSSES, optimizers=tuple(OPTIMIZERS), rpn_box_loss: str | None = None
) -> list[tuple[str, str, list[str]]]:
    out = []
    if only in (None, "optimizers"):
        wd = ["--optimizer.weight_decay", "0.0001"]
        out += [("optimizer", name, OPTIMIZERS[name] + wd) for name in optimizers]
    if only in (None, "losses"):
        adamw = OPTIMIZERS["AdamW"] + ["--optimizer.weight_decay", "0.0001"]
        rpn = ["--model.model_kwargs.rpn_box_loss", rpn_box_loss] if rpn_box_loss else []
        suffix = f" (RPN {rpn_box_loss})" if rpn_box_loss else ""
        out += [("box loss", loss + suffix, adamw + ["--model.model_kwargs.box_loss", loss, *rpn]) for loss in losses]
    return out


def run_one(args, group: str, name: str, extra: list[str], seed: int) -> dict:
    tag = f"{group}-{name}-seed{seed}".replace(" ", "_").replace("(", "").replace(")", "")
    cmd = [
        sys.executable,
        "-m",
        "detkit",
        "fit",
        "--config",
        "configs/shapes_faster_rcnn_tiny.yaml",
        "--seed_everything",
        str(seed),
        "--trainer.max_epochs",
        str(args.epochs),
        "--trainer.check_val_every_n_epoch",
        str(args.epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        args.runs,
        "--trainer.logger.init_args.name",
        tag,
        "--data.init_args.root",
        args.root,
        "--data.init_args.num_train",
        str(args.train_images),
        "--data.init_args.num_val",
        str(args.val_images),
        "--model.num_visualize",
        "0",
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    metrics = sorted(glob.glob(os.path.join(args.runs, tag, "version_*", "eval", "epoch_*", "metrics.json")))[-1]
    with open(metrics, encoding="utf-8") as f:
        stats = json.load(f)["bbox"]["stats"]
    return {
        "group": group,
        "name": name,
        "seed": seed,
        "seconds": seconds,
        "AP": stats["AP"],
        "AP50": stats["AP50"],
        "AP75": stats["AP75"],
    }


def table(results: list[dict]) -> str:
    lines = ["| choice | AP | AP50 | AP75 | time per run |", "|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["group"], r["name"]) for r in results))
    for group, name in keys:
        rs = [r for r in results if (r["group"], r["name"]) == (group, name)]

        def cell(key, scale=100.0):
            values = [r[key] * scale for r in rs]
            spread = (max(values) - min(values)) / 2
            return f"{statistics.mean(values):.1f} +- {spread:.1f}"

        seconds = statistics.mean(r["seconds"] for r in rs)
        lines.append(f"| {group}: {name} | {cell('AP')} | {cell('AP50')} | {cell('AP75')} | {seconds / 60:.1f} min |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = []
    if args.output and os.path.isfile(args.output):  # resume: keep the runs already done
        with open(args.output, encoding="utf-8") as f:
            results = json.load(f)
    for group, name, extra in settings(args.only, args.losses, args.optimizers, args.rpn_box_loss):
        for seed in args.seeds:
            if any((r["group"], r["name"], r["seed"]) == (group, name, seed) for r in results):
                continue
            same = [r for r in results if (r["group"], r["name"], r["seed"]) == ("optimizer", "AdamW", seed)]
            if (group, name) == ("box loss", "smooth_l1") and same:  # the AdamW run: smooth L1 is the default
                results.append(dict(same[0], group=group, name=name))
            else:
                results.append(run_one(args, group, name, extra, seed))
            print(json.dumps(results[-1]), flush=True)
            if args.output:
                with open(args.output, "w", encoding="utf-8") as f:
                    json.dump(results, f, indent=1)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
