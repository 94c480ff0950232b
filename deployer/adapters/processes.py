"""Child processes: hook executables with a timeout, and the long-running children the server supervises."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import IO, Mapping

from deployer.errors import DeployerError
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


def spawn(argv: list[str], env: Mapping[str, str], *, user: str | None = None, group: str | None = None,
          umask: int = 0o077, log: IO[bytes] | None = None, pass_fds: tuple[int, ...] = ()) -> subprocess.Popen:
    """Start a long-running child (gunicorn, the maintenance responder), as `user` (no other groups) when given.

    `log`: a file for its output (default: this process's stdout and stderr); `pass_fds`: descriptors it
    inherits (a socket bound for it). Raises DeployerError.
    """
    drop: dict[str, object] = {"user": user, "group": group or user, "extra_groups": []} if user else {}
    try:
        return subprocess.Popen(argv, env=dict(env), stdin=subprocess.DEVNULL, umask=umask, stdout=log,
                                stderr=subprocess.STDOUT if log is not None else None, pass_fds=pass_fds, **drop)
    except (OSError, KeyError) as exc:
        raise DeployerError(f"cannot start {Path(argv[0]).name} {' '.join(argv[1:3])}: {exc}") from None
