"""What the queue's rows read back as: a job, a rollout's host, a submission's outcome, a claim."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from deployer.plan.job_states import CANARY_KINDS, FINISHED, JOB_ID_RE, KINDS, WAITING, JobKind, JobStatus

# The statuses and kinds are the plan layer's words (the claim policy decides on them); found here too.
__all__ = [
    "CANARY_KINDS",
    "FINISHED",
    "JOB_COLUMNS",
    "JOB_ID_RE",
    "KINDS",
    "WAITING",
    "Claim",
    "Job",
    "JobKind",
    "JobStatus",
    "RolloutHost",
    "Submission",
    "job_from_row",
    "new_job_id",
]


@dataclass(frozen=True)
class Job:
    id: str
    app: str
    tag: str | None
    kind: str
    actor: str
    status: str
    source: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    superseded_by: str | None = None
    attempts: int = 0
    not_before: float = 0.0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    waiting_on: str | None = None
    seq: int = 0

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["source"] = dict(self.source) if isinstance(self.source, Mapping) else None
        data.pop("seq")
        return data


@dataclass(frozen=True)
class RolloutHost:
    """One host's row of a rollout: its batch, the tag it had, where it stands (deployer/plan/rollout.py)."""

    host: str
    batch: int
    previous: str | None
    state: str
    host_job: str | None = None
    reason: str | None = None
    failure: str | None = None
    since: float = 0.0


@dataclass(frozen=True)
class RolloutAbort:
    """An operator's request that a rollout stop (and revert, unless the rollout was started with --no-revert)."""

    actor: str
    reason: str | None
    at: float


@dataclass(frozen=True)
class Submission:
    """What a delivery or request led to: a new job, an existing one, or none (ignored).

    verdict: "queued", "waiting" (queued behind a newer release that is queued or running), "duplicate" (this
    delivery or release has its job), "older" (a newer release is live or has succeeded) or "ignored".
    """

    job: Job | None
    created: bool
    reason: str
    verdict: str = "duplicate"


@dataclass(frozen=True)
class Claim:
    job: Job | None  # None: nothing runs now; the claim only superseded releases older than a live one
    superseded: list[Job]


JOB_COLUMNS = (
    "seq, id, app, tag, kind, actor, status, source, reason, superseded_by, attempts, not_before, "
    "created_at, started_at, finished_at, waiting_on"
)


def job_from_row(row: tuple) -> Job:
    """A job from its row, `JOB_COLUMNS` in order; the row is not trusted (see `deployer/queue/rows.py`)."""
    (
        seq,
        id_,
        app,
        tag,
        kind,
        actor,
        status,
        source,
        reason,
        superseded_by,
        attempts,
        not_before,
        created_at,
        started_at,
        finished_at,
        waiting_on,
    ) = row
    try:
        source = json.loads(source)
    except (TypeError, ValueError):
        source = None  # a row the receiver's group wrote by hand; `row_problem` refuses it
    return Job(
        id=id_,
        app=app,
        tag=tag,
        kind=kind,
        actor=actor,
        status=status,
        source=source,
        reason=reason,
        superseded_by=superseded_by,
        attempts=attempts,
        not_before=not_before,
        created_at=created_at,
        started_at=started_at,
        finished_at=finished_at,
        waiting_on=waiting_on,
        seq=seq,
    )


def new_job_id() -> str:
    return "job-" + secrets.token_hex(8)
