"""Deploy locks: flock(2) on a file per app (and a few host-wide ones), released by the kernel if the holder dies.

flock works on any descriptor, a read-only one too: whoever can open a lock file can hold it. So the locks live in
`<state_dir>/locks/`, root's alone (0700, in a state folder of at most 0750), each file 0600, opened without
following a link, and a file another user owns is refused: root never waits on what another user can hold. Every
wait has a bound, and ends in a LockError that names the lock and, when it wrote itself in, its holder.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import time
from pathlib import Path
from types import TracebackType

from deployer.errors import LockError, UnsafePath
from deployer.folders import PRIVATE_FOLDER_MODE, STATE_FOLDER_MODE, flock_within, open_entry, own_folder

LOCKS = "locks"
LOCK_FILE_MODE = 0o600
HOST_LOCK_WAIT = 30.0  # seconds; `[deployer] host_lock_wait`


def locks_folder(state_dir: str | os.PathLike[str]) -> Path:
    """`<state_dir>/locks`, root's alone, made or narrowed (with the state folder) before any lock in it is opened."""
    own_folder(state_dir, STATE_FOLDER_MODE)
    return own_folder(Path(state_dir) / LOCKS, PRIVATE_FOLDER_MODE)


def open_lock_file(path: Path) -> int:
    """A read-write descriptor on the lock file `path` in `<state_dir>/locks/`: created 0600, or narrowed to it.

    A link in its place, a file that is not plain, and a file another user owns are refused with UnsafePath.
    """
    locks_folder(path.parent.parent)
    fd = open_entry(path, os.O_RDWR | os.O_CREAT, LOCK_FILE_MODE)
    try:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise UnsafePath(
                f"the lock file {path} belongs to uid {info.st_uid}, not to uid {os.geteuid()} that runs "
                f"the deployer; whoever owns it can hold the lock for ever, so it is refused (remove it)",
                path=str(path),
            )
        if stat.S_IMODE(info.st_mode) != LOCK_FILE_MODE:
            os.fchmod(fd, LOCK_FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_holder(fd: int, holder: dict) -> None:
    """Who holds the lock, for the error of whoever waits on it: this process, since when, and `holder`."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": time.time(), **holder}).encode(), 0)


def describe_holder(fd: int) -> str:
    """` (pid 42, tag v2, for 3s)` from what the holder wrote in the file, or "" when it wrote nothing."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except ValueError:
        return ""
    if not isinstance(info, dict):
        return ""
    parts = []
    if "pid" in info:
        parts.append(f"pid {info['pid']}")
    if "tag" in info:
        parts.append(f"tag {info['tag']}")
    if "since" in info:
        try:
            parts.append(f"for {time.time() - float(info['since']):.0f}s")
        except (TypeError, ValueError):
            pass
    return f" ({', '.join(parts)})" if parts else ""


class AppLock:
    """Hold the app's lock for the duration of a `with` block; other apps are not blocked.

    `wait` seconds to wait for a running deploy; 0 refuses at once with who holds the lock.
    """

    def __init__(
        self, state_dir: Path, app: str, *, wait: float = 0.0, holder: dict | None = None, poll: float = 0.1
    ) -> None:
        self.path = Path(state_dir) / LOCKS / f"{app}.lock"
        self.app = app
        self.wait = wait
        self.holder = holder or {}
        self.poll = poll
        self._fd: int | None = None

    def __enter__(self) -> AppLock:
        fd = open_lock_file(self.path)
        if not flock_within(fd, self.wait, first_poll=self.poll, last_poll=self.poll):
            who = describe_holder(fd)
            os.close(fd)
            raise LockError(f"another deploy of app {self.app!r} is running{who}; try again later", app=self.app)
        write_holder(fd, self.holder)
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class HostLock:
    """Wait for and hold one host-wide flock(2) file, e.g. the netfilter lock that makes read-render-restore atomic.

    The wait ends after `wait` seconds in a LockError naming the lock and its holder: a holder that never lets go
    (a stuck process) stops the operation with a reason instead of freezing it.
    """

    def __init__(self, path: Path, *, wait: float = HOST_LOCK_WAIT) -> None:
        self.path = Path(path)
        self.wait = wait
        self._fd: int | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    def __enter__(self) -> HostLock:
        fd = open_lock_file(self.path)
        if not flock_within(fd, self.wait):  # held for milliseconds: tried again soon, then less often
            who = describe_holder(fd)
            os.close(fd)
            raise LockError(
                f"the {self.name} lock ({self.path}) is still held{who or ' (holder unknown)'} after "
                f"{self.wait:g}s; try again later, or stop its holder",
                lock=self.name,
            )
        write_holder(fd, {})
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
