"""No module uses another's insides: underscore names are private to the module (or class) that defines them.

A seam another module needs is made public instead (as host/netfilter/chains.py did for the engine's netfilter work).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "deployer"

# Underscore names that are public by their library's own convention.
ALLOWED = {
    ("os", "_exit"),  # the worker's child leaves without running the parent's cleanup
    ("argparse", "_SubParsersAction"),  # the type add_subparsers() returns, which argparse exports under no other
    # argparse has no public way to walk a parser; cli/reference.py renders docs/commands.md from these, and
    # test_cli_reference.py fails the day they change.
    ("argparse", "_HelpAction"),
    ("parser", "_actions"),
    ("parser", "_mutually_exclusive_groups"),
    ("action", "_choices_actions"),
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str) -> list[str]:
    """`from deployer.x import _name`, and `X._name` where X is not self, cls or super()."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("deployer"):
            hits += [f"{node.lineno}: from {node.module} import {a.name}" for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                continue
            if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                continue
            name = owner.id if isinstance(owner, ast.Name) else "*"
            if (name, node.attr) in ALLOWED:
                continue
            hits.append(f"{node.lineno}: {ast.unparse(node)}")
    return hits


def test_the_scan_flags_imports_and_attribute_access_of_private_names():
    source = (
        "from deployer.host.engine import _tail, Engine\n"
        "engine._flip(app)\nself._flip(app)\ncls._x\nsuper()._y()\nos._exit(1)\nnetns._ip()\n"
        "x.__class__\nengine.chains.flip(app)\n"
    )
    assert private_uses(source) == ["1: from deployer.host.engine import _tail", "2: engine._flip", "7: netns._ip"]


def test_no_module_uses_another_modules_private_names():
    hits = {
        str(path.relative_to(PACKAGE.parent)): uses
        for path in sorted(PACKAGE.rglob("*.py"))
        if (uses := private_uses(path.read_text()))
    }
    assert hits == {}
