"""Train and evaluate R-CNN, Fast R-CNN and Faster R-CNN (same 7-conv backbone) on the shapes data, on a CPU.

    python scripts/compare_rcnn_family.py --train-steps 300 --train-images 1000 --val-images 100 --batch-size 8
    python scripts/compare_rcnn_family.py --models rcnn_tiny rcnn_alexnet --train-steps 150 --threads 1

Selective-search proposals (OpenCV, "fast" mode) are computed once per split into proposal
caches under --root (train: all workers, reused across runs; val: recomputed on one
process each run, so that their time per image is measured). Every model gets the same
plain PyTorch loop (SGD with momentum, linear warm-up, step decay at 80%), the same data
(horizontal flips) and the same number of steps. Test time is measured on single images;
for R-CNN and Fast R-CNN the selective-search time per image is reported on its own and
added to the test time. Prints a markdown table (COCO AP / AP50 and the VOC07 11-point mAP,
the papers' metric, from detkit.evaluation), the times relative to the first model of the run
(times of one run are comparable with each other even on a busy machine; absolute ones are not).

`rcnn_alexnet` (the R-CNN paper's AlexNet, from scratch: no ImageNet weights here) is a choice,
not a default: it runs every region through AlexNet at 227 x 227 and is about ten times slower
per step than `rcnn_tiny`. What a model does differently (crop size, context, regions per step,
dropout, parameters) comes from its registered defaults, as `detkit fit` would build it; the
script prints these settings and which of them differ between the models of the run. The
schedule (steps, images per step, learning rate, warm-up) is the same for every model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from itertools import cycle

import torch
from torch.utils.data import DataLoader

from detkit.data import ShapesDataset, build_transforms, collate_detection
from detkit.data.proposals import WithProposals
from detkit.evaluation import COCOEvaluator, VOCGroundTruth, detections_to_coco_results, evaluate_voc
from detkit.models import build_model, fast_rcnn, rcnn  # noqa: F401  (register the proposal-based models)
from detkit.proposals import compute_proposals

MODELS = ("rcnn_tiny", "fast_rcnn_tiny", "faster_rcnn_tiny", "rcnn_alexnet")
DEFAULT_MODELS = ("rcnn_tiny", "fast_rcnn_tiny", "faster_rcnn_tiny")
WITHOUT_PROPOSALS = ("faster_rcnn_tiny",)  # its RPN makes its own
OUTPUT_FORMATS = {".json": "json", ".md": "markdown"}  # --output name suffix -> what is written


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default="data/shapes_compare", help="shapes data and proposal caches")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--train-images", type=int, default=1000)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for selective search on train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--output",
        default=None,
        help="also write the results here: a .json file gets the raw numbers (args, rows, settings) as JSON, "
        "a .md file the tables as Markdown followed by the raw numbers in a json block",
    )
    args = p.parse_args(argv)
    if args.output is not None and os.path.splitext(args.output)[1].lower() not in OUTPUT_FORMATS:
        p.error(f"--output {args.output}: the name must end in .json (JSON) or .md (Markdown)")
    return args


def write_output(path: str, text: str, raw: dict) -> None:
    """The run's results at `path`: JSON (`raw`) for .json, Markdown (`text`, then `raw` in a json block) for .md."""
    kind = OUTPUT_FORMATS[os.path.splitext(path)[1].lower()]
    with open(path, "w", encoding="utf-8") as f:
        if kind == "json":
            json.dump(raw, f, indent=1)
            f.write("\n")
        else:
            f.write(text + "\n```json\n" + json.dumps(raw, indent=1) + "\n```\n")


def image_list(dataset: ShapesDataset) -> list[tuple[int, str]]:
    with open(dataset.ann_file, encoding="utf-8") as f:
        images = json.load(f)["images"]
    return [(int(im["id"]), os.path.join(dataset.image_root, im["file_name"])) for im in images]


def proposals_for(dataset: ShapesDataset, path: str, *, workers: int, fresh: bool) -> float:
    """Fill the cache at `path` for `dataset`; seconds per image of this run (single process if `fresh`)."""
    if fresh and os.path.exists(path):
        os.remove(path)
    images = image_list(dataset)
    start = time.perf_counter()
    compute_proposals(images, path, mode="fast", workers=1 if fresh else workers, progress=False)
    return (time.perf_counter() - start) / len(images)


