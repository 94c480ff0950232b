"""What is live of each app, copied from the host's records, so the receiver (which cannot read them) can dedupe,
a controller can read a host's release and GET /metrics can report it (the digest, the canary's weight).

Every record written is copied here (`publish`, given to the records' store by the wiring), whoever wrote it: a
job, a deploy run by hand, a reconcile; the worker adds the job that made a tag live.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deployer.plan.canary import Split
from deployer.plan.records import AppState
from deployer.queue.database import Database
from deployer.queue.model import JOB_COLUMNS, JobStatus, job_from_row


@dataclass(frozen=True)
class LiveRelease:
    """One app's row: what serves it now (tag None: nothing) and the canary's percent of new flows (None: none)."""

    app: str
    tag: str | None
    port_set: str | None
    digest: str | None
    canary_weight: int | None


class LiveStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def set_active(self, app: str, tag: str | None, job_id: str | None = None, port_set: str | None = None) -> None:
        """The live tag and the job that made it live. The digest and the canary's weight stay as the record's
        copy wrote them (`publish`), the digest only while the tag is the same."""
        with self.database.write() as conn:
            conn.execute(
                "INSERT INTO active (app, tag, job_id, updated_at, port_set) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (app) DO UPDATE SET tag = excluded.tag, job_id = excluded.job_id, "
                "updated_at = excluded.updated_at, port_set = excluded.port_set, "
                "digest = CASE WHEN active.tag IS excluded.tag THEN active.digest END",
                (app, tag, job_id, self.database.clock(), port_set),
            )

    def publish(self, state: AppState) -> None:
        """The app's record as it is now: its active tag, port set and digest and its canary's weight, made live by
        no job (or a job says so after)."""
        active = state.active
        split = Split.of(state)
        with self.database.write() as conn:
            conn.execute(
                "INSERT INTO active (app, tag, job_id, updated_at, port_set, digest, canary_weight) "
                "VALUES (?, ?, NULL, ?, ?, ?, ?) "
                "ON CONFLICT (app) DO UPDATE SET tag = excluded.tag, job_id = NULL, updated_at = excluded.updated_at, "
                "port_set = excluded.port_set, digest = excluded.digest, canary_weight = excluded.canary_weight",
                (
                    state.app,
                    active.tag if active else None,
                    self.database.clock(),
                    active.port_set if active else None,
                    active.digest if active else None,
                    split.weight if split is not None else None,
                ),
            )

    def releases(self) -> list[LiveRelease]:
        """Every app's row, by name: what GET /metrics reports as live."""
        rows = self.database.read("SELECT app, tag, port_set, digest, canary_weight FROM active ORDER BY app")
        return [LiveRelease(*row) for row in rows]

    def active_tag(self, app: str) -> str | None:
        rows = self.database.read("SELECT tag FROM active WHERE app = ?", (app,))
        return rows[0][0] if rows else None

    def live(self, app: str) -> dict[str, Any]:
        """What the worker last saw live of `app` and its last job: what GET /apps/<app> answers a controller."""
        rows = self.database.read("SELECT tag, port_set, job_id FROM active WHERE app = ?", (app,))
        tag, port_set, job_id = rows[0] if rows else (None, None, None)
        last = self.database.read(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE app = ? AND status != ? ORDER BY seq DESC LIMIT 1",
            (app, JobStatus.ACCEPTING),
        )
        job = job_from_row(last[0]) if last else None
        return {
            "app": app,
            "tag": tag,
            "port_set": port_set,
            "job": job_id,
            "last_job": None
            if job is None
            else {
                "id": job.id,
                "tag": job.tag,
                "kind": job.kind,
                "status": job.status,
                "reason": job.reason,
                "rollout": job.source.get("rollout") if isinstance(job.source, Mapping) else None,
            },
        }


def active_row(conn: sqlite3.Connection, app: str) -> tuple[str | None, str | None] | None:
    """The live tag of `app` and the job that made it live, inside the caller's transaction."""
    return conn.execute("SELECT tag, job_id FROM active WHERE app = ?", (app,)).fetchone()


def live_tags(conn: sqlite3.Connection) -> dict[str, str | None]:
    """Every app's live tag, inside the caller's transaction."""
    return dict(conn.execute("SELECT app, tag FROM active").fetchall())
