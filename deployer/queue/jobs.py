"""The jobs and their steps: submit, confirm or withdraw, claim, finish, requeue, wake, recover.

Job states: queued -> running -> succeeded | failed; queued -> superseded | skipped (a release published before
another that is queued or running waits queued, with the reason, until that one fails or goes live); a running job
whose worker died, whose app was busy, or that met a transient fault of the host (`waiting_on` names
it: docker, registry, disk) goes back to queued. A job the receiver is still accepting is `accepting`:
no worker claims it until its audit record is written (`confirm`); if that record cannot be written,
the job is deleted again (`withdraw`) and never ran. No other job is ever deleted.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from deployer.errors import StateError
from deployer.plan.claims import Candidate, Interrupted, Resumable, decide_claim, decide_recovery
from deployer.plan.release_order import SETTLED, KnownRelease, decide_arrival, newest, retried, retry_reason
from deployer.queue.database import Database
from deployer.queue.deliveries import forget_deliveries, remember_delivery, seen_delivery
from deployer.queue.live import active_row, live_tags
from deployer.queue.model import (
    CANARY_KINDS,
    FINISHED,
    JOB_COLUMNS,
    WAITING,
    Claim,
    Job,
    JobKind,
    JobStatus,
    Submission,
    job_from_row,
    new_job_id,
)


class JobStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    # --- the receiver's side -------------------------------------------------------------------

    def submit_release(
        self,
        *,
        app: str,
        tag: str,
        actor: str,
        hook_id: str,
        delivery: str,
        source: Mapping[str, Any],
        published_at: str | None = None,
        hold: bool = False,
        kind: str = JobKind.RELEASE,
    ) -> Submission:
        """Queue a release unless this delivery or this release already has its job, or a newer one is live or has
        succeeded; behind a newer one that is queued or running it is queued to wait (`decide_arrival`). A release
        whose last job failed is queued again when it arrives again, redelivered or delivered anew (`retried`): the
        new job's source names the failed one (`retry_of`), and the delivery's answer becomes the retry's.

        "Newer" is GitHub's `published_at`: the order in which releases were published, which a redelivery keeps
        and an out-of-order arrival does not change. Without it (a caller that has none) the order is not checked.
        A waiting job's `reason` says what it waits behind. With `hold`, a new job is `accepting` until `confirm`
        (or `withdraw`). `kind`: a controller queues a fleet app's release as a rollout. The job and its delivery
        are written in one transaction.
        """
        now = self.database.clock()
        with self.database.write() as conn:
            seen = seen_delivery(conn, hook_id, delivery)
            earlier = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE app = ? AND tag = ? AND status != ? "
                "AND (kind = ? OR status IN (?, ?)) ORDER BY seq DESC LIMIT 1",
                (app, tag, JobStatus.ACCEPTING, kind, JobStatus.QUEUED, JobStatus.RUNNING),
            ).fetchone()
            active = active_row(conn, app)
            previous = job_from_row(earlier) if earlier is not None else None
            live = active is not None and active[0] == tag
            retry_of = previous.id if previous is not None and retried(previous.status, live) else None
            if seen is not None and (retry_of is None or seen.job is None):
                return seen
            if previous is not None and previous.status != JobStatus.FAILED:
                job = previous
                reason = earlier_reason(job)
            elif live:
                job = get_job(conn, active[1]) if active[1] else None
                reason = f"tag {tag} is already active"
            elif (
                arrival := decide_arrival(
                    tag, published_at, known_releases(conn, app, published_at, active[0] if active else None, kind)
                )
            ).verdict == "older":
                job = get_job(conn, arrival.newer.id)
                remember_delivery(conn, hook_id, delivery, job.id, "older", arrival.reason, now)
                return Submission(job, False, arrival.reason, "older")
            else:
                job = insert_job(
                    conn,
                    app=app,
                    tag=tag,
                    kind=kind,
                    actor=actor,
                    source={**source, "retry_of": retry_of} if retry_of else source,
                    now=now,
                    status=JobStatus.ACCEPTING if hold else JobStatus.QUEUED,
                )
                waiting = arrival.verdict == "waiting"
                if published_at is not None:
                    conn.execute(
                        "UPDATE jobs SET published_at = ?, reason = ? WHERE seq = ?",
                        (published_at, arrival.reason if waiting else None, job.seq),
                    )
                    job = get_job(conn, job.id)
                reason = retry_reason(tag, retry_of, arrival.reason) if retry_of else arrival.reason
                remember_delivery(conn, hook_id, delivery, job.id, arrival.verdict, reason, now)
                return Submission(job, True, reason, arrival.verdict)
            remember_delivery(conn, hook_id, delivery, job.id if job else None, "duplicate", reason, now)
            return Submission(job, False, reason)

    def submit_manual(
        self,
        *,
        app: str,
        tag: str | None,
        actor: str,
        source: Mapping[str, Any],
        hold: bool = False,
        kind: str = JobKind.REDEPLOY,
    ) -> Job:
        """A signed redeploy (or promote, or abort) always makes a job: an operator who asks again means it.

        `hold`: as in submit_release."""
        assert kind in (JobKind.REDEPLOY, JobKind.ROLLOUT) or kind in CANARY_KINDS, kind
        with self.database.write() as conn:
            return insert_job(
                conn,
                app=app,
                tag=tag,
                kind=kind,
                actor=actor,
                source=source,
                now=self.database.clock(),
                status=JobStatus.ACCEPTING if hold else JobStatus.QUEUED,
            )

    def submit_rollout_step(
        self, *, app: str, tag: str | None, actor: str, rollout: str, source: Mapping[str, Any]
    ) -> tuple[Job, bool]:
        """A controller's step of `rollout` on this host: one job per (rollout, app, tag), however often it is posted.

        A controller restarted between its POST and its record of the answer may post the same step again: it gets
        the job the first POST made (and False), not a second deploy. A rollout's deploy and its revert differ in
        tag, so each is its own step. `source` carries `rollout`; the job is held as by `submit_manual`.
        """
        with self.database.write() as conn:
            row = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE app = ? AND tag IS ? AND kind = ? "
                "AND json_extract(source, '$.rollout') = ? ORDER BY seq DESC LIMIT 1",
                (app, tag, JobKind.REDEPLOY, rollout),
            ).fetchone()
            if row is not None:
                return job_from_row(row), False
            return insert_job(
                conn,
                app=app,
                tag=tag,
                kind=JobKind.REDEPLOY,
                actor=actor,
                source={**source, "rollout": rollout},
                now=self.database.clock(),
                status=JobStatus.ACCEPTING,
            ), True

    def confirm(self, job: Job) -> Job:
        """An accepting job's audit record is written: from now on a worker may claim it."""
        with self.database.write() as conn:
            row = conn.execute(
                f"UPDATE jobs SET status = ? WHERE id = ? AND status = ? RETURNING {JOB_COLUMNS}",
                (JobStatus.QUEUED, job.id, JobStatus.ACCEPTING),
            ).fetchone()
        if row is None:
            raise StateError(f"job {job.id} is no longer being accepted")
        return job_from_row(row)

    def withdraw(self, job: Job) -> bool:
        """Delete an accepting job and the delivery that led to it: it was never accepted, so a redelivery is new."""
        with self.database.write() as conn:
            deleted = conn.execute(
                "DELETE FROM jobs WHERE id = ? AND status = ?", (job.id, JobStatus.ACCEPTING)
            ).rowcount
            if deleted:
                forget_deliveries(conn, job.id)
        return deleted == 1

    # --- reading -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        rows = self.database.read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return job_from_row(rows[0]) if rows else None

    def jobs(self, *, app: str | None = None, status: str | None = None) -> list[Job]:
        where, args = [], []
        if app is not None:
            where.append("app = ?")
            args.append(app)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return [
            job_from_row(r)
            for r in self.database.read(f"SELECT {JOB_COLUMNS} FROM jobs{clause} ORDER BY seq", tuple(args))
        ]

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        rows = self.database.read(
            "SELECT n, at, name, outcome, detail FROM steps WHERE job_id = ? ORDER BY n", (job_id,)
        )
        return [
            {
                "n": n,
                "at": at,
                "name": name,
                "outcome": outcome,
                **({"detail": json.loads(detail)} if detail != "{}" else {}),
            }
            for n, at, name, outcome, detail in rows
        ]

    def outcomes(self) -> list[tuple[str, str, str, int]]:
        """(app, kind, status, how many) of the finished jobs: what GET /metrics counts as deploys."""
        marks = ", ".join("?" * len(FINISHED))
        return self.database.read(
            f"SELECT app, kind, status, COUNT(*) FROM jobs WHERE status IN ({marks}) "
            "GROUP BY app, kind, status ORDER BY app, kind, status",
            tuple(sorted(FINISHED)),
        )

    def status_counts(self) -> dict[str, int]:
        """How many jobs are in each status now (a status no job has is absent)."""
        return dict(self.database.read("SELECT status, COUNT(*) FROM jobs GROUP BY status"))

    def run_times(self) -> list[tuple[str, float]]:
        """(app, seconds from its last start to its end) of every job that ran to success or failure.

        One row a job, read through the status index: tens of thousands of jobs take milliseconds."""
        return self.database.read(
            "SELECT app, finished_at - started_at FROM jobs WHERE status IN (?, ?) "
            "AND started_at IS NOT NULL AND finished_at IS NOT NULL ORDER BY seq",
            (JobStatus.SUCCEEDED, JobStatus.FAILED),
        )

    def waiting(self) -> list[Job]:
        """Queued jobs that wait on a fault of the host."""
        rows = self.database.read(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = ? AND waiting_on IS NOT NULL ORDER BY seq",
            (JobStatus.QUEUED,),
        )
        return [job_from_row(r) for r in rows]

    # --- the worker's side ---------------------------------------------------------------------

    def claim(self) -> Claim | None:
        """Start the job `deployer.plan.claims.decide_claim` picks and supersede the ones it names, in one
        transaction."""
        now = self.database.clock()
        with self.database.write() as conn:
            busy = {
                row[0] for row in conn.execute("SELECT DISTINCT app FROM jobs WHERE status = ?", (JobStatus.RUNNING,))
            }
            rows = conn.execute(
                f"SELECT {JOB_COLUMNS}, published_at FROM jobs WHERE status = ? ORDER BY seq", (JobStatus.QUEUED,)
            ).fetchall()
            waiting = [(job_from_row(r[:-1]), r[-1]) for r in rows]
            live = live_tags(conn)
            settled = {}
            for app in {j.app for j, published_at in waiting if published_at is not None}:
                known = known_releases(conn, app, "", live.get(app))
                found = [release for release in known if release.where in SETTLED]
                if found:
                    settled[app] = newest(found)
            decision = decide_claim(
                [
                    Candidate(j.seq, j.id, j.app, j.tag, j.kind, j.not_before, published_at)
                    for j, published_at in waiting
                ],
                busy=busy,
                live=live,
                now=now,
                settled=settled,
            )
            if decision is None:
                return None
            superseded = []
            for older in decision.superseded:
                row = conn.execute(
                    f"UPDATE jobs SET status = ?, superseded_by = ?, reason = ?, finished_at = ? "
                    f"WHERE seq = ? RETURNING {JOB_COLUMNS}",
                    (JobStatus.SUPERSEDED, older.by or decision.run.id, older.reason, now, older.seq),
                ).fetchone()
                superseded.append(job_from_row(row))
            if decision.run is None:
                return Claim(None, superseded)
            row = conn.execute(
                f"UPDATE jobs SET status = ?, attempts = attempts + 1, started_at = ?, "
                f"reason = NULL, waiting_on = NULL WHERE seq = ? RETURNING {JOB_COLUMNS}",
                (JobStatus.RUNNING, now, decision.run.seq),
            ).fetchone()
            return Claim(job_from_row(row), superseded)

    def finish(self, job: Job, status: str, reason: str | None = None) -> bool:
        """End a running job. False when this attempt no longer owns it (it was recovered meanwhile)."""
        assert status in FINISHED, status
        with self.database.write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET status = ?, reason = ?, finished_at = ? WHERE id = ? AND status = ? AND attempts = ?",
                (status, reason, self.database.clock(), job.id, JobStatus.RUNNING, job.attempts),
            ).rowcount
        return updated == 1

    def skip(self, job: Job, reason: str) -> bool:
        return self.finish(job, JobStatus.SKIPPED, reason)

    def requeue(self, job: Job, reason: str, *, delay: float = 0.0, waiting_on: str | None = None) -> bool:
        """Put a running job back: it runs again once `delay` has passed (or `wake(waiting_on)`), unless something
        newer supersedes it."""
        with self.database.write() as conn:
            updated = conn.execute(
                "UPDATE jobs SET status = ?, reason = ?, not_before = ?, waiting_on = ? "
                "WHERE id = ? AND status = ? AND attempts = ?",
                (
                    JobStatus.QUEUED,
                    reason,
                    self.database.clock() + delay,
                    waiting_on,
                    job.id,
                    JobStatus.RUNNING,
                    job.attempts,
                ),
            ).rowcount
        return updated == 1

    def wake(self, fault: str) -> int:
        """The fault cleared: the jobs waiting on it may run now, not at the end of their backoff."""
        with self.database.write() as conn:
            return conn.execute(
                "UPDATE jobs SET not_before = 0 WHERE status = ? AND waiting_on = ?", (JobStatus.QUEUED, fault)
            ).rowcount

    def recover(self, *, max_attempts: int, rollout: Resumable | None = None) -> list[Job]:
        """Jobs left running by a worker that died: back to the queue, or failed, as `decide_recovery` says.

        Only the one worker that holds the worker lock may call this: it knows no other worker runs.
        `rollout`: how long a controller's rollouts are resumed (its [fleet] deadline).
        """
        now = self.database.clock()
        recovered = []
        with self.database.write() as conn:
            running = [
                job_from_row(r)
                for r in conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = ?", (JobStatus.RUNNING,))
            ]
            decisions = decide_recovery(
                [Interrupted(j.seq, j.id, j.kind, j.attempts, j.created_at) for j in running],
                max_attempts=max_attempts,
                rollout=rollout,
                now=now,
            )
            for decision in decisions:
                if decision.requeued:
                    conn.execute(
                        "UPDATE jobs SET status = ?, reason = ?, not_before = 0 WHERE seq = ?",
                        (JobStatus.QUEUED, decision.reason, decision.seq),
                    )
                else:
                    conn.execute(
                        "UPDATE jobs SET status = ?, reason = ?, finished_at = ? WHERE seq = ?",
                        (JobStatus.FAILED, decision.reason, now, decision.seq),
                    )
                add_step(
                    conn,
                    decision.id,
                    "interrupted",
                    "requeued" if decision.requeued else "failed",
                    {"reason": decision.reason},
                    now,
                )
                recovered.append(get_job(conn, decision.id))
        return [j for j in recovered if j is not None]

    def add_step(self, job_id: str, name: str, outcome: str | None, detail: Mapping[str, Any]) -> None:
        with self.database.write() as conn:
            add_step(conn, job_id, name, outcome, detail, self.database.clock())


