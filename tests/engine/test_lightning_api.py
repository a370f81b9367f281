"""detkit extends Lightning through its public API only: no override of a private method.

A private method (`_name`) of a Lightning class may change in any release; overriding one
(as `DetkitCLI._parse_ckpt_path` and `DetectionCheckpoint._save_last_checkpoint` once did) ties
detkit to one Lightning version. This test lists every detkit class derived from a Lightning
class and fails on a private name that a Lightning base class also defines.
"""

import inspect

import lightning.pytorch as pl
import pytest

import detkit.cli.lightning
import detkit.engine
import detkit.engine.callbacks
import detkit.engine.checkpoint_io
import detkit.engine.datamodule
import detkit.engine.evaluation_writer
import detkit.engine.module

MODULES = [
    detkit.cli.lightning,
    detkit.engine.callbacks,
    detkit.engine.checkpoint_io,
    detkit.engine.datamodule,
    detkit.engine.evaluation_writer,
    detkit.engine.module,
]


def _lightning_subclasses():
    found = {}
    for module in MODULES:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__.startswith("detkit.") and any(
                b.__module__.startswith("lightning.") for b in cls.__mro__[1:]
            ):
                found[cls.__qualname__] = cls
    return found


CLASSES = _lightning_subclasses()


def test_the_lightning_classes_are_found():
    assert {"DetkitCLI", "DetectionCheckpoint", "DetectionModule", "EvaluationWriter", "AtomicCheckpointIO"} <= set(
        CLASSES
    )


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_no_private_lightning_method_is_overridden(name):
    cls = CLASSES[name]
    lightning_bases = [b for b in cls.__mro__[1:] if b.__module__.startswith("lightning.")]
    overridden = [
        attr
        for attr, value in vars(cls).items()
        if attr.startswith("_") and not attr.startswith("__") and callable(value)
        and any(attr in vars(b) for b in lightning_bases)
    ]  # fmt: skip
    assert overridden == [], f"{name} overrides private Lightning methods {overridden}"


def test_public_hooks_used_by_detkit_exist():
    """The public LightningCLI / ModelCheckpoint API that DetkitCLI and DetectionCheckpoint build on."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningCLI

    for hook in ("parse_arguments", "before_instantiate_classes", "after_instantiate_classes",
                 "add_arguments_to_parser", "instantiate_trainer"):  # fmt: skip
        assert callable(getattr(LightningCLI, hook)), hook
    assert "auto_configure_optimizers" in inspect.signature(LightningCLI.__init__).parameters
    assert list(inspect.signature(ModelCheckpoint.check_monitor_top_k).parameters) == ["self", "trainer", "current"]
    assert {"metrics", "filename", "ver"} <= set(inspect.signature(ModelCheckpoint.format_checkpoint_name).parameters)
    assert callable(pl.Trainer.save_checkpoint) and callable(ModelCheckpoint.file_exists)


def test_only_the_engine_and_the_lightning_commands_import_lightning():
    """Models, heads, backbones ... are plain nn.Modules (DESIGN.md): Lightning stays in detkit/engine
    and detkit/cli/lightning.py."""
    import ast
    from pathlib import Path

    package = Path(detkit.engine.__file__).resolve().parent.parent
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == "lightning" or n.startswith("lightning.") for n in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers and all(p.startswith("engine/") or p == "cli/lightning.py" for p in importers), sorted(importers)
