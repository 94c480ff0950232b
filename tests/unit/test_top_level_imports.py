"""Imports sit at the top of a module, where a reader sees what it depends on and a cycle shows at once.

An import that must stay inside a function says why on its line: `# lazy: <why>`. Every module of the package
is checked but the composition root (`deployer/wiring.py`), which may build each process's parts only when that
process starts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "deployer"
COMPOSITION_ROOT = PACKAGE / "wiring.py"
CHECKED = sorted(p for p in PACKAGE.rglob("*.py") if p != COMPOSITION_ROOT)


def function_imports(source: str) -> list[int]:
    """The lines of imports inside a function body that do not say why they are there."""
    lines = source.splitlines()
    found = []
    for function in ast.walk(ast.parse(source)):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [
                node.lineno
                for node in ast.walk(function)
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "# lazy: " not in lines[node.lineno - 1]
            ]
    return sorted(set(found))


@pytest.mark.parametrize(
    ("source", "lines"),
    [
        ("import os\n\ndef f():\n    return os.sep\n", []),
        ("def f():\n    import os\n    return os.sep\n", [2]),
        ("def f():\n    from os import sep  # lazy: a cycle with this module\n    return sep\n", []),
        ("class C:\n    def f(self):\n        from os import sep\n        return sep\n", [3]),
        ("def f():\n    def g():\n        import os\n    return g\n", [3]),
    ],
)
def test_an_import_in_a_function_is_found_unless_it_says_why(source, lines):
    assert function_imports(source) == lines


def test_every_module_but_the_composition_root_imports_at_the_top_only():
    found = [
        f"{path.relative_to(PACKAGE.parent)}:{line}" for path in CHECKED for line in function_imports(path.read_text())
    ]
    assert not found, f"imports inside functions, without a `# lazy: <why>`: {found}"
