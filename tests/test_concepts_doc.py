"""docs/concepts.md: its python examples run, in order, in one session."""

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "concepts.md"


def test_concepts_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 10
    namespace = {"torch": torch, "__name__": "__concepts__"}
    for index, code in enumerate(blocks):
        assert len(code.strip().splitlines()) <= 2, f"block {index} is longer than two lines"
        exec(compile(code, f"docs/concepts.md python block {index}", "exec"), namespace)
