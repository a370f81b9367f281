"""Moved: the commands live in `detkit.cli` (`detkit.cli.lightning`: LightningCLI; `detkit.cli.predict`:
image files). This module keeps the old import path of their public names."""

from detkit.cli.lightning import DetkitCLI, cli_main
from detkit.cli.predict import main as predict_files_main
from detkit.engine.checkpoint_io import build_model_from_checkpoint

__all__ = ["DetkitCLI", "build_model_from_checkpoint", "cli_main", "predict_files_main"]
