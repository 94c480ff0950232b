"""Imports sit at the top of a module, where a reader sees what it depends on and a cycle shows at once.

An import that must stay inside a function says why on its line: `# lazy: <why>`. Checked in the packages
that have none left; others join the list as theirs move up.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "deployer"
CHECKED = ("audit", "plan", "host")


def function_imports(source: str) -> list[int]:
    """The lines of imports inside a function body that do not say why they are there."""
    lines = source.splitlines()
    found = []
    for function in ast.walk(ast.parse(source)):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [node.lineno for node in ast.walk(function) if isinstance(node, (ast.Import, ast.ImportFrom))
                      and "# lazy: " not in lines[node.lineno - 1]]
    return sorted(set(found))


@pytest.mark.parametrize(("source", "lines"), [
    ("import os\n\ndef f():\n    return os.sep\n", []),
    ("def f():\n    import os\n    return os.sep\n", [2]),
    ("def f():\n    from os import sep  # lazy: a cycle with this module\n    return sep\n", []),
    ("class C:\n    def f(self):\n        from os import sep\n        return sep\n", [3]),
    ("def f():\n    def g():\n        import os\n    return g\n", [3]),
])
def test_an_import_in_a_function_is_found_unless_it_says_why(source, lines):
    assert function_imports(source) == lines


@pytest.mark.parametrize("package", CHECKED)
def test_the_package_imports_at_the_top_only(package):
    found = [f"{path.relative_to(PACKAGE.parent)}:{line}" for path in sorted((PACKAGE / package).rglob("*.py"))
             for line in function_imports(path.read_text())]
    assert not found, f"imports inside functions, without a `# lazy: <why>`: {found}"
