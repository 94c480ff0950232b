"""The layering is checked, not just drawn: the import contracts hold, and the receiver stays light.

.importlinter holds the contracts (each layer imports only the layers under it; the planning layer imports no
effect library; the receiver package imports no Docker SDK, no command runner, no host code, no adapter and no
worker; only the composition root imports concrete adapters). CI runs `lint-imports` too; this test makes
`scripts/test` catch a break as well, and shows that the receiver's contract catches what it is there to catch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")
RECEIVER_MODULES = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "deployer" / "receiver").rglob("*.py"))
# What the internet-facing receiver must never have in memory: the Docker SDK, the command runner, and the
# root side's code (it runs unprivileged and could not use them; loading them would only widen what an exploit
# of the receiver finds at hand).
ROOT_SIDE = (
    "docker",
    "sh",
    "deployer.host",
    "deployer.adapters",
    "deployer.worker",
    "deployer.fleet",
    "deployer.wiring",
)


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def test_the_import_contracts_hold():
    result = lint(REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 6 kept, 0 broken." in result.stdout


def test_importing_every_receiver_module_loads_nothing_of_the_root_side():
    """What gunicorn imports for `deployer.receiver.web:create_app()`, and every other receiver module, fresh:
    the console's modules too, which the receiver loads when [console] is configured."""
    modules = [dotted(p) for p in RECEIVER_MODULES]
    assert {"deployer.receiver.console", "deployer.receiver.console.pages", "deployer.receiver.console.auth"} <= set(
        modules
    )
    probe = (
        f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {ROOT_SIDE!r}[:2]\n"
        f"      or m.startswith({ROOT_SIDE[2:]!r})))"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("tree")
    shutil.copytree(REPO / "deployer", copy / "deployer", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", copy / ".importlinter")
    return copy


@pytest.mark.parametrize("module", RECEIVER_MODULES)
def test_an_import_of_docker_in_any_receiver_module_breaks_the_receivers_contract(tree_copy: Path, module: str):
    target = tree_copy / module
    original = target.read_text()
    target.write_text(original + "\nimport docker  # noqa: E402,F401\n")
    try:
        result = lint(tree_copy)
    finally:
        target.write_text(original)
    assert result.returncode == 1, result.stdout[-3000:]
    broken = result.stdout.split("Broken contracts", 1)[-1]
    assert "The internet-facing receiver loads no Docker SDK" in broken
    assert f"{dotted(module)} -> docker" in broken


def dotted(module: str) -> str:
    return module.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
