"""The test folders have no __init__.py, so pytest imports test files by basename: two alike would clash.

Test files live in tests/unit/ and tests/integration/ only. A test module imports no other test module and no
conftest: fixtures reach tests through the conftest.py of their folder, helpers through tests/support/.
"""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
TEST_FOLDERS = {TESTS / "unit", TESTS / "integration"}


def imported_modules(path: Path) -> set[str]:
    """The top-level names of the modules a file imports, anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def test_test_file_names_are_unique_across_folders():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert not [name for name, count in names.items() if count > 1]


def test_test_files_sit_in_the_unit_and_integration_folders():
    misplaced = [
        str(path.relative_to(TESTS))
        for path in TESTS.rglob("*.py")
        if (path.name.startswith("test_") or path.name == "conftest.py") and path.parent not in TEST_FOLDERS
    ]
    assert not misplaced


def test_no_file_imports_a_test_module_or_a_conftest():
    offending = {
        str(path.relative_to(TESTS)): sorted(
            name for name in imported_modules(path) if name.startswith("test_") or name == "conftest"
        )
        for path in TESTS.rglob("*.py")
    }
    assert not {path: names for path, names in offending.items() if names}
