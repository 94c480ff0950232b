"""A release whose job failed is tried again when GitHub delivers it again (a redelivery of the same delivery, or a
new delivery of the same tag); a queued, running or succeeded one keeps its first answer. Through the queue and
through the receiver's test client."""

from __future__ import annotations

import pytest

from deployer.plan.release_order import retried, retry_reason
from deployer.queue.queue import Queue
from support.receiver import deliver, published, read_payload


@pytest.mark.parametrize(
    "status, live, expected",
    [
        ("failed", False, True),
        ("failed", True, False),  # live by now (a redeploy by hand): nothing to retry
        ("queued", False, False),
        ("running", False, False),
        ("succeeded", False, False),
        ("succeeded", True, False),
        ("superseded", False, False),
        ("skipped", False, False),
        (None, False, False),
    ],
)
def test_which_release_is_tried_again(status, live, expected):
    assert retried(status, live) is expected


def test_the_answer_to_a_retry_names_the_failed_job():
    assert retry_reason("v2", "job-1", "queued") == "release v2 failed in job-1; queued again as a retry"
    assert retry_reason("v2", "job-1", "waits behind v3") == (
        "release v2 failed in job-1; queued again as a retry: waits behind v3"
    )


# --- the queue -------------------------------------------------------------------------------------


class Clock:
    now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def jobs(tmp_path):
    return Queue.for_state_dir(tmp_path / "state", clock=Clock())


def release(queue, tag="v1", delivery="d-1", published_at=None):
    return queue.jobs.submit_release(
        app="web",
        tag=tag,
        actor="github:octo",
        hook_id="42",
        delivery=delivery,
        source={"delivery": delivery},
        published_at=published_at,
    )


def fail(queue, job):
    queue.jobs.claim()
    queue.jobs.finish(queue.jobs.get(job.id), "failed", "the image web:v1 did not appear in 3s")


def test_a_redelivery_of_a_failed_release_queues_a_retry(jobs):
    first = release(jobs).job
    fail(jobs, first)
    again = release(jobs)
    assert (again.created, again.verdict, again.job.status) == (True, "queued", "queued")
    assert again.job.source == {"delivery": "d-1", "retry_of": first.id}
    assert again.reason == f"release v1 failed in {first.id}; queued again as a retry"
    assert jobs.deliveries.delivery("42", "d-1") == {
        "job_id": again.job.id,
        "verdict": "queued",
        "reason": again.reason,
    }
    third = release(jobs)  # the retry is queued: the delivery's answer is the retry's now
    assert (third.created, third.job.id) == (False, again.job.id)


def test_a_new_delivery_of_a_failed_release_queues_a_retry_too(jobs):
    first = release(jobs, delivery="d-published").job
    fail(jobs, first)
    again = release(jobs, delivery="d-released")
    assert (again.created, again.job.source["retry_of"]) == (True, first.id)


def test_a_retry_that_fails_again_is_retried_again_from_the_latest(jobs):
    first = release(jobs).job
    fail(jobs, first)
    second = release(jobs).job
    fail(jobs, second)
    assert release(jobs).job.source["retry_of"] == second.id


@pytest.mark.parametrize("finished", [None, "running", "succeeded"])
def test_a_redelivery_of_a_queued_running_or_succeeded_release_gets_the_first_answer(jobs, finished):
    first = release(jobs).job
    if finished:
        jobs.jobs.claim()
    if finished == "succeeded":
        jobs.jobs.finish(jobs.jobs.get(first.id), "succeeded", "v1 is live")
    again = release(jobs)
    assert (again.created, again.job.id, again.reason) == (
        False,
        first.id,
        "delivery d-1 was already received (queued)",
    )


def test_a_failed_release_that_is_live_now_is_not_retried(jobs):
    first = release(jobs).job
    fail(jobs, first)
    jobs.live.set_active("web", "v1", None)  # redeployed by hand meanwhile
    assert (release(jobs).created, release(jobs, delivery="d-2").reason) == (False, "tag v1 is already active")


def test_a_retry_follows_the_release_order(jobs):
    old = release(jobs, tag="v1", delivery="d-1", published_at="2026-12-01T10:00:00Z").job
    fail(jobs, old)
    newer = release(jobs, tag="v2", delivery="d-2", published_at="2026-12-01T11:00:00Z").job
    jobs.jobs.claim()
    jobs.jobs.finish(jobs.jobs.get(newer.id), "succeeded", "v2 is live")
    again = release(jobs, tag="v1", delivery="d-1", published_at="2026-12-01T10:00:00Z")
    assert (again.created, again.verdict, again.job.id) == (False, "older", newer.id)


# --- the receiver --------------------------------------------------------------------------------------


def test_githubs_redelivery_of_a_failed_release_is_accepted_as_a_retry_and_audited(client, queue, events):
    first = deliver(client, read_payload("release-published.payload.json")).get_json()["job"]
    queue.jobs.claim()
    queue.jobs.finish(queue.jobs.get(first), "failed", "the image did not appear")
    again = deliver(client, read_payload("release-published.payload.json"))
    body = again.get_json()
    assert (again.status_code, body["status"]) == (202, "queued")
    assert body["reason"] == f"release 0.0.1 failed in {first}; queued again as a retry"
    assert queue.jobs.get(body["job"]).source["retry_of"] == first
    queued = [e for e in events if e["event"] == "job.queued"]
    assert [(e["job"], e.get("retry_of")) for e in queued] == [(first, None), (body["job"], first)]


def test_githubs_redelivery_of_a_queued_release_keeps_the_first_answer(client, queue):
    first = deliver(client, published()).get_json()["job"]
    again = deliver(client, published())
    assert (again.status_code, again.get_json()["job"], again.get_json()["status"]) == (200, first, "duplicate")
