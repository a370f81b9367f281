"""`detkit fit | validate | test` (and `detkit predict --config`): one LightningCLI on `DetectionModule`.

    detkit fit --config shapes_faster_rcnn_tiny [--trainer.max_epochs 2 ...]
    detkit validate --config CONFIG --ckpt_path CKPT

Only public LightningCLI hooks are overridden (`parse_arguments`, `add_arguments_to_parser`,
`before_instantiate_classes`, `after_instantiate_classes`, `instantiate_trainer`, `before_<command>`).
"""

from __future__ import annotations

import inspect
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, LRSchedulerTypeTuple
from lightning.pytorch.plugins.io import CheckpointIO
from torch.optim import Optimizer

from detkit.cli.configs import resolve_config_args
from detkit.engine.callbacks import CocoPredictionWriter, DetectionCheckpoint, LossCurveCallback
from detkit.engine.checkpoint_io import AtomicCheckpointIO
from detkit.engine.datamodule import DetectionDataModule
from detkit.engine.module import DetectionModule
from detkit.utils.checkpoint import load_checkpoint

__all__ = ["EXAMPLES", "PREDICT_CONFIG_HELP", "SUBCOMMANDS", "DetkitCLI", "ExamplesHelpFormatter", "cli_main", "run"]

SUBCOMMANDS = ("fit", "validate", "test", "predict")  # LightningCLI subcommands

PREDICT_CONFIG_HELP = (
    "Predict the config's validation split with a checkpoint (--ckpt_path); writes <log dir>/predictions.json "
    "(COCO results). The other form, on image files: detkit predict --checkpoint CKPT --input DIR|FILE --output OUT "
    "[--annotations GT.json] (detkit predict --help)."
)

OPTIMIZER_HELP = (
    "Optimiser and LR schedule: any torch.optim class through --optimizer and --lr_scheduler, e.g. "
    "--optimizer RMSprop --optimizer.lr 0.001 --optimizer.momentum 0.9 --lr_scheduler MultiStepLR "
    "--lr_scheduler.milestones [6000,8000] (or optimizer: / lr_scheduler: with class_path and init_args "
    "in the YAML). detkit keeps its parameter groups (optimizer.weight_decay only on weights, never on "
    "norms and biases) and its linear warm-up (--model.warmup_steps, --model.warmup_factor), after which "
    "the scheduler starts, stepped per optimizer step. Without these keys --model.optimizer sgd|adamw, "
    "--model.lr, --model.lr_schedule step|cosine|constant and --model.lr_milestones apply."
)

# `detkit <command> --help` ends with these (tests/test_cli_help.py parses each example)
SHAPES_CHECKPOINT = "runs/shapes_faster_rcnn_tiny/version_0/checkpoints/last.ckpt"  # what `make train` writes first
AFTER_FIT = "examples (with the checkpoint of `detkit fit --config shapes_faster_rcnn_tiny`):"
EXAMPLES = {
    "fit": """examples (the first is `make train`; results under runs/shapes_faster_rcnn_tiny/version_N/):
  detkit fit --config shapes_faster_rcnn_tiny
  detkit fit --config shapes_faster_rcnn_tiny --trainer.max_epochs 1 --data.batch_size 8   # a quicker run""",
    "validate": f"""{AFTER_FIT}
  detkit validate --config shapes_faster_rcnn_tiny \\
      --ckpt_path {SHAPES_CHECKPOINT}""",
    "test": f"""{AFTER_FIT}
  detkit test --config shapes_faster_rcnn_tiny \\
      --ckpt_path {SHAPES_CHECKPOINT}""",
    "predict": f"""{AFTER_FIT}
  detkit predict --config shapes_faster_rcnn_tiny \\
      --ckpt_path {SHAPES_CHECKPOINT}   # writes <log dir>/predictions.json""",
}


class ExamplesHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help formatter that keeps the epilog's examples as written: a paragraph whose
    lines after the first are indented is printed line by line; other paragraphs are re-wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if len(lines) > 1 and all(line.startswith(" ") for line in lines[1:]):
                paragraphs.append("\n".join(indent + line for line in lines))
            else:
                paragraphs.append(super()._fill_text(paragraph, width, indent))
        return "\n\n".join(paragraphs)


def _data_class_names(data: DetectionDataModule) -> list[str] | None:
    """The data module's class names for `model.class_names`; None where they are read from annotation
    files that do not exist yet (a config instantiated without its data: setup names the missing file)."""
    try:
        return [str(n) for n in data.class_names]
    except FileNotFoundError:
        return None


