"""Moved: the `detkit proposals` command is `detkit.cli.proposals`; this module keeps the old import path."""

from detkit.cli.proposals import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    import sys

    sys.exit(main(prog=None))
