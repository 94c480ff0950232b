"""The console's sign-in attempts per source address, one token bucket a row, shared by every gunicorn worker.

A bucket kept in each worker's memory would let each worker grant its own burst, so the sixth quick attempt would be
throttled only when it reached the worker that answered the first five. A bucket is taken in one write transaction,
so two workers never both spend its last token. A row whose bucket has filled up again is forgotten, and so are the
least recently seen past `max_sources`.
"""

from __future__ import annotations

import math

from deployer.queue.database import Database

MAX_SOURCES = 4096


class AttemptStore:
    def __init__(self, database: Database, *, max_sources: int = MAX_SOURCES) -> None:
        self.database = database
        self.max_sources = max_sources

    def take(self, source: str | None, now: float, *, burst: int, per_second: float) -> int | None:
        """Spend one of `source`'s attempts; the seconds to wait when it has none left (nothing is spent then)."""
        key = source or "-"
        with self.database.write() as conn:
            conn.execute("DELETE FROM signin_attempts WHERE at < ?", (now - burst / per_second,))  # full again
            row = conn.execute("SELECT tokens, at FROM signin_attempts WHERE source = ?", (key,)).fetchone()
            tokens = float(burst) if row is None else min(float(burst), row[0] + max(0.0, now - row[1]) * per_second)
            wait = None if tokens >= 1 else max(1, math.ceil((1 - tokens) / per_second))
            conn.execute(
                "INSERT INTO signin_attempts (source, tokens, at) VALUES (?, ?, ?) "
                "ON CONFLICT (source) DO UPDATE SET tokens = excluded.tokens, at = excluded.at",
                (key, tokens - 1 if wait is None else tokens, now),
            )
            conn.execute(
                "DELETE FROM signin_attempts WHERE source IN "
                "(SELECT source FROM signin_attempts ORDER BY at DESC LIMIT -1 OFFSET ?)",
                (self.max_sources,),
            )
        return wait
