"""The layering is checked, not just drawn: the import contracts hold, and the receiver stays light.

.importlinter holds the contracts (each layer imports only the layers under it; the planning layer imports no
effect library; the receiver imports neither the Docker SDK nor the engine nor an adapter; only wiring.py
imports concrete adapters). CI runs `lint-imports` too; this test makes `scripts/test` catch a break as well.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in result.stdout


def test_importing_the_receiver_loads_neither_docker_nor_the_engine():
    """What gunicorn imports for `deployer.receiver.web:create_app()`, in a fresh interpreter."""
    probe = ("import sys, deployer.receiver.web\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'sh')\n"
             "      or m.startswith(('deployer.host', 'deployer.adapters'))))")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
