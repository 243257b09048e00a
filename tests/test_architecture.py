"""The seams, checked: no module reads another object's underscore names, and imports point down
the layers (widgets -> queue -> store -> core; gen -> core). A failure names the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "imgnb"

# Conventions of other libraries whose leading underscore is their public API.
FOREIGN_API = {
    "_mapping",  # SQLAlchemy Row
    "_asdict",
    "_replace",
    "_fields",  # namedtuple
    "_exit",  # os._exit: leave at once, without cleanup (the worker's second Ctrl-C)
    "_ipython_display_",
    "_repr_html_",
    "_repr_mimebundle_",
    "_repr_png_",  # IPython display hooks
    "_execution_device",
    "_interrupt",
    "_name_or_path",  # diffusers pipelines and configs
}

# Which imgnb packages each layer may import (errors is the root every layer shares).
ALLOWED_IMPORTS = {
    "core": {"core", "errors"},
    "store": {"core", "errors", "store"},
    "gen": {"core", "errors", "gen"},
    "queue": {"core", "errors", "store", "gen", "queue"},
    "testing": {"core", "errors", "store", "gen", "testing"},
}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def private_reaches(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in FOREIGN_API:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append((node.lineno, name))
    return found


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_reads_another_objects_underscore_names(path: Path) -> None:
    reaches = private_reaches(ast.parse(path.read_text(), str(path)))
    assert reaches == [], "\n".join(f"{path}:{line}: .{name}" for line, name in reaches)


def imported_layers(path: Path) -> set[tuple[int, str]]:
    """The imgnb sub-packages a module imports at module level (lazy imports inside functions are
    the display hooks' way down to widgets, and are allowed)."""
    tree = ast.parse(path.read_text(), str(path))
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 for imgnb/x.py, 1 for imgnb/core/x.py
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks import for types only
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            parts = (node.module or "").split(".")
            up = node.level - 1
            if up > depth:
                continue
            base = list(path.relative_to(PACKAGE).parts[:-1])[: depth - up]
            target = [*base, *[p for p in parts if p]]
            if target:
                found.add((node.lineno, target[0]))
    return found


@pytest.mark.parametrize(
    "path", [p for p in modules() if p.parent.name in ALLOWED_IMPORTS], ids=lambda p: str(p.relative_to(PACKAGE))
)
def test_imports_point_down_the_layers(path: Path) -> None:
    layer = path.parent.name
    wrong = [(line, target) for line, target in imported_layers(path) if target not in ALLOWED_IMPORTS[layer]]
    assert wrong == [], f"{path} ({layer}) may import only {sorted(ALLOWED_IMPORTS[layer])}: {wrong}"


def test_the_checks_catch_what_they_look_for() -> None:
    # the rule is only worth having if it fails on the thing it forbids
    assert private_reaches(ast.parse("queue._loop.call()")) == [(1, "_loop")]
    assert private_reaches(ast.parse("self._loop.call(); row._mapping")) == []
