"""A release older than the live or queued one never deploys by webhook; an operator's rollback still does.

"Older" is GitHub's `published_at`. The receiver is the real app factory and the queue a real SQLite file.
"""

from __future__ import annotations

import json

import pytest

from support.receiver import deliver, published, signed_call

T1, T2, T3 = "2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z", "2026-11-03T10:00:00Z"


def release(client, tag: str, published_at: str, release_id: int, delivery: str | None = None):
    return deliver(
        client,
        published(tag_name=tag, id=release_id, published_at=published_at),
        delivery=delivery or f"delivery-{tag}-{release_id}",
    )


def run(queue, tag_expected: str | None = None):
    """The worker's side: claim the next job and finish it, making its tag live."""
    claim = queue.jobs.claim()
    assert claim is not None
    queue.jobs.finish(claim.job, "succeeded")
    queue.live.set_active(claim.job.app, claim.job.tag or queue.live.active_tag(claim.job.app), claim.job.id)
    if tag_expected is not None:
        assert claim.job.tag == tag_expected
    return claim


def test_a_late_delivery_of_an_older_release_is_answered_200_and_recorded_not_deployed(client, queue, events):
    assert release(client, "v3", T3, 3).status_code == 202
    run(queue, "v3")
    late = release(client, "v2", T2, 2)  # never got a job: GitHub timed out, then "Redeliver"
    assert late.status_code == 200
    body = late.get_json()
    assert body["status"] == "older"
    assert body["reason"] == (
        f"release v2 (published {T2}) is older than release v3 (published {T3}), which is "
        f"live; deploy it on purpose with POST /deploy"
    )
    assert [job.tag for job in queue.jobs.jobs()] == ["v3"]
    [record] = [e for e in events if e["event"] == "delivery" and e.get("tag") == "v2"]
    assert (record["verdict"], record["status"], record["reason"]) == ("older", 200, body["reason"])
    again = release(client, "v2", T2, 2)  # the same delivery once more gets the same answer
    assert again.status_code == 200 and "already received" in again.get_json()["reason"]


def test_releases_arriving_out_of_order_deploy_the_newest_only(client, queue):
    assert release(client, "v3", T3, 3).status_code == 202
    answer = release(client, "v2", T2, 2)
    assert (answer.status_code, answer.get_json()["status"]) == (200, "older")
    assert "which is queued" in answer.get_json()["reason"]
    assert release(client, "v4", "2026-11-04T10:00:00Z", 4).status_code == 202
    assert run(queue).job.tag == "v4"


def test_a_tagless_redeploy_queued_behind_a_release_does_not_cancel_it(client, queue):
    release(client, "v1", T1, 1)
    run(queue, "v1")
    assert release(client, "v2", T2, 2).status_code == 202
    assert signed_call(client, "POST", "/deploy", json.dumps({"app": "web"}).encode()).status_code == 202
    claim = run(queue)
    assert claim.job.tag == "v2"
    [redeploy] = claim.superseded
    assert redeploy.kind == "redeploy" and redeploy.tag is None
    assert "a newer release than the live one this would redeploy" in redeploy.reason
    # GitHub's redelivery of v2 is a duplicate of a job that ran, not "superseded"
    redelivered = release(client, "v2", T2, 2, delivery="redelivery-of-v2")
    assert "was already deployed" in redelivered.get_json()["reason"]


def test_a_redeploy_of_the_live_tag_never_cancels_a_newer_release(client, queue):
    release(client, "v1", T1, 1)
    run(queue, "v1")
    release(client, "v2", T2, 2)
    assert signed_call(client, "POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode()).status_code == 202
    assert run(queue).job.tag == "v2"


@pytest.mark.parametrize("release_waiting", [False, True])
def test_an_operator_can_still_roll_back_to_an_older_tag(client, queue, release_waiting):
    release(client, "v1", T1, 1)
    run(queue, "v1")
    release(client, "v3", T3, 3)
    run(queue, "v3")
    if release_waiting:
        release(client, "v4", "2026-11-04T10:00:00Z", 4)
    rollback = signed_call(
        client, "POST", "/deploy", json.dumps({"app": "web", "tag": "v1", "reason": "v3 is bad"}).encode()
    )
    assert rollback.status_code == 202
    assert run(queue).job.tag == "v1"  # a deliberate rollback to another tag is the last word


def test_a_release_without_a_usable_published_at_is_refused(client, queue):
    response = deliver(client, published(tag_name="v5", id=5, published_at="yesterday"))
    assert (response.status_code, response.get_json()) == (
        422,
        {"error": "field release.published_at must be a UTC time like 2019-05-15T15:20:53Z"},
    )
    assert queue.jobs.jobs() == []
