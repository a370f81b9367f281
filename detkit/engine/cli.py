"""Moved: the commands live in `detkit.cli` (`detkit.cli.lightning`: LightningCLI; `detkit.cli.predict`:
image files). This module keeps the old import path of their public names."""

from detkit.cli.lightning import DetkitCLI, cli_main
from detkit.cli.predict import main as predict_files_main

__all__ = ["DetkitCLI", "cli_main", "predict_files_main"]
