"""Command-line entry point (`detkit`)."""

import sys


def main(argv=None):
    from detkit import __version__

    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("--version", "-V"):
        print(f"detkit {__version__}")
        return 0
    print("usage: detkit --version", file=sys.stderr)
    return 2
