"""Run hook executables with a timeout, capturing their output for the log."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Mapping

from deployer.plan.hooks import HookOutcome


def run_hook(path: Path, env: Mapping[str, str], timeout: float) -> HookOutcome:
    """Run one hook in its own process group, so a timeout kills what it started too."""
    try:
        process = subprocess.Popen([str(path)], env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, cwd=path.parent, start_new_session=True)
    except OSError as exc:
        return HookOutcome(126, f"cannot run {path}: {exc.strerror}")
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        output, _ = process.communicate()
        return HookOutcome(None, output.decode("utf-8", "replace"))
    return HookOutcome(process.returncode, output.decode("utf-8", "replace"))
