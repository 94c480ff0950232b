"""The state folders the receiver shares with the privileged side: the queue's and the audit log's.

The receiver (gunicorn, possibly an unprivileged user) writes two SQLite databases, each in a
folder of its own under the state folder. Such a folder is setgid, so every file made in it keeps
the receiver's group, and group-writable, so SQLite can create its -wal and -shm files whoever
opens the database first. The state folder itself gets group read and search only: the receiver
reaches these folders but cannot change app records or locks.

Because the receiver's group can create entries in a shared folder, and the kernel's
protected_symlinks does not cover a folder that is neither sticky nor world-writable, root never
follows a link there: every entry root opens is opened with O_NOFOLLOW and checked on its
descriptor (a plain file with one link), and modes are changed through that descriptor. Anything
else is refused with UnsafePath, never followed or repaired.

The state folder itself and root's own folders in it (`locks/`) are made by `own_folder`: created with their mode,
narrowed when an older deployer (or a umask) left them wider, and refused when another user owns them: root never
keeps using what someone else can rewrite.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import grp
import os
import stat
import time
from pathlib import Path

from deployer.errors import DeployerError, DiskFull, StateError, UnsafePath

FOLDER_MODE = 0o2770
FILE_MODE = 0o660
STATE_FOLDER_MODE = 0o750  # the receiver's group may enter it to reach the queue and the audit log; nobody else
PRIVATE_FOLDER_MODE = 0o700  # root's alone: the locks
# The files SQLite opens beside a database by itself, by name.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
_NO_SURPRISES = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def check_entry(info: os.stat_result, where: Path) -> None:
    """Refuse what is not a plain file of its own: a link, a device or FIFO, or a hard link to another name."""
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(f"{where} is a symbolic link; refusing to follow it (remove it)", path=str(where))
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"{where} is not a plain file; refusing to open it (remove it)", path=str(where))
    if info.st_nlink != 1:
        raise UnsafePath(f"{where} has {info.st_nlink} hard links; refusing to use it (remove it)", path=str(where))


def open_entry(path: Path, flags: int = os.O_RDONLY, mode: int = 0o600, *, dir_fd: int | None = None) -> int:
    """Open a file in a folder another user may write, never through a link; returns a blocking descriptor.

    With `dir_fd`, `path.name` is opened in that folder (its full path only names it in errors).
    """
    try:
        fd = os.open(path.name if dir_fd is not None else path, flags | _NO_SURPRISES, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link; refusing to follow it (remove it)", path=str(path)) from None
        raise
    try:
        check_entry(os.fstat(fd), path)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_folder(path: Path) -> int:
    """A descriptor on a folder itself, not on what a link in its place points to."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"{path} is not a folder (a link?); refusing to use it", path=str(path)) from None
        raise


def own_folder(path: str | os.PathLike[str], mode: int) -> Path:
    """`path` as a folder of this user's, with no permission beyond `mode`: made so, or narrowed to it.

    Modes are repaired, not refused: the deployer's own earlier versions made these folders 0755, and narrowing
    a folder root owns, through a descriptor opened without following a link, trusts nothing another user wrote.
    A folder another user owns, or a link in its place, is refused with UnsafePath: its owner could have put
    anything in it, and could put anything back after a repair.
    """
    folder = Path(path)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(folder, mode)
        except FileExistsError:
            pass
        fd = open_folder(folder)
        try:
            info = os.fstat(fd)
            if info.st_uid != os.geteuid():
                raise UnsafePath(
                    f"{folder} belongs to uid {info.st_uid}, not to uid {os.geteuid()} that runs the "
                    f"deployer; refusing to use it (chown {os.geteuid()} {folder}, or remove it)",
                    path=str(folder),
                )
            if stat.S_IMODE(info.st_mode) & ~mode:
                os.fchmod(fd, stat.S_IMODE(info.st_mode) & mode)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StateError(f"cannot prepare the folder {folder}: {exc.strerror}") from None
    return folder


def flock_within(fd: int, seconds: float, *, first_poll: float = 0.001, last_poll: float = 0.05) -> bool:
    """Take the exclusive flock on `fd`, waiting at most `seconds`; False when another open file still holds it.

    Whoever can open a lock file can hold it, a read-only descriptor is enough: a wait without a bound is a wait
    another user decides the end of. The pause between tries starts at `first_poll` and doubles up to `last_poll`.
    """
    deadline = time.monotonic() + seconds
    poll = first_poll
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(poll, left))
            poll = min(poll * 2, last_poll)


