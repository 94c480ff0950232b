"""Accepting a new job: held, recorded, released; or withdrawn, with or without its record (deployer/queue/accept.py)."""

from __future__ import annotations

import logging

import pytest

from deployer.errors import AuditError, StateError
from deployer.queue.accept import accept
from deployer.queue.jobs import JobStore
from deployer.queue.queue import Queue


class Recorder:
    """The journal as acceptance uses it; `failing` makes every required record fail."""

    def __init__(self, failing: bool = False) -> None:
        self.failing = failing
        self.events: list[tuple[str, dict]] = []

    def record_or_raise(self, event: str, **fields) -> None:
        if self.failing:
            raise AuditError("cannot write the audit log")
        self.events.append((event, fields))

    def record(self, event: str, **fields) -> None:
        self.events.append((event, fields))


class BrokenJobs(JobStore):
    """Real jobs whose confirm and, with `withdraw_fails`, withdraw fail as a queue that cannot be written."""

    withdraw_fails = False

    def confirm(self, job):
        raise StateError("the job queue is not writable")

    def withdraw(self, job):
        if self.withdraw_fails:
            raise StateError("the job queue is not writable")
        return super().withdraw(job)


@pytest.fixture
def queue(tmp_path):
    return Queue.for_state_dir(tmp_path / "state")


def held(queue):
    return queue.jobs.submit_manual(app="web", tag="v2", actor="key:alice", source={}, hold=True)


def test_a_recorded_job_is_released_to_the_worker(queue):
    journal = Recorder()
    job = accept(queue.jobs, journal, held(queue), app="web", tag="v2")
    assert (job.status, queue.jobs.get(job.id).status) == ("queued", "queued")
    assert journal.events == [("job.queued", {"app": "web", "tag": "v2"})]


def test_a_job_whose_record_fails_is_withdrawn_without_a_record(queue):
    journal = Recorder(failing=True)
    job = held(queue)
    with pytest.raises(AuditError):
        accept(queue.jobs, journal, job, app="web")
    assert queue.jobs.get(job.id) is None and journal.events == []


def test_a_job_that_cannot_be_released_is_withdrawn_and_recorded_so(queue):
    journal = Recorder()
    jobs = BrokenJobs(queue.database)
    job = held(queue)
    with pytest.raises(StateError):
        accept(jobs, journal, job, app="web")
    assert queue.jobs.get(job.id) is None
    assert journal.events[-1] == (
        "job.withdrawn",
        {
            "job": job.id,
            "app": "web",
            "actor": "key:alice",
            "outcome": "failed",
            "reason": "the job could not be released to the worker: the job queue is not writable",
        },
    )


def test_a_job_that_cannot_be_withdrawn_stays_accepting_and_is_logged(queue, caplog):
    jobs = BrokenJobs(queue.database)
    jobs.withdraw_fails = True
    job = held(queue)
    with caplog.at_level(logging.ERROR, logger="deployer"), pytest.raises(AuditError):
        accept(jobs, Recorder(failing=True), job, app="web")
    assert queue.jobs.get(job.id).status == "accepting"
    assert queue.jobs.claim() is None  # never claimed, never run
    assert f"job {job.id} could not be withdrawn; it stays accepting and will not run" in caplog.text
