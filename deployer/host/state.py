"""The recorded state of each app, written atomically so it survives a crash or a power loss.

One JSON file per app under `<state_dir>/apps/`, written by `folders.write_atomically` with durability:
a reader sees the old record or the new one, never half of one, and a written record survives a power loss.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from deployer.errors import StateError
from deployer.folders import write_atomically
from deployer.plan.records import SERVING, AppState, instance_from

SCHEMA = 1


Publish = Callable[[AppState], None]


class StateStore:
    """The records; `publish`, when given, is told of every record written or forgotten, once it is on disk.

    What is live changes only here, so this is where the queue's copy of it (what GET /apps/<app> answers) is
    kept up to date, whoever changed it: a job, a command run by hand, a reconcile.
    """

    def __init__(self, state_dir: Path, *, publish: Publish | None = None) -> None:
        self.root = Path(state_dir)
        self.apps_dir = self.root / "apps"
        self.publish = publish

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
        except FileNotFoundError:
            return False
        if self.publish is not None:
            self.publish(AppState(app=app))
        return True

    def save(self, state: AppState) -> None:
        payload = {"schema": SCHEMA, **asdict(state)}
        write_atomically(self.path(state.app), json.dumps(payload, indent=2, sort_keys=True) + "\n")
        if self.publish is not None:
            self.publish(state)
