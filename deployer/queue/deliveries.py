"""The deliveries the receiver has seen (so a redelivery gets the same answer) and the nonces it has used."""

from __future__ import annotations

import sqlite3
from typing import Any

from deployer.errors import Unauthorized
from deployer.queue.database import Database
from deployer.queue.model import JOB_COLUMNS, Submission, job_from_row


class DeliveryStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def record_ignored(self, *, hook_id: str, delivery: str, reason: str) -> Submission:
        """Remember a delivery that deploys nothing, so its redelivery gets the same answer."""
        with self.database.write() as conn:
            seen = seen_delivery(conn, hook_id, delivery)
            if seen is not None:
                return seen
            remember_delivery(conn, hook_id, delivery, None, "ignored", reason, self.database.clock())
        return Submission(None, False, reason, "ignored")

    def delivery(self, hook_id: str, delivery: str) -> dict[str, Any] | None:
        rows = self.database.read(
            "SELECT job_id, verdict, reason FROM deliveries WHERE hook_id = ? AND delivery = ?", (hook_id, delivery)
        )
        return dict(zip(("job_id", "verdict", "reason"), rows[0])) if rows else None

    def use_nonce(self, key_id: str, nonce: str, expires_at: float) -> None:
        """Remember a nonce until `expires_at`; a second use is Unauthorized."""
        now = self.database.clock()
        with self.database.write() as conn:
            conn.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
            try:
                conn.execute(
                    "INSERT INTO nonces (key_id, nonce, expires_at) VALUES (?, ?, ?)", (key_id, nonce, expires_at)
                )
            except sqlite3.IntegrityError:
                raise Unauthorized("nonce already used") from None


def seen_delivery(conn: sqlite3.Connection, hook_id: str, delivery: str) -> Submission | None:
    """The answer a delivery already got, inside the caller's transaction; None when it is new."""
    row = conn.execute(
        "SELECT job_id, verdict, reason FROM deliveries WHERE hook_id = ? AND delivery = ?", (hook_id, delivery)
    ).fetchone()
    if row is None:
        return None
    job = None
    if row[0]:
        found = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (row[0],)).fetchone()
        job = job_from_row(found) if found else None
    return Submission(job, False, f"delivery {delivery} was already received ({row[2]})")


def remember_delivery(
    conn: sqlite3.Connection, hook_id: str, delivery: str, job_id: str | None, verdict: str, reason: str, now: float
) -> None:
    """The answer a delivery got; a redelivery of a failed release's delivery replaces it with its retry's."""
    conn.execute(
        "INSERT INTO deliveries (hook_id, delivery, job_id, verdict, reason, at) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (hook_id, delivery) DO UPDATE SET "
        "job_id = excluded.job_id, verdict = excluded.verdict, reason = excluded.reason, at = excluded.at",
        (hook_id, delivery, job_id, verdict, reason, now),
    )


def forget_deliveries(conn: sqlite3.Connection, job_id: str) -> None:
    """A withdrawn job was never accepted: the deliveries that led to it are new again."""
    conn.execute("DELETE FROM deliveries WHERE job_id = ?", (job_id,))
