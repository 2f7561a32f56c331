"""No function in service/ or ledger/ grows past 60 lines (style.md 20): past that, a function holds
more than one decision, and the next reader has to hold them all at once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "ledger")
LINES_MAX = 60


def _functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length in lines) of every function in a module, nested ones too;
    a function's lines run from its `def` to its last line, docstring included."""
    found: list[tuple[str, int, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                end = child.end_lineno or child.lineno
                found.append((name, child.lineno, end - child.lineno + 1))
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


class TestFunctionLength:
    @pytest.mark.parametrize("package", PACKAGES)
    def test_no_function_passes_the_bound(self, package: str) -> None:
        """Every function of the package, methods and nested functions included, is at most 60 lines."""
        modules = sorted((ROOT / package).rglob("*.py"))
        assert modules, f"no module found under {package}/"
        too_long = [
            f"{path.relative_to(ROOT)}:{line} {name} ({length} lines)"
            for path in modules
            for name, line, length in _functions(path)
            if length > LINES_MAX
        ]
        assert too_long == []

    def test_the_count_includes_every_line_of_a_function(self, tmp_path: Path) -> None:
        """The measure itself: a method of 61 lines (def, docstring, 59 statements) is counted as 61,
        so the bound cannot be escaped by a docstring or a nesting."""
        body = "\n".join(f"        x{n} = {n}" for n in range(59))
        module = tmp_path / "m.py"
        module.write_text(f'class C:\n    def f(self):\n        """Doc."""\n{body}\n', encoding="utf-8")
        assert _functions(module) == [("C.f", 2, 61)]
