"""The worker's heartbeat: that it runs, what it last found of Docker, netfilter and the registries, its faults."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from deployer.queue.database import Database


class HeartbeatStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def heartbeat(
        self,
        *,
        pid: int,
        started_at: float,
        docker: str | None = None,
        netfilter: str | None = None,
        registry: str | None = None,
        checked: bool = False,
        faults: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        now = self.database.clock()
        with self.database.write() as conn:
            conn.execute(
                "INSERT INTO worker (id, pid, started_at, heartbeat_at) VALUES (0, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, started_at = excluded.started_at, "
                "heartbeat_at = excluded.heartbeat_at",
                (pid, started_at, now),
            )
            if checked:
                conn.execute(
                    "UPDATE worker SET docker = ?, netfilter = ?, registry = ?, checked_at = ? WHERE id = 0",
                    (docker, netfilter, registry, now),
                )
            if faults is not None:
                conn.execute("UPDATE worker SET faults = ? WHERE id = 0", (json.dumps(dict(faults), sort_keys=True),))

    def worker_status(self) -> dict[str, Any] | None:
        """The worker's last heartbeat; `faults` maps each part it found wrong to {"reason", "since"}."""
        rows = self.database.read(
            "SELECT pid, started_at, heartbeat_at, docker, netfilter, registry, checked_at, faults FROM worker"
        )
        if not rows:
            return None
        status = dict(
            zip(("pid", "started_at", "heartbeat_at", "docker", "netfilter", "registry", "checked_at"), rows[0][:-1])
        )
        try:
            faults = json.loads(rows[0][-1] or "{}")
        except ValueError:
            faults = {}
        status["faults"] = faults if isinstance(faults, dict) else {}
        return status
