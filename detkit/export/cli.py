"""Moved: the `detkit export` command is `detkit.cli.export`; this module keeps the old import path."""

from detkit.cli.export import export_main, load_for_export

__all__ = ["export_main", "load_for_export"]
