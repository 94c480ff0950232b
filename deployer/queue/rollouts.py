"""A controller's rollouts: each host's progress, written before and after each step, so a rollout resumes where it
stood; and the operators' aborts, which its run reads between steps."""

from __future__ import annotations

from deployer.errors import StateError
from deployer.queue.database import Database
from deployer.queue.model import RolloutAbort, RolloutHost


class RolloutStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    def plan_rollout(self, rollout_id: str, steps: list[RolloutHost]) -> list[RolloutHost]:
        """Record each host's step once; a rollout that resumes keeps the plan it recorded first."""
        now = self.database.clock()
        with self.database.write() as conn:
            if conn.execute("SELECT 1 FROM rollout_hosts WHERE rollout_id = ?", (rollout_id,)).fetchone() is None:
                conn.executemany(
                    "INSERT INTO rollout_hosts (rollout_id, host, position, batch, previous, state, since) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (rollout_id, step.host, n, step.batch, step.previous, step.state, now)
                        for n, step in enumerate(steps)
                    ],
                )
        return self.rollout_hosts(rollout_id)

    def rollout_hosts(self, rollout_id: str) -> list[RolloutHost]:
        rows = self.database.read(
            "SELECT host, batch, previous, state, host_job, reason, failure, since "
            "FROM rollout_hosts WHERE rollout_id = ? ORDER BY position",
            (rollout_id,),
        )
        return [RolloutHost(*row) for row in rows]

    def set_rollout_host(
        self,
        rollout_id: str,
        host: str,
        state: str,
        *,
        host_job: str | None = None,
        reason: str | None = None,
        failure: str | None = None,
    ) -> RolloutHost:
        """A host's new state; `failure` once set stays (a revert does not erase why the rollout stopped)."""
        with self.database.write() as conn:
            row = conn.execute(
                "UPDATE rollout_hosts SET state = ?, host_job = ?, reason = ?, "
                "failure = COALESCE(?, failure), since = ? WHERE rollout_id = ? AND host = ? "
                "RETURNING host, batch, previous, state, host_job, reason, failure, since",
                (state, host_job, reason, failure, self.database.clock(), rollout_id, host),
            ).fetchone()
        if row is None:
            raise StateError(f"rollout {rollout_id} has no host {host!r}")
        return RolloutHost(*row)

    def request_abort(self, rollout_id: str, *, actor: str, reason: str | None = None) -> bool:
        """Record that an operator asked `rollout_id` to stop; False when it was asked already (the first stands)."""
        with self.database.write() as conn:
            return (
                conn.execute(
                    "INSERT OR IGNORE INTO rollout_aborts (rollout_id, actor, reason, at) VALUES (?, ?, ?, ?)",
                    (rollout_id, actor, reason, self.database.clock()),
                ).rowcount
                == 1
            )

    def abort_of(self, rollout_id: str) -> RolloutAbort | None:
        rows = self.database.read("SELECT actor, reason, at FROM rollout_aborts WHERE rollout_id = ?", (rollout_id,))
        return RolloutAbort(*rows[0]) if rows else None
