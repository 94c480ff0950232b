"""The recorded state of each app, written atomically so it survives a crash or a power loss.

One JSON file per app under `<state_dir>/apps/`. A write goes to a temporary file in the same
folder, is fsynced, renamed over the old file and the folder is fsynced: a reader sees the old
record or the new one, never half of one.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from deployer.errors import DiskFull, StateError
from deployer.plan.records import SERVING, AppState, instance_from

SCHEMA = 1


class StateStore:
    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir)
        self.apps_dir = self.root / "apps"

    def path(self, app: str) -> Path:
        return self.apps_dir / f"{app}.json"

    def load(self, app: str) -> AppState:
        path = self.path(app)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return AppState(app=app)
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read the state of app {app!r} from {path}: {exc}", app=app) from None
        try:
            return AppState(
                app=data["app"],
                active=instance_from(data.get("active")),
                previous=instance_from(data.get("previous")),
                updated_at=data.get("updated_at"),
                mode=data.get("mode", SERVING),
                mode_detail=data.get("mode_detail", {}),
                drained=data.get("drained"),
            )
        except (KeyError, TypeError) as exc:
            raise StateError(f"the state file {path} is not a deployer state: {exc}", app=app) from None

    def forget(self, app: str) -> bool:
        """Delete an app's record; True if there was one."""
        try:
            self.path(app).unlink()
            return True
        except FileNotFoundError:
            return False

    def save(self, state: AppState) -> None:
        payload = {"schema": SCHEMA, **asdict(state)}
        write_atomically(self.path(state.app), json.dumps(payload, indent=2, sort_keys=True) + "\n")


def write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # waiting helps: it is written once space returns
            raise DiskFull(f"cannot write {path}: {exc.strerror}") from None
        raise StateError(f"cannot write {path}: {exc.strerror}") from None
