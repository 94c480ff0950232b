"""Child processes: a deploy job's own process, and the hooks a job runs, with timeouts and cleanup.

A hook runs in a process group of its own, so its timeout kills what it started too. It must not
outlive its job either (a retried job would run it a second time beside the first): it gets
PR_SET_PDEATHSIG, so the kernel kills it the moment its job's process ends however it ends, and a
job killed by the worker is first stopped, so it can start nothing new, then each hook group it
has running is killed with it. The long-running children the server supervises (gunicorn, the
maintenance responder) start through `spawn`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

from deployer.errors import DeployerError
from deployer.plan.hooks import HookOutcome

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """This process gets SIGKILL when its parent ends; if the parent is already gone, it ends now."""
    parent = os.getppid()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def run_hook(path: Path, env: Mapping[str, str], timeout: float) -> HookOutcome:
    """Run one hook in its own process group, so a timeout kills what it started too."""
    try:
        process = subprocess.Popen(
            [str(path)],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=path.parent,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    except OSError as exc:
        return HookOutcome(126, f"cannot run {path}: {exc.strerror}")
    except ValueError as exc:  # e.g. a NUL in the environment; hook_environment should have removed it
        return HookOutcome(126, f"cannot run {path}: {exc}")
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return HookOutcome(None, output.decode("utf-8", "replace"))
    return HookOutcome(process.returncode, output.decode("utf-8", "replace"))


class JobProcess:
    """A job's process, started by the worker; `kill` takes the hook groups it runs down with it."""

    def __init__(self, process: subprocess.Popen) -> None:
        self._process = process
        self.pid = process.pid

    def poll(self) -> int | None:
        return self._process.poll()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGSTOP)  # a stopped job starts no hook while its hooks are killed
        for child in child_pids(self.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(child) == child:  # a hook: the leader of its own group
                    os.killpg(child, signal.SIGKILL)
        self._process.kill()


def start_job(argv: Sequence[str], env: Mapping[str, str]) -> JobProcess:
    """Start a job's process in the worker's process group, sharing its stderr."""
    return JobProcess(subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, env=dict(env)))


def child_pids(pid: int) -> list[int]:
    """The children of a process, from every thread's /proc list (empty once it is gone)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as handle:
                children.extend(int(word) for word in handle.read().split())
    return children


def spawn(
    argv: list[str],
    env: Mapping[str, str],
    *,
    user: str | None = None,
    group: str | None = None,
    umask: int = 0o077,
    log: IO[bytes] | None = None,
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen:
    """Start a long-running child (gunicorn, the maintenance responder), as `user` (no other groups) when given.

    `log`: a file for its output (default: this process's stdout and stderr); `pass_fds`: descriptors it
    inherits (a socket bound for it). Raises DeployerError.
    """
    drop: dict[str, object] = {"user": user, "group": group or user, "extra_groups": []} if user else {}
    try:
        return subprocess.Popen(
            argv,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            umask=umask,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            pass_fds=pass_fds,
            **drop,
        )
    except (OSError, KeyError) as exc:
        raise DeployerError(f"cannot start {Path(argv[0]).name} {' '.join(argv[1:3])}: {exc}") from None
