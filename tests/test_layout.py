"""The package's shape: size limits per module, class and function, and the layers contract.

Limits (issue 17): no module over 1,000 lines, no class over 600, no function or method over
100 lines of code. A function's docstring is not counted: the numpydoc Parameters section of
``fit`` or ``from_formula`` documents a dozen options, and shortening it would hide them from
``help()``; the limit is on the logic. A role that outgrows a limit wants its own module or
object. ``python tests/test_layout.py`` prints what is over each limit, or the largest three.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "blpmodels"
MAX_MODULE_LINES = 1000
MAX_CLASS_LINES = 600
MAX_FUNCTION_LINES = 100


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _sizes() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    modules, classes, functions = {}, {}, {}
    for path in _modules():
        source = path.read_text()
        name = str(path.relative_to(PACKAGE.parent))
        modules[name] = len(source.splitlines())
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                classes[f"{name}:{node.name}"] = _lines(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions[f"{name}:{node.lineno}:{node.name}"] = _lines(node) - _docstring(node)
    return modules, classes, functions


def _lines(node: ast.AST) -> int:
    return (node.end_lineno or node.lineno) - node.lineno + 1


def _docstring(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        if isinstance(first.value.value, str):
            return _lines(first)
    return 0


def _over(sizes: dict[str, int], limit: int) -> dict[str, int]:
    return {name: size for name, size in sizes.items() if size > limit}


def test_import_contracts_hold(monkeypatch) -> None:
    """The layers of pyproject.toml's [tool.importlinter] (also run by .ci/run as lint-imports)."""
    from importlinter.cli import lint_imports

    monkeypatch.chdir(PACKAGE.parent)
    assert lint_imports(no_cache=True, no_logo=True) == 0


def test_no_module_over_the_limit() -> None:
    assert _over(_sizes()[0], MAX_MODULE_LINES) == {}


def test_no_class_over_the_limit() -> None:
    assert _over(_sizes()[1], MAX_CLASS_LINES) == {}


def test_no_function_over_the_limit() -> None:
    assert _over(_sizes()[2], MAX_FUNCTION_LINES) == {}


if __name__ == "__main__":
    for title, sizes, limit in zip(
        ("modules", "classes", "functions"),
        _sizes(),
        (MAX_MODULE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES),
        strict=True,
    ):
        largest = sorted(sizes.items(), key=lambda item: -item[1])
        over = [item for item in largest if item[1] > limit]
        print(f"{title}: {len(sizes)}, {len(over)} over {limit}")
        for name, size in over or largest[:3]:
            print(f"  {size:5d}  {name}")
    sys.exit(0)
