"""LightningCLI for detkit (`detkit fit|validate|test|predict --config X.yaml`) and the
checkpoint-only image predictor behind `detkit predict --input`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from detkit.engine.callbacks import CocoPredictionWriter, DetectionCheckpoint, LossCurveCallback
from detkit.engine.checkpoint_io import AtomicCheckpointIO, load_checkpoint
from detkit.engine.datamodule import DetectionDataModule
from detkit.engine.module import STATS_KEY, DetectionModule

__all__ = ["DetkitCLI", "build_model_from_checkpoint", "cli_main", "predict_files_main"]

PREDICT_CONFIG_HELP = (
    "Predict the config's validation split with a checkpoint (--ckpt_path); writes <log dir>/predictions.json "
    "(COCO results). The other form, on image files: detkit predict --checkpoint CKPT --input DIR|FILE --output OUT "
    "[--annotations GT.json] (detkit predict --help)."
)

PREDICT_EPILOG = """two forms:
  detkit predict --checkpoint CKPT --input DIR|FILE [...] --output OUT [--annotations GT.json] [--strict]
      (or --onnx MODEL.onnx from `detkit export` instead of --checkpoint: ONNX Runtime, same outputs)
      image files -> OUT/detections.json (COCO results, the data set's category ids; evaluate it with
      `detkit evaluate --annotations GT.json --predictions OUT/detections.json`) and OUT/images.json
  detkit predict --config CONFIG.yaml --ckpt_path CKPT [--key value ...]
      LightningCLI on the config's validation split -> <log dir>/predictions.json (COCO results);
      `detkit predict --config CONFIG.yaml --help` lists its options