def model_settings(model) -> dict:
    """What the model's own defaults set, beside the shared schedule (printed per model)."""
    settings = {
        "backbone": type(model.backbone).__name__,
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "dropout": max((m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)), default=0.0),
    }
    if hasattr(model, "crop_size"):  # R-CNN: every region is warped and runs through the whole CNN
        settings.update(
            crop_size=model.crop_size,
            context_padding=model.context_padding,
            regions_per_step=model.sampler.batch_size_per_image,
            positive_fraction=model.sampler.positive_fraction,
            box_features=model.box_features,
            test_batch_size=model.test_batch_size,
        )
    return settings


def differing(settings: dict[str, dict]) -> list[str]:
    """`key: model=value, ...` for every setting whose value is not the same for all models."""
    lines = []
    for key in dict.fromkeys(k for s in settings.values() for k in s):
        values = {name: s.get(key, "-") for name, s in settings.items()}
        if len(set(map(str, values.values()))) > 1:
            lines.append(f"{key}: " + ", ".join(f"{name}={v}" for name, v in values.items()))
    return lines


def train(model, loader, *, steps: int, lr: float, warmup: int, needs_proposals: bool) -> float:
    """Plain SGD loop; returns seconds per iteration (data loading included)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=0.9
    )

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(warmup, 1))
        return warm * (0.1 if step >= 0.8 * steps else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    model.train()
    batches = cycle(loader)
    start = time.perf_counter()
    for step in range(steps):
        images, targets = next(batches)
        kwargs = {"proposals": [t["proposals"] for t in targets]} if needs_proposals else {}
        losses = model(images, targets, **kwargs)
        total = sum(losses.values())
        if not math.isfinite(total.item()):
            raise RuntimeError(f"non-finite loss at step {step}: { ({k: v.item() for k, v in losses.items()}) }")
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            print(
                f"  step {step:4d}  loss {total.item():.4f}  "
                + "  ".join(f"{k} {v.item():.3f}" for k, v in losses.items()),
                flush=True,
            )
    return (time.perf_counter() - start) / steps


@torch.no_grad()
def evaluate(model, dataset, *, needs_proposals: bool) -> tuple[dict[str, float], float]:
    """COCO stats on `dataset` and seconds per image of `predict` (one image at a time)."""
    model.eval()
    results, elapsed = [], 0.0
    for i in range(len(dataset)):
        image, target = dataset[i]
        image = image.as_subclass(torch.Tensor)
        kwargs = {"proposals": [target["proposals"]]} if needs_proposals else {}
        start = time.perf_counter()
        detections = model.predict([image], **kwargs)
        elapsed += time.perf_counter() - start
        results += detections_to_coco_results(
            [int(target["image_id"])], detections, label_to_category_id=dataset.label_to_category_id
        )
    stats = dict(COCOEvaluator(dataset.ann_file).evaluate(results, verbose=False).stats)
    stats["VOC07_mAP"] = evaluate_voc(VOCGroundTruth.from_coco(dataset.ann_file), results, "voc07").mAP
    return stats, elapsed / len(dataset)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = args.root
    train_set = ShapesDataset(
        root,
        "train",
        num_images=args.train_images,
        transforms=build_transforms(True, min_size=None, max_size=None, hflip_prob=0.5),
    )
    val_set = ShapesDataset(root, "val", num_images=args.val_images)
    print(f"shapes: {len(train_set)} train / {len(val_set)} val images under {root}", flush=True)

    train_cache = os.path.join(root, f"proposals_train_{args.train_images}.bin")
    val_cache = os.path.join(root, f"proposals_val_{args.val_images}.bin")
    proposal_s = {}
    if any(m not in WITHOUT_PROPOSALS for m in args.models):
        t = proposals_for(train_set, train_cache, workers=args.workers, fresh=False)
        print(
            f"selective search, train: {t:.4f} s/image this run ({args.workers} processes; 0 when cached)", flush=True
        )
        proposal_s["val"] = proposals_for(val_set, val_cache, workers=1, fresh=True)
        print(f"selective search, val: {proposal_s['val']:.4f} s/image (one process)", flush=True)
        train_data = WithProposals(train_set, train_cache)
        val_data = WithProposals(val_set, val_cache)
        counts = [len(val_data[i][1]["proposals"]) for i in range(len(val_data))]
        print(f"val proposals per image: mean {sum(counts) / len(counts):.1f}, max {max(counts)}", flush=True)
    else:
        train_data, val_data = train_set, val_set

    rows, settings = [], {}
    for name in args.models:
        torch.manual_seed(args.seed)
        needs = name not in WITHOUT_PROPOSALS
        model = build_model(name, num_classes=train_set.num_classes)
        settings[name] = model_settings(model)
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in settings[name].items()), flush=True)
        loader = DataLoader(
            train_data,
            batch_size=args.batch_size,
            shuffle=True,
            collate_fn=collate_detection,
            drop_last=True,
            generator=torch.Generator().manual_seed(args.seed),
        )
        print(f"{name}: training {args.train_steps} steps of {args.batch_size} images", flush=True)
        train_s = train(
            model, loader, steps=args.train_steps, lr=args.lr, warmup=args.warmup_steps, needs_proposals=needs
        )
        stats, test_s = evaluate(model, val_data if needs else val_set, needs_proposals=needs)
        prop_s = proposal_s["val"] if needs else 0.0
        rows.append(
            {
                "model": name,
                "AP": stats["AP"],
                "AP50": stats["AP50"],
                "VOC07_mAP": stats["VOC07_mAP"],
                "train_s_per_iter": train_s,
                "test_s_per_image": test_s + prop_s,
                "model_s_per_image": test_s,
                "proposal_s_per_image": prop_s,
            }
        )
        print(
            f"  AP {stats['AP']:.3f}  AP50 {stats['AP50']:.3f}  VOC07 mAP {stats['VOC07_mAP']:.3f}  "
            f"train {train_s:.3f} s/iter  "
            f"test {test_s + prop_s:.4f} s/image",
            flush=True,
        )

    table = [
        "| model | AP | AP50 | VOC07 mAP | train s/iter | test s/image (incl. proposals) "
        "| of which proposals s/image |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        prop = f"{r['proposal_s_per_image']:.4f}" if r["proposal_s_per_image"] else "- (RPN, in the model)"
        table.append(
            f"| {r['model']} | {100 * r['AP']:.1f} | {100 * r['AP50']:.1f} | {100 * r['VOC07_mAP']:.1f} | "
            f"{r['train_s_per_iter']:.3f} | "
            f"{r['test_s_per_image']:.4f} | {prop} |"
        )
    setup = (
        f"{args.train_steps} steps x {args.batch_size} images ({args.train_images} train images), "
        f"{args.val_images} val images, {torch.get_num_threads()} torch threads, CPU"
    )
    text = "\n".join(table) + f"\n\n{setup}\n"
    if len(rows) > 1:
        ref = rows[0]
        relative = [
            f"| model | train s/iter / {ref['model']} | test s/image / {ref['model']} (incl. proposals) "
            "| model s/image / " + ref["model"] + " |",
            "|---|---|---|---|",
        ]
        for r in rows:
            relative.append(
                f"| {r['model']} | {r['train_s_per_iter'] / ref['train_s_per_iter']:.2f} | "
                f"{r['test_s_per_image'] / ref['test_s_per_image']:.2f} | "
                f"{r['model_s_per_image'] / ref['model_s_per_image']:.2f} |"
            )
        text += "\n" + "\n".join(relative) + "\n"
        diff = differing(settings)
        text += (
            "\nper-model settings that differ (the schedule above is the same for all):\n"
            + ("\n".join(f"- {line}" for line in diff) if diff else "- none")
            + "\n"
        )
    print("\n" + text)
    if args.output:
        write_output(args.output, text, {"args": vars(args), "rows": rows, "settings": settings})
    return 0


if __name__ == "__main__":
    sys.exit(main())
