"""Pausing Python's cyclic garbage collector around bulk work on large json-like data."""

from __future__ import annotations

import contextlib
import gc

__all__ = ["paused_gc"]


@contextlib.contextmanager
def paused_gc():
    """No cyclic garbage collection inside the block (also usable as a decorator): reading or
    evaluating a large json makes millions of containers, and each automatic collection walks
    all of them again (COCO train2017's file reads ~1.7x faster without; a 500,000-mask COCO
    evaluation spends ~20% of its CPU time there); the previous state is restored after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
