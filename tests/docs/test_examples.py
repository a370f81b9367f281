"""The Python examples of the documentation site run, each page's in order in one session: the home page's
quick start, building a model, and extending detkit with a backbone and a detector."""

import re
from pathlib import Path

import pytest

from detkit.backbones import list_backbones, unregister_backbone
from detkit.models import list_models, unregister_model

DOCS = Path(__file__).resolve().parents[2] / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("page", ["index.md", "models.md", "extending.md"])
def test_examples_run(page):
    blocks = python_blocks(page)
    assert blocks
    backbones, models = set(list_backbones()), set(list_models())
    namespace = {"__name__": f"__docs_{page}__"}
    try:
        for index, code in enumerate(blocks):
            exec(compile(code, f"docs/{page} python block {index}", "exec"), namespace)
    finally:  # the registries are global: leave them as they were for the other tests
        for name in set(list_backbones()) - backbones:
            unregister_backbone(name)
        for name in set(list_models()) - models:
            unregister_model(name)
    if page == "extending.md":
        assert dict(namespace["backbone"].feature_specs()) == {"c2": (8, 4), "c3": (8, 8)}
        assert namespace["losses"] and all(loss.isfinite() for loss in namespace["losses"].values())
        assert "my_net" not in list_backbones() and "faster_rcnn_my_net" not in list_models()
