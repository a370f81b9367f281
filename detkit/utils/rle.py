"""Validation of COCO compressed RLE strings before pycocotools decodes them.

pycocotools decodes a compressed RLE without checking it: runs that add up to less than
H*W leave uninitialised memory in the mask (values outside {0, 1}), and a string ending in
a continuation character is read past its end. `compressed_rle_counts` decodes the string
exactly as pycocotools' `rleFrString` does, in Python, so callers can check it first.
"""

from __future__ import annotations

__all__ = ["compressed_rle_counts", "compressed_rle_problem"]


def compressed_rle_counts(counts: str | bytes) -> list[int]:
    """Run lengths of a COCO compressed RLE string (pycocotools' LEB128-like format).

    Raises:
        ValueError: a character outside '0'..'o', or a truncated last run.
    """
    data = counts.encode("ascii", "replace") if isinstance(counts, str) else bytes(counts)
    runs: list[int] = []
    p = 0
    while p < len(data):
        x, k, more = 0, 0, True
        while more:
            if p >= len(data):
                raise ValueError("truncated compressed RLE (last run unfinished)")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"invalid character {chr(data[p])!r} in compressed RLE")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def compressed_rle_problem(counts: str | bytes, height: int, width: int) -> str | None:
    """Why `counts` is not a valid compressed RLE of a `height` x `width` mask, or None."""
    try:
        runs = compressed_rle_counts(counts)
    except ValueError as e:
        return str(e)
    if any(r < 0 for r in runs):
        return "compressed RLE with a negative run length"
    total = sum(runs)
    if total != height * width:
        return f"compressed RLE runs add up to {total}, not H*W = {height * width}"
    return None