def get_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return job_from_row(row) if row else None


def insert_job(
    conn: sqlite3.Connection,
    *,
    app: str,
    tag: str | None,
    kind: str,
    actor: str,
    source: Mapping[str, Any],
    now: float,
    status: str = JobStatus.QUEUED,
) -> Job:
    row = conn.execute(
        f"INSERT INTO jobs (id, app, tag, kind, actor, source, status, created_at) "
        f"VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {JOB_COLUMNS}",
        (new_job_id(), app, tag, kind, actor, json.dumps(dict(source), sort_keys=True), status, now),
    ).fetchone()
    return job_from_row(row)


def add_step(
    conn: sqlite3.Connection, job_id: str, name: str, outcome: str | None, detail: Mapping[str, Any], now: float
) -> None:
    n = conn.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM steps WHERE job_id = ?", (job_id,)).fetchone()[0]
    conn.execute(
        "INSERT INTO steps (job_id, n, at, name, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
        (job_id, n, now, name, outcome, json.dumps(dict(detail), sort_keys=True, default=str)),
    )


def known_releases(
    conn: sqlite3.Connection, app: str, after: str | None, live_tag: str | None, kind: str | None = None
) -> list[KnownRelease]:
    """The releases of `app` published after `after` that are queued, running, succeeded or live (of `kind`, when
    given), for `deployer.plan.release_order`. Empty when `after` is None: the order is not checked."""
    if after is None:
        return []
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS}, published_at FROM jobs WHERE app = ? AND (? IS NULL OR kind = ?) AND published_at > ? "
        "AND (status IN (?, ?, ?) OR (tag IS ? AND status != ?)) ORDER BY seq",
        (
            app,
            kind,
            kind,
            after,
            JobStatus.QUEUED,
            JobStatus.RUNNING,
            JobStatus.SUCCEEDED,
            live_tag,
            JobStatus.ACCEPTING,
        ),
    ).fetchall()
    known = []
    for row in rows:
        job = job_from_row(row[:-1])
        where = "live" if job.tag == live_tag and job.status not in WAITING else job.status
        known.append(KnownRelease(job.id, job.tag, row[-1], where))
    return known


def earlier_reason(job: Job) -> str:
    """Why a release that already has `job` is not queued again."""
    tag = job.tag
    return {
        JobStatus.QUEUED: f"release {tag} is already queued as {job.id}",
        JobStatus.RUNNING: f"release {tag} is already being deployed by {job.id}",
        JobStatus.SUCCEEDED: f"release {tag} was already deployed by {job.id}",
        JobStatus.SUPERSEDED: f"release {tag} was superseded by {job.superseded_by}; redeploy it with POST /deploy",
        JobStatus.SKIPPED: f"release {tag} was already handled by {job.id} ({job.reason})",
    }.get(job.status, f"release {tag} already has job {job.id}")
