"""Each report feed's cursor over the audit log: where it stands, its state, and its retry.

Kept in the queue's database rather than beside the audit log: the log is append-only and hash-chained, and a
cursor is written at every message; the queue is already the shared, writable store of the receiver's group, which
the unprivileged report loop belongs to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deployer.queue.database import Database

COLUMNS = "feed, seq, done, state, attempts, retry_at, problem"


@dataclass(frozen=True)
class Cursor:
    feed: str
    seq: int  # the last audit entry whose messages were all delivered
    done: int = 0  # how many messages of the next entry were delivered
    state: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    retry_at: float | None = None
    problem: str | None = None


class ReportStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def begin(self, feed: str, head: int) -> Cursor:
        """The feed's cursor; a new feed starts at `head`: what happened before it was configured is not reported."""
        with self.database.write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO report_cursors (feed, seq, done, state, attempts, updated_at) "
                "VALUES (?, ?, 0, '{}', 0, ?)",
                (feed, head, self.database.clock()),
            )
        return self.cursor(feed)

    def retire_others(self, feeds: list[str]) -> None:
        """Forget the cursors of feeds the config no longer has: their backlog would only grow. One configured
        again later starts at the head, as a new feed does."""
        with self.database.write() as conn:
            marks = ", ".join("?" for _ in feeds)
            conn.execute(
                f"DELETE FROM report_cursors WHERE feed NOT IN ({marks})" if feeds else "DELETE FROM report_cursors",
                feeds,
            )

    def backlog(self, head: int) -> dict[str, int]:
        """Each feed's audit entries not yet delivered whole, for GET /metrics."""
        return {c.feed: max(0, head - c.seq) for c in self.cursors()}

    def cursor(self, feed: str) -> Cursor:
        rows = self.database.read(f"SELECT {COLUMNS} FROM report_cursors WHERE feed = ?", (feed,))
        if not rows:
            raise KeyError(feed)
        return _cursor(rows[0])

    def cursors(self) -> list[Cursor]:
        return [_cursor(row) for row in self.database.read(f"SELECT {COLUMNS} FROM report_cursors ORDER BY feed")]

    def save(self, cursor: Cursor) -> None:
        with self.database.write() as conn:
            conn.execute(
                "UPDATE report_cursors SET seq = ?, done = ?, state = ?, attempts = ?, retry_at = ?, problem = ?, "
                "updated_at = ? WHERE feed = ?",
                (
                    cursor.seq,
                    cursor.done,
                    json.dumps(cursor.state, sort_keys=True),
                    cursor.attempts,
                    cursor.retry_at,
                    cursor.problem,
                    self.database.clock(),
                    cursor.feed,
                ),
            )


def _cursor(row: tuple) -> Cursor:
    feed, seq, done, state, attempts, retry_at, problem = row
    return Cursor(feed, seq, done, json.loads(state), attempts, retry_at, problem)
