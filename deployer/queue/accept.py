"""How a new job is accepted: held, recorded in the audit log, then released to the worker; or withdrawn.

The queue and the audit log are two SQLite files, so no one transaction holds both: the job is written first as
`accepting` (no worker claims it), then its `job.queued` record, then the job is released. The caller answers
"accepted" only when all three got through; any failure leaves no job that could run unrecorded.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from deployer.errors import AuditError, StateError
from deployer.queue.jobs import JobStore
from deployer.queue.model import Job

log = logging.getLogger(__name__)


class Recorder(Protocol):
    """The audit journal, as acceptance uses it."""

    def record_or_raise(self, event: str, **fields: Any) -> None: ...

    def record(self, event: str, **fields: Any) -> None: ...


def accept(jobs: JobStore, journal: Recorder, held: Job, **fields: Any) -> Job:
    """Make a held job claimable once its `job.queued` record (with `fields`) is in the audit log; else withdraw it
    and raise. Returns the released job."""
    try:
        journal.record_or_raise("job.queued", **fields)
    except AuditError:
        withdraw(jobs, held)
        raise
    try:
        return jobs.confirm(held)
    except StateError as exc:
        withdraw(jobs, held)
        journal.record(
            "job.withdrawn",
            job=held.id,
            app=held.app,
            actor=held.actor,
            outcome="failed",
            reason=f"the job could not be released to the worker: {exc}",
        )
        raise


def withdraw(jobs: JobStore, job: Job) -> None:
    """Withdraw a held job; one that cannot be withdrawn stays `accepting`: never claimed, never run."""
    try:
        jobs.withdraw(job)
    except StateError as exc:
        log.error("job %s could not be withdrawn; it stays accepting and will not run: %s", job.id, exc)
