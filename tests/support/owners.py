"""Who owns a chain prefix, a test session or a bench run: a claim file holding the owner's pid.

Test runs (prefix DT...) and bench runs (prefix DB...) on one machine each clean only what a
dead owner left behind, never each other's live containers, chains or namespaces:

    claim("DT1A2B3")            # /run/deployer-tests/DT1A2B3 holds this process's pid
    owner_alive("DT1A2B3")      # True while that process runs
    release("DT1A2B3")

Only the standard library is used.
"""

from __future__ import annotations

import os
from pathlib import Path

OWNERS = Path("/run/deployer-tests")


def alive(pid: int) -> bool:
    """True for a running process; a zombie (killed, not yet reaped) counts as gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def owner_alive(name: str) -> bool:
    try:
        return alive(int((OWNERS / name).read_text()))
    except (FileNotFoundError, ValueError):
        return False


def claim(name: str) -> None:
    OWNERS.mkdir(parents=True, exist_ok=True)
    (OWNERS / name).write_text(str(os.getpid()))


def release(name: str) -> None:
    (OWNERS / name).unlink(missing_ok=True)