class DetkitCLI(LightningCLI):
    """LightningCLI with detkit defaults.

    - `model.num_classes` and `model.class_names` are taken from the data module: `--model.weights CK`
      with other classes fine-tunes, carrying over the classes whose names CK records.
    - A `DetectionCheckpoint` (section `checkpoint`) keeps the best `val/AP` and an always
      current `last.ckpt` in `<log dir>/checkpoints`; checkpoints are written atomically
      (`AtomicCheckpointIO`).
    - CSV logging under `runs/`; loss curves plotted at the end of `fit`; `predict` writes
      the COCO results json `<log dir>/predictions.json`; evaluation files and pictures come
      from the module's `EvaluationWriter` callback.
    - `seed_everything` defaults to 0; the resolved config is saved as `<log dir>/config.yaml`.
    - LightningCLI's `optimizer:` / `lr_scheduler:` keys take any `torch.optim` optimiser and
      scheduler (`--optimizer RMSprop --optimizer.lr 0.001`); `DetectionModule` builds them on its
      parameter groups (no weight decay on norms and biases) behind its warm-up.
    - With `--ckpt_path`, the checkpoint's model hyper-parameters fill in what the command line
      and config leave at their defaults; values given explicitly win (and are said to win).
    """

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        # the optimizer / lr_scheduler keys are added in add_arguments_to_parser and handed to the module in
        # after_instantiate_classes, not turned into LightningCLI's one-group `configure_optimizers`
        kwargs["auto_configure_optimizers"] = False
        parser_kwargs = kwargs["parser_kwargs"] = dict(kwargs.get("parser_kwargs") or {})
        parser_kwargs.setdefault("formatter_class", ExamplesHelpFormatter)  # the subcommands' parsers take it over
        for command, examples in EXAMPLES.items():
            own = {"epilog": examples}
            if command == "predict":
                own["description"] = PREDICT_CONFIG_HELP
            parser_kwargs[command] = {**own, **(parser_kwargs.get(command) or {})}
        defaults = kwargs.pop("trainer_defaults", {}) or {}
        defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": "runs", "name": "detkit"},
            },
            "callbacks": [LossCurveCallback(), CocoPredictionWriter()],
            **defaults,
        }
        self._ckpt_path: str | None = None
        self._ckpt_epoch: int | None = None
        super().__init__(
            DetectionModule,
            DetectionDataModule,
            subclass_mode_data=True,
            trainer_defaults=defaults,
            args=args,
            run=run,
            **kwargs,
        )

    def _section(self, config: Any) -> Any:
        """The part of `config` for the running subcommand (all of it when LightningCLI runs without one)."""
        return config.get(str(self.subcommand), config) if self.subcommand else config

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.epilog = f"{OPTIMIZER_HELP}\n\n{parser.epilog}" if parser.epilog else OPTIMIZER_HELP  # then the examples
        parser.add_optimizer_args((Optimizer,))
        parser.add_lr_scheduler_args(LRSchedulerTypeTuple)
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data", "model.class_names", compute_fn=_data_class_names, apply_on="instantiate")
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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then fill the model section from a `--ckpt_path` checkpoint's hyper-parameters.

        LightningCLI would next copy every saved hyper-parameter over the parsed config, values given
        on the command line included. detkit merges them here instead (given values win; `num_classes`
        stays linked from the data) and hides the path from that step until `before_instantiate_classes`
        puts it back. A test checks that a given value still wins.
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return
        self._ckpt_path = ckpt_path
        self._merge_checkpoint_hparams(subcommand, ckpt_path)
        self.config[subcommand]["ckpt_path"] = None

    def _merge_checkpoint_hparams(self, subcommand: str, ckpt_path: str) -> None:
        ckpt = load_checkpoint(ckpt_path)
        self._ckpt_epoch = ckpt.get("epoch")
        given = self.config[subcommand].get("model")
        defaults = {
            name: p.default
            for name, p in inspect.signature(DetectionModule.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        hparams, kept = {}, []
        for k, v in (ckpt.get("hyper_parameters") or {}).items():
            # the classes are linked from the data (and compared with the checkpoint's); the starting
            # weights are replaced by the checkpoint's own
            if k in ("_instantiator", "_class_path", "num_classes", "class_names", "weights"):
                continue
            mine = given.get(k) if given is not None else None
            if given is not None and k in given and k in defaults and mine != defaults[k] and mine != v:
                kept.append(f"model.{k}={mine!r} (checkpoint: {v!r})")
                continue
            hparams[k] = v
        if kept:
            print(f"detkit {subcommand}: using the given {', '.join(kept)}", file=sys.stderr)
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_instantiate_classes(self) -> None:
        if self._ckpt_path is not None:
            self.config[self.subcommand]["ckpt_path"] = self._ckpt_path

    def after_instantiate_classes(self) -> None:
        """Hand the `optimizer:` / `lr_scheduler:` specs to the module: it builds them on its parameter groups
        (no weight decay on norms and biases) behind its warm-up."""
        config = self._section(self.config_init)
        optimizer, scheduler = config.get("optimizer"), config.get("lr_scheduler")
        if optimizer or scheduler:
            self.model.use_optimizer(optimizer or None, scheduler or None)

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
        self._fit_start = time.perf_counter()
        self._resolve_last("fit")
        epoch, max_epochs = self._ckpt_epoch, self.trainer.max_epochs
        if isinstance(epoch, int) and max_epochs is not None and 0 <= max_epochs <= epoch:
            raise ValueError(
                f"the checkpoint is at epoch {epoch} (counted from 0) but --trainer.max_epochs is {max_epochs}: "
                f"nothing would be trained; set --trainer.max_epochs above {epoch}"
            )

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            from detkit.cli.fit_summary import fit_summary

            print(fit_summary(self.trainer, self.datamodule, time.perf_counter() - self._fit_start), file=sys.stderr)

    def before_validate(self) -> None:
        self._resolve_last("validate")

    def before_test(self) -> None:
        self._resolve_last("test")

    def instantiate_trainer(self, **kwargs: Any):
        plugins = kwargs.get("plugins", self._section(self.config_init).get("trainer", {}).get("plugins"))
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


def run(command: str, argv: Sequence[str]) -> int:
    """`detkit <command> ...` for a LightningCLI subcommand; `--config NAME` finds a packaged config."""
    if command not in SUBCOMMANDS:
        raise ValueError(f"not a LightningCLI command: {command!r} (one of {', '.join(SUBCOMMANDS)})")
    try:
        cli_main(resolve_config_args([command, *argv]))
    except torch.OutOfMemoryError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
        raise MemoryError(
            f"{first}; use a smaller --data.batch_size, --trainer.precision bf16-mixed, "
            "or smaller images (min_size / max_size in --model.model_kwargs)"
        ) from e
    return 0
