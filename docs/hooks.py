"""MkDocs hooks of the documentation site (mkdocs.yml `hooks:`), run by every `mkdocs build` / `serve`.

1. API pages. A line ``<!-- api: detkit.structures -->`` in a page under docs/api/ becomes the package's
   docstring, a table of every name in its ``__all__`` (with the first line of each docstring) and one
   mkdocstrings entry per name, at the module that defines it (lazy names included, which mkdocstrings
   cannot find through the package). The build fails (PluginError) when a public package has no API page
   or a name of an ``__all__`` has no docstring, listing every such name.
2. Links to repository files outside docs/ (``[configs/x.yaml](../configs/x.yaml)``) have no page on the
   site: they become the file's path in the repository, in code. A link to a path that does not exist is
   left alone, so that MkDocs reports it (and --strict fails).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from functools import cache
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Packages without an API page: the command line (documented by `detkit <command> --help`) and the
# internal helpers every layer uses.
NOT_API = {"cli", "utils", "configs"}

API_MARKER = re.compile(r"^<!-- api: (detkit\.\w+) -->$", flags=re.M)
LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def public_packages() -> list[str]:
    """detkit's packages that get an API page: every folder with an __init__.py but those in NOT_API."""
    return sorted(
        f"detkit.{path.parent.name}"
        for path in (ROOT / "detkit").glob("*/__init__.py")
        if path.parent.name not in NOT_API
    )


def _source_tree(module: str) -> ast.Module:
    spec = importlib.util.find_spec(module)
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))


def _lazy_table(tree: ast.Module) -> dict[str, str]:
    """A package's `_LAZY = {"Name": "submodule"}` (names imported on first use), if it has one."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def _assignment(module: str, name: str) -> tuple[str, str | None]:
    """(module that assigns `name`, the docstring under the assignment or None), following `from ... import`
    and a package's `_LAZY` table from `module`."""
    tree = _source_tree(module)
    body = tree.body
    for node, after in zip(body, [*body[1:], None]):
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(getattr(t, "id", None) == name for t in targets):
            is_doc = isinstance(after, ast.Expr) and isinstance(getattr(after, "value", None), ast.Constant)
            return module, after.value.value if is_doc and isinstance(after.value.value, str) else None
    for node in body:
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            is_package = module.endswith(".__init__") or importlib.util.find_spec(module).origin.endswith("__init__.py")
            base = module if is_package else module.rpartition(".")[0]
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            source = f"{base}.{node.module}" if node.level else node.module
            return _assignment(source, name)
    lazy = _lazy_table(tree)
    if name in lazy:
        return _assignment(f"{module}.{lazy[name]}", name)
    raise PluginError(f"docs/hooks.py: cannot find where {module}.{name} is defined")


@cache
def api_entries(package: str) -> tuple[tuple[str, str, str | None], ...]:
    """(name, defining path, docstring or None) for every name of `package.__all__`, in its order."""
    module = importlib.import_module(package)
    entries = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            path = f"{obj.__module__}.{obj.__qualname__}"
            tree = _source_tree(obj.__module__)
            definition = next(
                node
                for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.name == obj.__name__
            )
            entries.append((name, path, ast.get_docstring(definition)))
        else:
            source, doc = _assignment(package, name)
            entries.append((name, f"{source}.{name}", doc))
    return tuple(entries)


def undocumented() -> list[str]:
    """`package.name (path)` of every public name without a docstring, over all public packages."""
    return [
        f"{package}.{name} ({path})"
        for package in public_packages()
        for name, path, doc in api_entries(package)
        if not (doc and doc.strip())
    ]


def on_pre_build(config) -> None:
    pages = {p.stem for p in (DOCS / "api").glob("*.md")}
    missing_pages = [p for p in public_packages() if p.split(".")[1] not in pages]
    if missing_pages:
        raise PluginError(f"public packages without an API page under docs/api/: {', '.join(missing_pages)}")
    names = undocumented()
    if names:
        raise PluginError(
            f"{len(names)} public names (listed in an __all__) have no docstring:\n  " + "\n  ".join(names)
        )


def _summary(doc: str | None) -> str:
    first = (doc or "").strip().split("\n\n")[0]
    return " ".join(first.split()).replace("|", "\\|")


def api_markdown(package: str) -> str:
    """The Markdown that stands for `<!-- api: package -->`: the package docstring, a table, the entries."""
    entries = api_entries(package)
    lines = [
        f"::: {package}",
        "    options:",
        "      members: false",
        "      show_root_heading: false",
        "      show_root_toc_entry: false",
        "",
        f"`{package}.__all__` lists {len(entries)} names, documented below in that order.",
        "",
        "| name | summary |",
        "| --- | --- |",
        *(f"| [`{name}`][{path}] | {_summary(doc)} |" for name, path, doc in entries),
        "",
    ]
    for name, path, _ in entries:
        lines += [f"::: {path}", ""]
    return "\n".join(lines)


def _repository_links(markdown: str, page_path: Path) -> str:
    def replace(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
            return match.group(0)
        resolved = (page_path.parent / target).resolve()
        if resolved.is_relative_to(DOCS) or not resolved.is_relative_to(ROOT) or not resolved.exists():
            return match.group(0)
        relative = resolved.relative_to(ROOT).as_posix() + ("/" if resolved.is_dir() else "")
        return f"`{relative}`" if text.strip("`").rstrip("/") == relative.rstrip("/") else f"{text} (`{relative}`)"

    return LINK.sub(replace, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:
    markdown = API_MARKER.sub(lambda m: api_markdown(m.group(1)), markdown)
    return _repository_links(markdown, Path(page.file.abs_src_path))