"""

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


OPTIMIZER_HELP = (
    "Optimiser and LR schedule: any torch.optim class through --optimizer and --lr_scheduler, e.g. "
    "--optimizer RMSprop --optimizer.lr 0.001 --optimizer.momentum 0.9 --lr_scheduler MultiStepLR "
    "--lr_scheduler.milestones [6000,8000] (or optimizer: / lr_scheduler: with class_path and init_args "
    "in the YAML). detkit keeps its parameter groups (optimizer.weight_decay only on weights, never on "
    "norms and biases) and its linear warm-up (--model.warmup_steps, --model.warmup_factor), after which "
    "the scheduler starts, stepped per optimizer step. Without these keys --model.optimizer sgd|adamw, "
    "--model.lr, --model.lr_schedule step|cosine|constant and --model.lr_milestones apply."
)


class DetkitCLI(LightningCLI):
    """LightningCLI with detkit defaults.

    - `model.num_classes` is taken from the data module (`data.num_classes`).
    - A `DetectionCheckpoint` (section `checkpoint`) keeps the best `val/AP` and an always
      current `last.ckpt` in `<log dir>/checkpoints`; checkpoints are written atomically
      (`AtomicCheckpointIO`).
    - CSV logging under `runs/`; loss curves plotted at the end of `fit`; `predict` writes
      the COCO results json `<log dir>/predictions.json`.
    - `seed_everything` defaults to 0; the resolved config is saved as `<log dir>/config.yaml`.
    - LightningCLI's `optimizer:` / `lr_scheduler:` keys take any `torch.optim` optimiser and
      scheduler (`--optimizer RMSprop --optimizer.lr 0.001`); `DetectionModule` builds them on its
      parameter groups (no weight decay on norms and biases) behind its warm-up.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        parser_kwargs = kwargs["parser_kwargs"] = dict(kwargs.get("parser_kwargs") or {})
        parser_kwargs["predict"] = {"description": PREDICT_CONFIG_HELP, **(parser_kwargs.get("predict") or {})}
        defaults = kwargs.pop("trainer_defaults", {}) or {}
        defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "detkit"},
            },
            "callbacks": [LossCurveCallback(), CocoPredictionWriter()],
            **defaults,
        }
        super().__init__(
            DetectionModule,
            DetectionDataModule,
            subclass_mode_data=True,
            trainer_defaults=defaults,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.epilog = OPTIMIZER_HELP
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.add_lightning_class_args(DetectionCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/AP",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "best-epoch{epoch:03d}-AP{val/AP:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def _parse_ckpt_path(self) -> None:
        """Model hyper-parameters of a `--ckpt_path` checkpoint fill in what the command line and
        config leave at their defaults; values given explicitly win (and are said to win), so the
        saved config.yaml is what runs. `model.num_classes` comes from the data (a link target)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        ckpt = load_checkpoint(ckpt_path)
        self._ckpt_epoch = ckpt.get("epoch")
        given = self.config[subcommand].get("model")
        defaults = self._subcommand_parsers[subcommand].get_defaults().get("model")
        hparams, kept = {}, []
        for k, v in (ckpt.get("hyper_parameters") or {}).items():
            if k in ("_instantiator", "_class_path", "num_classes"):
                continue
            mine = given.get(k) if given is not None else None
            if given is not None and k in given and defaults is not None and mine != defaults.get(k) and mine != v:
                kept.append(f"model.{k}={mine!r} (checkpoint: {v!r})")
                continue
            hparams[k] = v
        if kept:
            print(f"detkit {subcommand}: using the given {', '.join(kept)}", file=sys.stderr)
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def _resolve_last(self, subcommand: str) -> None:
        """`--ckpt_path last`: Lightning looks only in this run's new version folder; use the newest
        `last.ckpt` of earlier versions of the same logger (`runs/<name>/version_*/checkpoints`)."""
        config = self.config_init[subcommand]
        if config.get("ckpt_path") != "last":
            return
        callback = self.trainer.checkpoint_callback
        if callback is not None and callback.dirpath and (Path(callback.dirpath) / "last.ckpt").is_file():
            return  # Lightning finds it itself
        logger = self.trainer.logger
        root = getattr(logger, "root_dir", None) if logger is not None else None
        candidates = (
            sorted(Path(root).glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime) if root else []
        )
        if candidates:
            config["ckpt_path"] = str(candidates[-1])
            print(f"resuming from {candidates[-1]}", file=sys.stderr)

    def before_fit(self) -> None:
        self._resolve_last("fit")
        epoch, max_epochs = getattr(self, "_ckpt_epoch", None), self.trainer.max_epochs
        if isinstance(epoch, int) and max_epochs is not None and 0 <= max_epochs <= epoch:
            raise ValueError(
                f"the checkpoint is at epoch {epoch} (counted from 0) but --trainer.max_epochs is {max_epochs}: "
                f"nothing would be trained; set --trainer.max_epochs above {epoch}"
            )

    def before_validate(self) -> None:
        self._resolve_last("validate")

    def before_test(self) -> None:
        self._resolve_last("test")

    def _add_configure_optimizers_method_to_model(self, subcommand: str | None) -> None:
        """Hand the `optimizer:` / `lr_scheduler:` specs to the module instead of LightningCLI's plain
        `configure_optimizers` (which would give the optimiser `model.parameters()`, one group, and drop
        detkit's warm-up)."""
        if not self.auto_configure_optimizers:
            return
        optimizer = self._get(self.config_init, "optimizer")
        scheduler = self._get(self.config_init, "lr_scheduler")
        if optimizer or scheduler:
            self.model.use_optimizer(optimizer or None, scheduler or None)

    def instantiate_trainer(self, **kwargs: Any):
        plugins = kwargs.get("plugins", self._get(self.config_init, "trainer", default={}).get("plugins"))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        return super().instantiate_trainer(**kwargs)


def cli_main(args: Sequence[str] | None = None, run: bool = True) -> DetkitCLI:
    """Run the LightningCLI (`args` as on the command line, e.g. `["fit", "--config", "x.yaml"]`)."""
    if args is None:
        return DetkitCLI(run=run)
    saved = sys.argv
    sys.argv = [saved[0] if saved else "detkit", *args]  # LightningCLI warns when args and sys.argv differ
    try:
        return DetkitCLI(run=run)
    except Exception as e:
        # DataLoader re-raises a worker's error as "Caught X in DataLoader worker process N" plus its
        # traceback: give the worker's own one-line message, as with num_workers=0
        text = str(e)
        if "in DataLoader worker process" in text and "Original Traceback" in text:
            from detkit.data.io import _worker_error_line

            kind = OSError if isinstance(e, OSError) else ValueError
            raise kind(_worker_error_line(text)) from e
        raise
    finally:
        sys.argv = saved


# ---------------------------------------------------------------------- predict --input
def build_model_from_checkpoint(
    path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[torch.nn.Module, list[str] | None]:
    """Detector and class names from a detkit Lightning checkpoint (loaded with weights_only=True).

    The detector's `label_to_category_id` attribute holds the training data's `{label: category id}`
    (None for checkpoints written before detkit stored it).

    `backbone_weights` in the saved model arguments is ignored: the checkpoint holds all weights.
    """
    from detkit.models import build_model

    ckpt = load_checkpoint(path, map_location=map_location)
    info = ckpt.get(STATS_KEY) or {}
    hparams = ckpt.get("hyper_parameters") or {}
    model_name = info.get("model_name", hparams.get("model_name"))
    num_classes = info.get("num_classes", hparams.get("num_classes"))
    model_kwargs = dict(info.get("model_kwargs", hparams.get("model_kwargs")) or {})
    if model_name is None or num_classes is None or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a detkit training checkpoint (no model name / num_classes / state_dict)")
    model_kwargs.pop("backbone_weights", None)
    model = build_model(model_name, num_classes=int(num_classes), **model_kwargs)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not match {model_name}: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    model.label_to_category_id = _load_category_map(path, info, int(num_classes))  # type: ignore[assignment]
    return model.eval(), info.get("class_names")


def _load_category_map(path: str | os.PathLike, info: dict, num_classes: int) -> dict[int, int] | None:
    """`{label: category_id}` stored in a checkpoint (None for checkpoints written before it was stored)."""
    stored = info.get("label_to_category_id")
    if not stored:
        return None
    mapping = {int(k): int(v) for k, v in dict(stored).items()}
    if sorted(mapping) != list(range(1, num_classes + 1)):
        raise ValueError(f"{path}: label_to_category_id does not cover labels 1..{num_classes}: {mapping}")
    return mapping


def _ground_truth_ids(path: str, class_names: Sequence[str] | None) -> tuple[dict[str, int], dict[int, int]]:
    """`{file_name: image_id}` and `{label: category_id}` (categories sorted by id) of a COCO json."""
    from detkit.data import load_coco_json

    data = load_coco_json(path)
    by_name = {}
    for img in data["images"]:
        if isinstance(img, dict) and isinstance(img.get("file_name"), str) and type(img.get("id")) is int:
            by_name[Path(img["file_name"]).as_posix()] = img["id"]
    cats = sorted(
        (c for c in data["categories"] if isinstance(c, dict) and type(c.get("id")) is int), key=lambda c: c["id"]
    )
    names = [c.get("name") for c in cats]
    if class_names and names != list(class_names):
        raise ValueError(f"{path}: categories {names} differ from the checkpoint's classes {list(class_names)}")
    return by_name, {i + 1: c["id"] for i, c in enumerate(cats)}


def _match_annotations(
    files: list[tuple[Path, str]], annotations: str, by_name: dict[str, int], prog: str
) -> tuple[list[tuple[Path, str]], list[int]]:
    """The input files listed in the annotations (by file_name relative to the input folder) and their
    image ids; other files are left out and said, images of the annotations not found are said."""
    kept = [(p, n) for p, n in files if n in by_name]
    if not kept:
        raise ValueError(
            f"none of the {len(files)} input files is an images entry of {annotations}: file_name must be relative "
            f"to the --input folder (first input file: {files[0][1]!r}; first file_name: {next(iter(by_name), None)!r})"
        )
    if len(kept) < len(files):
        print(f"{prog}: {len(files) - len(kept)} input file(s) are not in {annotations}; left out", file=sys.stderr)
    absent = len(by_name) - len({n for _, n in kept})
    if absent:
        print(f"{prog}: warning: {absent} image(s) of {annotations} are not under the input; they get no detections",
              file=sys.stderr)  # fmt: skip
    return kept, [by_name[n] for _, n in kept]


def _list_images(inputs: Sequence[str]) -> list[tuple[Path, str]]:
    """(path, name relative to its input) of every image file under the inputs, sorted."""
    found = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
            found += [(f, f.relative_to(p).as_posix()) for f in files]
        elif p.is_file():
            found.append((p, p.name))
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not found:
        raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found in {', '.join(inputs)}")
    return found


def _output_names(names: Sequence[str]) -> list[str]:
    out, used = [], set()
    for name in names:
        stem = Path(name).with_suffix("").as_posix().replace("/", "__")
        candidate, k = stem, 1
        while candidate in used:
            candidate, k = f"{stem}_{k}", k + 1
        used.add(candidate)
        out.append(candidate + ".png")
    return out


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def predict_files_main(argv: Sequence[str] | None = None, prog: str = "detkit predict") -> int:
    """`detkit predict --checkpoint CKPT --input DIR|FILE --output OUT`: detections of image files.

    Writes `OUT/detections.json`, a COCO results list (`image_id`, `category_id` -- the data set's
    own ids --, `bbox` XYWH, `score`, and RLE `segmentation` for mask models) that
    `detkit evaluate` reads as it is; `OUT/images.json` (`images`: id, file_name, width, height
    of every predicted file; `categories`; `skipped`: unreadable files and why); and one PNG per
    image with its detections drawn. Image ids come from `--annotations` (matched by `file_name`
    relative to the input folder), else they are 1..N in sorted file order.
    """
    from detkit.data import ImageReadError, read_image_rgb
    from detkit.evaluation.results import save_results_json

    parser = argparse.ArgumentParser(
        prog=prog,
        description="Detect objects in image files with a trained checkpoint; writes a COCO results list.",
        epilog=PREDICT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="Lightning checkpoint written by `detkit fit`")
    source.add_argument("--onnx", help="ONNX file written by `detkit export` (run with ONNX Runtime on the CPU)")
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--annotations",
        help="COCO json whose images entries give the image ids (file_name relative to the input folder)",
    )
    parser.add_argument(
        "--score-threshold", type=float, default=0.0, help="keep detections scoring at least this (default: all)"
    )
    parser.add_argument("--draw-threshold", type=float, default=0.5, help="draw detections scoring at least this")
    parser.add_argument(
        "--strict", action="store_true", help="fail on the first unreadable file instead of skipping it"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass")
    parser.add_argument("--no-draw", action="store_true", help="write the json files only")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    device = _resolve_device(args.device)
    files = _list_images(args.input)
    if args.onnx:
        from detkit.export.runner import OnnxPredictor

        model = OnnxPredictor(args.onnx)
        class_names = model.class_names
    else:
        model, class_names = build_model_from_checkpoint(args.checkpoint)
    label_map = getattr(model, "label_to_category_id", None)
    by_name: dict[str, int] = {}
    if args.annotations is not None:
        if not os.path.isfile(args.annotations):
            raise FileNotFoundError(f"annotations file not found: {args.annotations}")
        by_name, gt_map = _ground_truth_ids(args.annotations, class_names)
        if label_map is None:
            label_map = gt_map
        elif label_map != gt_map:
            raise ValueError(
                f"{args.annotations}: category ids {sorted(gt_map.values())} differ from the checkpoint's "
                f"{sorted(label_map.values())}"
            )
    identity = label_map is None  # a checkpoint from before category ids were stored
    if identity:
        label_map = {k: k for k in range(1, int(getattr(model, "num_classes", 0) or len(class_names or ())) + 1)}
    image_ids = list(range(1, len(files) + 1))  # without annotations: 1..N in sorted file order
    if args.annotations is not None:
        files, image_ids = _match_annotations(files, args.annotations, by_name, prog)
    model.to(device)
    out_names = _output_names([name for _, name in files])
    os.makedirs(args.output, exist_ok=True)

    results: list[dict] = []
    images_meta: list[dict] = []
    skipped: list[dict] = []
    readable = []
    for (path, name), image_id, png in zip(files, image_ids, out_names):
        try:
            readable.append((name, image_id, png, read_image_rgb(path)))
        except ImageReadError as e:
            if args.strict:
                raise
            skipped.append({"file_name": name, "reason": e.reason})
        if len(readable) == args.batch_size:
            _predict_chunk(model, readable, device, args, results, images_meta, label_map, class_names)
            readable = []
    if readable:
        _predict_chunk(model, readable, device, args, results, images_meta, label_map, class_names)

    out_json = os.path.join(args.output, "detections.json")
    save_results_json(results, out_json)
    categories = [
        {"id": cid, "name": class_names[label - 1] if class_names and label <= len(class_names) else str(label)}
        for label, cid in sorted(label_map.items())
    ]
    meta = {
        "checkpoint": os.fspath(args.checkpoint or args.onnx),
        "images": images_meta,
        "categories": categories,
        "skipped": skipped,
    }
    save_results_json(meta, os.path.join(args.output, "images.json"))
    print(f"{len(images_meta)} images, {len(results)} detections -> {out_json}")
    if identity:
        print(
            f"{prog}: warning: {args.checkpoint or args.onnx} stores no category ids; "
            f"category_id = label (1..{len(label_map)}); pass --annotations to use the data set's ids",
            file=sys.stderr,
        )
    if skipped:
        names = ", ".join(f"{s['file_name']} ({s['reason']})" for s in skipped[:3])
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        print(f"{prog}: skipped {len(skipped)} unreadable file(s): {names}{more} (see images.json)", file=sys.stderr)
    return 0


def _predict_chunk(model, chunk, device, args, results, images_meta, label_map, class_names) -> None:
    """Predict one batch of read images; append its COCO results and image entries."""
    from detkit.engine.visualize import draw_detections, save_png
    from detkit.evaluation.results import detections_to_coco_results

    images = [torch.from_numpy(a).permute(2, 0, 1).to(device=device, dtype=torch.float32).div_(255) for *_, a in chunk]
    try:
        with torch.inference_mode():
            detections = model.predict(images)
    except torch.OutOfMemoryError:
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise MemoryError(
            f"out of memory on {device} predicting {len(images)} image(s): use a smaller --batch-size "
            f"(now {args.batch_size}), smaller images, or --device cpu"
        ) from None
    for (name, image_id, png, array), det in zip(chunk, detections):
        det = {k: v.cpu() for k, v in det.items()}
        keep = det["scores"] >= args.score_threshold
        det = {k: v[keep] for k, v in det.items()}
        results.extend(detections_to_coco_results([image_id], [det], label_to_category_id=label_map))
        entry = {"id": image_id, "file_name": name, "width": int(array.shape[1]), "height": int(array.shape[0])}
        if not args.no_draw:
            shown = det["scores"] >= args.draw_threshold
            drawn = draw_detections(
                array,
                det["boxes"][shown],
                det["labels"][shown],
                det["scores"][shown],
                det["masks"][shown] if "masks" in det else None,
                class_names=class_names,
            )
            save_png(os.path.join(args.output, png), drawn)
            entry["drawing"] = png
        images_meta.append(entry)
