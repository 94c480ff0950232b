"""Which waiting job runs next, which of its app's waiting jobs it supersedes and which wait behind it; which jobs a
stopped worker left running are tried again (pure).

The queue reads the candidate rows and what is live inside its write transaction, calls `decide_claim`, and writes
the outcome in that same transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from deployer.plan.job_states import CANARY_KINDS, JobKind
from deployer.plan.release_order import KnownRelease, stale_reason


@dataclass(frozen=True)
class Candidate:
    """A queued job, as much of it as the decision reads. `not_before` is whatever the row holds: a row with a
    malformed time is claimed at once, for the worker to refuse."""

    seq: int
    id: str
    app: str
    tag: str | None
    kind: str
    not_before: object = 0.0
    published_at: str | None = None  # a GitHub release's; None: its order is not known


@dataclass(frozen=True)
class Superseded:
    seq: int
    reason: str
    by: str | None = None  # the job that supersedes it; None: the one the decision runs


@dataclass(frozen=True)
class ClaimDecision:
    run: Candidate | None  # None: nothing runs now, only `superseded` are written
    superseded: tuple[Superseded, ...] = ()


def decide_claim(
    waiting: Sequence[Candidate],
    *,
    busy: Collection[str],
    live: Mapping[str, str | None],
    now: float,
    settled: Mapping[str, KnownRelease] | None = None,
) -> ClaimDecision | None:
    """The newest waiting job of an idle app runs; the older waiting jobs of that app are superseded, except the
    releases published before the release that runs: they wait behind it, and the newest of them runs if it fails.

    `waiting` in queue order; `busy`: the apps with a running job; `live`: each app's live tag; `settled`: each
    app's newest release that is live or has succeeded: a waiting release published before it is superseded by it
    (busy app or not), and never runs. Apps are served in the order their oldest waiting job arrived, so a busy app
    does not starve others. A promote or abort ends the canary the deploys after it would be refused during: it runs
    first, alone, and supersedes nothing.
    """
    settled = settled or {}
    stale = tuple(
        Superseded(job.seq, stale_reason(job.tag, job.published_at, settled[job.app]), settled[job.app].id)
        for job in waiting
        if job.published_at is not None and job.app in settled and job.published_at < settled[job.app].published_at
    )
    gone = {old.seq for old in stale}
    remaining = [job for job in waiting if job.seq not in gone]
    order: list[str] = []
    for job in remaining:
        if job.app not in order:
            order.append(job.app)
    for app in order:
        if app in busy:
            continue
        jobs = [j for j in remaining if j.app == app]
        action = next((j for j in jobs if j.kind in CANARY_KINDS), None)
        behind = waiting_behind(jobs)
        newest = action or winner([j for j in jobs if j.seq not in behind], live.get(app))
        if isinstance(newest.not_before, (int, float)) and newest.not_before > now:
            continue
        if action is not None:
            return ClaimDecision(newest, stale)
        kept = behind if newest.published_at is not None else set()
        superseded = tuple(
            Superseded(older.seq, supersede_reason(newest, older))
            for older in jobs
            if older.seq != newest.seq and older.seq not in kept
        )
        return ClaimDecision(newest, stale + superseded)
    return ClaimDecision(None, stale) if stale else None


def waiting_behind(jobs: Sequence[Candidate]) -> set[int]:
    """The releases of one app published before another waiting release of it: they wait for it to run."""
    latest = max((job.published_at for job in jobs if job.published_at is not None), default=None)
    return {
        job.seq for job in jobs if job.published_at is not None and latest is not None and job.published_at < latest
    }


def winner(waiting: Sequence[Candidate], live_tag: str | None) -> Candidate:
    """The waiting job of an app that runs: the last queued, unless that only redeploys the live release
    (no tag, or the live tag) while a release waits: a redeploy of what runs must not cancel something newer.
    An explicit redeploy of another tag (a rollback) is meant, and wins as the last queued.
    """
    newest = waiting[-1]
    if newest.kind == JobKind.REDEPLOY and newest.tag in (None, live_tag):
        releases = [job for job in waiting if job.kind == JobKind.RELEASE]
        if releases:
            return releases[-1]
    return newest


def supersede_reason(newest: Candidate, older: Candidate) -> str:
    why = (
        "which was queued later" if older.seq < newest.seq else "a newer release than the live one this would redeploy"
    )
    return f"superseded by {newest.id} ({newest.tag or 'active release'}), {why}"


# --- jobs a stopped worker left running ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Interrupted:
    """A job found running when a worker starts: its worker stopped (was killed, crashed, lost power) while it ran."""

    seq: int
    id: str
    kind: str
    attempts: int  # how many times it was claimed, this run included
    created_at: float = 0.0  # when it was queued: a rollout's deadline counts from here


@dataclass(frozen=True)
class Resumable:
    """How long a rollout may be resumed: `deadline` seconds after it was queued it gives up (and reverts), and
    for `grace` seconds more it is still resumed, so that the giving up itself survives a stop."""

    deadline: float
    grace: float


@dataclass(frozen=True)
class Recovery:
    seq: int
    id: str
    requeued: bool  # False: failed, not tried again
    reason: str


def decide_recovery(
    interrupted: Sequence[Interrupted], *, max_attempts: int, rollout: Resumable | None, now: float
) -> list[Recovery]:
    """Each interrupted job back to the queue, or failed.

    A job whose worker stopped `max_attempts` times may be what stops it: it is failed. A rollout is not: it is
    built to resume from each host's recorded state, and its worker (the controller) stopping says nothing about
    it. It is queued again after any number of stops until its deadline and grace have both passed (by then its
    own run has given up and reverted, or the giving up itself keeps stopping the worker).
    """
    decisions = []
    for job in interrupted:
        if job.kind == JobKind.ROLLOUT and rollout is not None:
            ends = job.created_at + rollout.deadline + rollout.grace
            if now <= ends:
                reason = (
                    f"the controller stopped while this rollout ran ({job.attempts} "
                    f"{'time' if job.attempts == 1 else 'times'}); it resumes from each host's recorded state"
                )
                decisions.append(Recovery(job.seq, job.id, True, reason))
            else:
                reason = (
                    f"the controller stopped while this rollout ran, {job.attempts} times, the last after its "
                    f"deadline ({rollout.deadline:g} s) and the time to revert ({rollout.grace:g} s) had passed; "
                    f"not tried again (check `deployer fleet status`, then redeploy by hand)"
                )
                decisions.append(Recovery(job.seq, job.id, False, reason))
        elif job.attempts >= max_attempts:
            reason = (
                f"the worker stopped while this job ran, {job.attempts} times; not tried again "
                f"(check the worker's log, then redeploy by hand)"
            )
            decisions.append(Recovery(job.seq, job.id, False, reason))
        else:
            decisions.append(Recovery(job.seq, job.id, True, "the worker stopped while this job ran; queued again"))
    return decisions