def check_database(path: Path) -> tuple[int, int]:
    """Before opening a shared SQLite database: it and the files SQLite opens beside it must be plain files.

    Returns the database's (device, inode), for `check_same_database` once SQLite has opened it.
    SQLite (3.40 here) opens the -wal, -shm and -journal files with O_NOFOLLOW itself; the main
    file it opens by name, following a link. So a link swapped in between this check and SQLite's
    open is seen by the second check, before the first statement reads or writes a page; what
    that leaves is a swap there and back within that window, which then needs a root-only SQLite
    database as its target (SQLite refuses any other file as "not a database" before it writes).
    """
    check_entry(os.lstat(path), path)
    for suffix in SQLITE_COMPANIONS:
        companion = path.with_name(path.name + suffix)
        try:
            check_entry(os.lstat(companion), companion)
        except FileNotFoundError:
            continue
    info = os.lstat(path)
    return info.st_dev, info.st_ino


def check_same_database(path: Path, identity: tuple[int, int]) -> None:
    """The database is still the file `check_database` saw, after SQLite opened it."""
    info = os.lstat(path)
    check_entry(info, path)
    if (info.st_dev, info.st_ino) != identity:
        raise UnsafePath(f"{path} was replaced while it was being opened; refusing to use it", path=str(path))


def share_folder(state_dir: str | os.PathLike[str], name: str, db_name: str, group: str | None = None) -> Path:
    """Create `<state_dir>/<name>/<db_name>` with the modes that let `group` write it; returns its path.

    Run by the privileged side (serve, worker) before the receiver starts, at every start, so it
    also repairs modes. Every file whose name starts with `db_name` (the -wal, the -shm, a lock)
    gets the group and 0660. Without a group the folder is its owner's alone (0700, database 0600).
    An entry that is a link or not a plain file is left as it is, and reported all together in
    one UnsafePath once the safe ones are done.
    """
    root = Path(state_dir)
    folder = root / name
    path = folder / db_name
    refused: list[str] = []
    own_folder(root, STATE_FOLDER_MODE)
    try:
        folder.mkdir(exist_ok=True)
        folder_fd = open_folder(folder)
        try:
            try:
                os.close(
                    os.open(db_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_SURPRISES, FILE_MODE, dir_fd=folder_fd)
                )
            except FileExistsError:
                pass
            if group is not None:
                gid = grp.getgrnam(group).gr_gid
                os.chown(root, -1, gid)
                os.chmod(root, stat.S_IMODE(os.stat(root).st_mode) | 0o050)
                os.fchown(folder_fd, -1, gid)
            for entry in sorted(os.listdir(folder_fd)):
                if not (entry.startswith(db_name) if group is not None else entry == db_name):
                    continue
                try:
                    fd = open_entry(folder / entry, dir_fd=folder_fd)
                except UnsafePath as exc:
                    refused.append(str(exc))
                    continue
                try:
                    if group is not None:
                        os.fchown(fd, -1, gid)
                    os.fchmod(fd, FILE_MODE if group is not None else 0o600)
                finally:
                    os.close(fd)
            os.fchmod(folder_fd, FOLDER_MODE if group is not None else 0o700)
        finally:
            os.close(folder_fd)
    except KeyError:
        raise StateError(f"group {group!r} does not exist (create it: groupadd --system {group})") from None
    except OSError as exc:
        raise StateError(f"cannot prepare the folder {folder}: {exc.strerror}") from None
    if refused:
        raise UnsafePath(
            f"the shared folder {folder} holds entries root will not touch: " + "; ".join(refused), path=str(folder)
        )
    return path


LOW_SPACE_BYTES = 1 << 20  # below this the queue and the audit log may not fit one more transaction


def space_problem(path: str | os.PathLike[str], low: int = LOW_SPACE_BYTES) -> str | None:
    """Why the file system that holds `path` cannot take durable writes now, or None when it can."""
    try:
        info = os.statvfs(path)
    except OSError as exc:
        return f"cannot check the free space of {path}: {exc.strerror}"
    free = info.f_bavail * info.f_frsize
    if free < low:
        return f"{free // 1024} KiB free on the file system of {path} (below {low // 1024} KiB)"
    return None


def write_atomically(
    path: Path, text: str, *, durable: bool = True, mode: int = 0o600, error: type[DeployerError] = StateError
) -> None:
    """Replace `path` with `text` whole: a reader sees the old file or the new one, never half of one.

    The text goes to a temporary file in the same folder, made with O_EXCL and O_NOFOLLOW, and is renamed over
    `path` through a descriptor on the folder, so a link planted at either name is replaced, never followed.
    `durable` fsyncs the file before the rename and the folder after it, so the new file survives a power loss
    (a record); without it the rename is atomic but may be lost with the page cache (a status file rewritten
    every second). A full file system is DiskFull whatever `error` is: waiting clears it.
    """
    data = text.encode()
    temporary = f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        folder = open_folder(path.parent)
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_SURPRISES, mode, dir_fd=folder)
            try:
                try:
                    os.fchmod(fd, mode)  # the umask narrowed it at creation; the mode is the caller's choice
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    if durable:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temporary, path.name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temporary, dir_fd=folder)
                raise
            if durable:
                os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"cannot write {path}: {exc.strerror}") from None
        raise error(f"cannot write {path}: {exc.strerror}") from None
