"""The worker's last sample of each app's live flows and health, for the console (which cannot read conntrack or
Docker). One row an app, replaced whole at each sample; an app the sample lacks keeps no row."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deployer.queue.database import Database


@dataclass(frozen=True)
class FlowSample:
    app: str
    sampled_at: float
    live: int | None  # None: no such instance
    canary: int | None
    old: int | None
    health: str | None

    def counts(self) -> dict[str, int]:
        return {
            role: n for role, n in (("live", self.live), ("canary", self.canary), ("old", self.old)) if n is not None
        }


class FlowStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def publish(self, samples: Mapping[str, Mapping[str, Any]], *, at: float) -> None:
        """app -> {"live", "canary", "old": flows, "health": text}, taken at `at`: every app's row, in one write."""
        with self.database.write() as conn:
            conn.execute("DELETE FROM flows")
            conn.executemany(
                "INSERT INTO flows (app, sampled_at, live, canary, old, health) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (app, at, s.get("live"), s.get("canary"), s.get("old"), s.get("health"))
                    for app, s in sorted(samples.items())
                ],
            )

    def samples(self) -> dict[str, FlowSample]:
        rows = self.database.read("SELECT app, sampled_at, live, canary, old, health FROM flows")
        return {row[0]: FlowSample(*row) for row in rows}
