"""The newest deployable release wins: a release older than a live or succeeded one never deploys by webhook, one
older than a release in flight waits behind it and runs only if that one fails; an operator's rollback still does.

"Older" is GitHub's `published_at`. The receiver is the real app factory and the queue a real SQLite file.
"""

from __future__ import annotations

import json

import pytest

from deployer.journal import Journal
from deployer.worker.loop import Worker
from support.receiver import deliver, published, signed_call

T1, T2, T3 = "2026-11-01T10:00:00Z", "2026-11-02T10:00:00Z", "2026-11-03T10:00:00Z"


def release(client, tag: str, published_at: str, release_id: int, delivery: str | None = None):
    return deliver(
        client,
        published(tag_name=tag, id=release_id, published_at=published_at),
        delivery=delivery or f"delivery-{tag.replace('.', '-')}-{release_id}",
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


def fail(queue, tag_expected: str):
    """The worker's side: claim the next job and fail it (its image was never pushed)."""
    claim = queue.jobs.claim()
    assert claim is not None and claim.job.tag == tag_expected
    queue.jobs.finish(claim.job, "failed", "pull failed: manifest unknown")
    return claim


def test_releases_arriving_out_of_order_deploy_the_newest_only(client, queue):
    assert release(client, "v3", T3, 3).status_code == 202
    answer = release(client, "v2", T2, 2)
    assert (answer.status_code, answer.get_json()["status"]) == (202, "queued")
    assert answer.get_json()["reason"] == (
        f"release v2 (published {T2}) waits behind release v3 (published {T3}), which is queued; "
        f"it runs only if that one fails"
    )
    assert release(client, "v4", "2026-11-04T10:00:00Z", 4).status_code == 202
    assert run(queue).job.tag == "v4"
    stale = queue.jobs.claim()  # v4 is live: the older ones waiting behind it never run
    assert stale.job is None
    assert sorted(job.tag for job in stale.superseded) == ["v2", "v3"]
    assert {job.superseded_by for job in stale.superseded} == {queue.live.live("web")["job"]}
    assert queue.jobs.claim() is None


A1, A2, A3, A9 = "2026-02-01T10:00:00Z", "2026-02-02T10:00:00Z", "2026-02-03T10:00:00Z", "2026-03-01T10:00:00Z"


def audit(events, tag: str) -> list[tuple[str, str | None, str | None]]:
    return [
        (e["event"], e.get("verdict"), e.get("reason"))
        for e in events
        if e.get("tag") == tag and e["event"] in ("delivery", "job.queued")
    ]


@pytest.mark.parametrize("late_while", ["0.0.3 waits", "0.0.3 runs", "0.0.3 is live"])
def test_a_newer_release_that_fails_does_not_take_an_older_good_one_down(client, queue, events, late_while):
    """9.9.9 (its image never pushed) runs; 0.0.3 arrives meanwhile; 9.9.9 fails; a late 0.0.2 never deploys."""
    release(client, "0.0.1", A1, 1)
    run(queue, "0.0.1")
    assert release(client, "9.9.9", A9, 9).status_code == 202
    broken = queue.jobs.claim().job
    assert broken.tag == "9.9.9"
    good = release(client, "0.0.3", A3, 3)
    assert (good.status_code, good.get_json()["reason"]) == (
        202,
        f"release 0.0.3 (published {A3}) waits behind release 9.9.9 (published {A9}), which is running; "
        f"it runs only if that one fails",
    )
    assert queue.jobs.get(good.get_json()["job"]).reason == good.get_json()["reason"]  # GET /jobs/<id> says why
    assert audit(events, "0.0.3") == [
        ("job.queued", None, good.get_json()["reason"]),
        ("delivery", "waiting", good.get_json()["reason"]),
    ]
    if late_while == "0.0.3 waits":
        late = release(client, "0.0.2", A2, 2)
        assert late.status_code == 202 and "waits behind release 9.9.9" in late.get_json()["reason"]
    assert queue.jobs.finish(broken, "failed", "pull failed: manifest unknown")

    claim = queue.jobs.claim()  # the newest release still waiting runs, not the one queued last
    assert (claim.job.tag, claim.superseded) == ("0.0.3", [])
    if late_while == "0.0.3 runs":
        late = release(client, "0.0.2", A2, 2)
        assert late.status_code == 202 and "waits behind release 0.0.3" in late.get_json()["reason"]
    queue.jobs.finish(claim.job, "succeeded")
    queue.live.set_active("web", "0.0.3", claim.job.id)
    if late_while == "0.0.3 is live":
        late = release(client, "0.0.2", A2, 2)
        assert (late.status_code, late.get_json()["status"]) == (200, "older")
        assert late.get_json()["reason"] == (
            f"release 0.0.2 (published {A2}) is older than release 0.0.3 (published {A3}), which is live; "
            f"deploy it on purpose with POST /deploy"
        )
        assert queue.jobs.claim() is None
        assert audit(events, "0.0.2") == [("delivery", "older", late.get_json()["reason"])]
    else:
        stale = queue.jobs.claim()
        assert stale.job is None
        [superseded] = stale.superseded
        assert (superseded.tag, superseded.status, superseded.superseded_by) == ("0.0.2", "superseded", claim.job.id)
        assert (
            superseded.reason
            == f"release 0.0.2 (published {A2}) is older than release 0.0.3 (published {A3}), which is live"
        )
        assert queue.jobs.claim() is None
    assert [job.tag for job in queue.jobs.jobs(status="succeeded")] == ["0.0.1", "0.0.3"]
    assert queue.live.active_tag("web") == "0.0.3"


def test_the_worker_records_why_a_stale_release_is_superseded(settings, client, queue, events):
    release(client, "0.0.3", A3, 3)
    release(client, "0.0.2", A2, 2)
    run(queue, "0.0.3")
    launched = []
    worker = Worker(settings, queue, Journal([events.append]), launch=launched.append, reconcile=lambda app: [])
    assert worker.poll()
    assert launched == []
    [entry] = [e for e in events if e["event"] == "job.superseded"]
    live_job = queue.live.live("web")["job"]
    assert (entry["tag"], entry["superseded_by"]) == ("0.0.2", live_job)
    assert (
        entry["reason"] == f"release 0.0.2 (published {A2}) is older than release 0.0.3 (published {A3}), which is live"
    )


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
