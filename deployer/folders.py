"""The state folders the receiver shares with the privileged side: the queue's and the audit log's.

The receiver (gunicorn, possibly an unprivileged user) writes two SQLite databases, each in a
folder of its own under the state folder. Such a folder is setgid, so every file made in it keeps
the receiver's group, and group-writable, so SQLite can create its -wal and -shm files whoever
opens the database first. The state folder itself gets group read and search only: the receiver
reaches these folders but cannot change app records or locks.
"""

from __future__ import annotations

import contextlib
import grp
import os
import stat
from pathlib import Path

from deployer.errors import StateError

FOLDER_MODE = 0o2770
FILE_MODE = 0o660


def share_folder(state_dir: str | os.PathLike[str], name: str, db_name: str, group: str | None = None) -> Path:
    """Create `<state_dir>/<name>/<db_name>` with the modes that let `group` write it; returns its path.

    Run by the privileged side (serve, worker) before the receiver starts, at every start, so it
    also repairs modes. Every file whose name starts with `db_name` (the -wal, the -shm, a lock)
    gets the group and 0660. Without a group the folder is its owner's alone (0700, database 0600).
    """
    root = Path(state_dir)
    folder = root / name
    path = folder / db_name
    try:
        root.mkdir(parents=True, exist_ok=True)
        folder.mkdir(exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
        if group is not None:
            gid = grp.getgrnam(group).gr_gid
            os.chown(root, -1, gid)
            os.chmod(root, stat.S_IMODE(os.stat(root).st_mode) | 0o050)
            os.chown(folder, -1, gid)
            for entry in folder.iterdir():
                if entry.name.startswith(db_name):
                    os.chown(entry, -1, gid)
                    os.chmod(entry, FILE_MODE)
        os.chmod(folder, FOLDER_MODE if group is not None else 0o700)
        if group is None:
            os.chmod(path, 0o600)
    except KeyError:
        raise StateError(f"group {group!r} does not exist (create it: groupadd --system {group})") from None
    except OSError as exc:
        raise StateError(f"cannot prepare the folder {folder}: {exc.strerror}") from None
    return path
