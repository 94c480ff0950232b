"""Deploy locks: flock(2) on a file per app (and a few host-wide ones), released by the kernel if the holder dies."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from deployer.errors import LockError


class AppLock:
    """Hold the app's lock for the duration of a `with` block; other apps are not blocked.

    `wait` seconds to wait for a running deploy; 0 refuses at once with who holds the lock.
    """

    def __init__(self, state_dir: Path, app: str, *, wait: float = 0.0, holder: dict | None = None,
                 poll: float = 0.1) -> None:
        self.path = Path(state_dir) / "locks" / f"{app}.lock"
        self.app = app
        self.wait = wait
        self.holder = holder or {}
        self.poll = poll
        self._fd: int | None = None

    def __enter__(self) -> "AppLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    who = self._describe_holder(fd)
                    os.close(fd)
                    raise LockError(f"another deploy of app {self.app!r} is running{who}; try again later",
                                    app=self.app) from None
                time.sleep(self.poll)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.time(), **self.holder}).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def _describe_holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return ""
        parts = []
        if "pid" in info:
            parts.append(f"pid {info['pid']}")
        if "tag" in info:
            parts.append(f"tag {info['tag']}")
        if "since" in info:
            parts.append(f"for {time.time() - float(info['since']):.0f}s")
        return f" ({', '.join(parts)})" if parts else ""


class HostLock:
    """Wait for and hold one host-wide flock(2) file, e.g. the netfilter lock that makes read-render-restore atomic."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: IO[str] | None = None

    def __enter__(self) -> "HostLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
