"""The layering ARCHITECTURE.md describes, checked on the source: who may import whom, where typer,
rich and torch may be imported at module level, and the size limits of engine/, pseudo/ and models/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "wsis_cli"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _layer(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else "core"


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


# what each layer may import (anywhere in a module, lazily included), besides itself and the core
ALLOWED = {
    "core": set(),
    "metrics": set(),
    "models": set(),
    "engine": {"models"},
    "pseudo": {"models", "engine"},
    "cli": {"models", "engine", "pseudo", "metrics"},
}


def _wsis_layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "wsis_cli":
        return None
    if len(parts) == 1 or parts[1] in ("errors", "__init__"):
        return "core"
    return parts[1] if parts[1] in ALLOWED else "core"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_layers_import_only_what_sits_below_them(path):
    layer = _layer(path)
    allowed = {"core", "metrics", layer} | ALLOWED[layer]  # the core may score, never reach a model or the CLI
    for module in _imports(path, top_level_only=False):
        other = _wsis_layer(module)
        if other is not None and path.name not in ("__init__.py", "__main__.py"):
            assert other in allowed, f"{path.relative_to(PACKAGE)} ({layer}) imports {module} ({other})"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_heavy_and_cli_packages_stay_where_they_belong(path):
    layer = _layer(path)
    everywhere = {m.split(".")[0] for m in _imports(path, top_level_only=False)}
    top = {m.split(".")[0] for m in _imports(path, top_level_only=True)}
    if layer != "cli":
        assert not everywhere & {"typer", "rich"}, f"{path.relative_to(PACKAGE)}: typer/rich outside cli/"
    if layer in ("core", "metrics", "cli") or path.relative_to(PACKAGE).as_posix() in (
            "pseudo/grabcut.py", "pseudo/fallback.py", "pseudo/peaks.py", "pseudo/scoremaps.py"):
        assert "torch" not in top and "torchvision" not in top, \
            f"{path.relative_to(PACKAGE)}: imports torch at module level (import it inside the function)"


@pytest.mark.parametrize("path", [p for p in _modules() if _layer(p) in ("engine", "pseudo", "models")],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_engine_pseudo_and_models_stay_small(path):
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)}: over {MAX_MODULE_LINES} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: {length} lines"
