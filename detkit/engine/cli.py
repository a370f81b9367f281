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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class DetkitCLI(LightningCLI):
    """LightningCLI with detkit defaults.

    - `model.num_classes` is taken from the data module (`data.num_classes`).
    - A `DetectionCheckpoint` (section `checkpoint`) keeps the best `val/AP` and an always
      current `last.ckpt` in `<log dir>/checkpoints`; checkpoints are written atomically
      (`AtomicCheckpointIO`).
    - CSV logging under `runs/`; loss curves plotted at the end of `fit`; `predict` writes
      the COCO results json `<log dir>/predictions.json`.
    - `seed_everything` defaults to 0; the resolved config is saved as `<log dir>/config.yaml`.
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
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
        # `model.num_classes` is a link target (it comes from the data); drop it from the
        # checkpoint's hyper-parameters that LightningCLI merges into the config.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            ckpt = load_checkpoint(ckpt_path)
            hparams = {
                k: v
                for k, v in (ckpt.get("hyper_parameters") or {}).items()
                if k not in ("_instantiator", "_class_path", "num_classes")
            }
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

    def before_validate(self) -> None:
        self._resolve_last("validate")

    def before_test(self) -> None:
        self._resolve_last("test")

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
    finally:
        sys.argv = saved


# ---------------------------------------------------------------------- predict --input
def build_model_from_checkpoint(
    path: str | os.PathLike, map_location: str = "cpu"
) -> tuple[torch.nn.Module, list[str] | None]:
    """Detector and class names from a detkit Lightning checkpoint (loaded with weights_only=True).

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
    return model.eval(), info.get("class_names")


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


def _mask_rles(masks: torch.Tensor) -> list[dict]:
    """COCO compressed RLEs (str counts) of binary `Tensor[D, H, W]` masks."""
    import numpy as np
    from pycocotools import mask as mask_utils

    arr = np.asfortranarray(masks.to(torch.uint8).permute(1, 2, 0).numpy())
    rles = mask_utils.encode(arr) if arr.shape[2] else []
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


def predict_files_main(argv: Sequence[str] | None = None, prog: str = "detkit predict") -> int:
    """`detkit predict --checkpoint CKPT --input IMG_OR_DIR --output DIR`: detections of image files.

    Writes `DIR/detections.json` (per file: boxes XYXY, scores, labels, class names, and
    COCO-RLE masks for mask models) and one PNG per image with the detections drawn.
    """
    from detkit.data import ImageReadError, read_image_rgb
    from detkit.engine.visualize import draw_detections, save_png
    from detkit.evaluation.results import save_results_json

    parser = argparse.ArgumentParser(prog=prog, description="Detect objects in image files with a trained checkpoint.")
    parser.add_argument("--checkpoint", required=True, help="Lightning checkpoint written by `detkit fit`")
    parser.add_argument("--input", required=True, nargs="+", help="image files and/or folders (searched recursively)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--score-threshold", type=float, default=0.5, help="keep detections scoring at least this")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--no-draw", action="store_true", help="write the json only")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")

    device = _resolve_device(args.device)
    files = _list_images(args.input)
    model, class_names = build_model_from_checkpoint(args.checkpoint)
    model.to(device)
    out_names = _output_names([name for _, name in files])
    os.makedirs(args.output, exist_ok=True)

    entries = []
    for start in range(0, len(files), args.batch_size):
        chunk = files[start : start + args.batch_size]
        arrays = []
        for path, _ in chunk:
            try:
                arrays.append(read_image_rgb(path))
            except ImageReadError as e:
                raise FileNotFoundError(str(e)) from None
        images = [torch.from_numpy(a).permute(2, 0, 1).to(device=device, dtype=torch.float32).div_(255) for a in arrays]
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
        for (path, name), array, det, png in zip(chunk, arrays, detections, out_names[start:]):
            keep = det["scores"] >= args.score_threshold
            det = {k: v[keep].cpu() for k, v in det.items()}
            labels = det["labels"].tolist()
            entry: dict[str, Any] = {
                "file": name,
                "path": str(path),
                "width": int(array.shape[1]),
                "height": int(array.shape[0]),
                "boxes": [[round(v, 2) for v in box] for box in det["boxes"].tolist()],
                "scores": [round(s, 4) for s in det["scores"].tolist()],
                "labels": labels,
                "class_names": [
                    class_names[k - 1] if class_names and 1 <= k <= len(class_names) else str(k) for k in labels
                ],
            }
            if "masks" in det:
                entry["masks"] = _mask_rles(det["masks"])
            if not args.no_draw:
                drawn = draw_detections(
                    array, det["boxes"], det["labels"], det["scores"], det.get("masks"), class_names=class_names
                )
                save_png(os.path.join(args.output, png), drawn)
                entry["drawing"] = png
            entries.append(entry)
    out_json = os.path.join(args.output, "detections.json")
    save_results_json(
        {"checkpoint": os.fspath(args.checkpoint), "score_threshold": args.score_threshold, "images": entries}, out_json
    )
    total = sum(len(e["labels"]) for e in entries)
    print(f"{len(entries)} images, {total} detections -> {out_json}")
    return 0
