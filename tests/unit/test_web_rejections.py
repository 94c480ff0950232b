"""Requests refused before they authenticate cost bounded space: aggregated rows and a per-source 429.

The receiver is the real app factory with a real audit log in tmp (as gunicorn builds it), so the
rows counted are the rows on disk.
"""

from __future__ import annotations

import json

from deployer.audit import AuditLog, Query, build_journal
from deployer.receiver.rejections import Rejections
from deployer.receiver.web import create_app
from support.receiver import GITHUB_SECRET, Clock, deliver, published, signed_call


def audited_app(settings, queue, clock):
    journal = build_journal(settings)
    return create_app(
        {"DEPLOYER_CONFIG": settings, "QUEUE": queue, "JOURNAL": journal, "CLOCK": clock, "TESTING": True}
    )


def rows(settings) -> list:
    log = AuditLog.for_state_dir(settings.settings.state_dir)
    try:
        return log.query(Query(limit=None))
    finally:
        log.close()


def test_5000_unsigned_requests_add_a_few_rows_and_a_signed_delivery_among_them_is_served(settings, queue, clock):
    client = audited_app(settings, queue, clock).test_client()
    body = published(tag_name="v9.9.9", id=99)
    answers = {}
    for n in range(5000):
        if n == 2500:
            good = deliver(client, body, delivery="good-delivery-2500")
            continue
        kind = n % 4
        if kind == 0:
            response = deliver(client, body, secret=None, delivery=f"d-{n}")  # no signature at all
        elif kind == 1:
            response = deliver(client, body, secret="guessed", delivery=f"d-{n}")
        elif kind == 2:
            response = client.post("/deploy", data=b"{}", headers={"Content-Type": "application/json"})
        else:
            response = client.get("/audit", headers={"Authorization": "Bearer guessed"})
        answers[response.status_code] = answers.get(response.status_code, 0) + 1
        if n == 2000:
            clock.now += 61  # one interval ends in the middle of the flood
    clock.now += 61
    client.get("/healthz")  # any request writes the interval that ended
    assert good.status_code == 202, good.get_json()
    assert set(answers) == {401, 429} and answers[429] > 4000
    written = rows(settings)  # the log was empty before
    aggregated = [r for r in written if r.get("event") == "rejected_requests"]
    assert len(written) <= 20, [r.get("event") for r in written]
    assert sum(r.get("count") for r in aggregated) == 4999
    [delivery] = [r for r in written if r.get("event") == "delivery"]
    assert (delivery.get("delivery"), delivery.get("verdict"), delivery.get("status")) == (
        "good-delivery-2500",
        "queued",
        202,
    )
    assert len(queue.jobs.jobs()) == 1
    assert GITHUB_SECRET not in json.dumps([r.fields for r in written])


def test_a_throttled_source_is_told_when_to_come_back(settings, queue, clock):
    client = audited_app(settings, queue, clock).test_client()
    answers = [client.post("/deploy", data=b"{}", headers={"Content-Type": "application/json"}) for _ in range(31)]
    assert [a.status_code for a in answers[:30]] == [401] * 30
    assert answers[30].status_code == 429
    assert answers[30].headers["Retry-After"] == "2"  # one refusal back every 2 s
    assert answers[30].get_json() == {"error": "too many refused requests from this address; retry after 2 s"}
    clock.now += 2
    assert client.post("/deploy", data=b"{}", headers={"Content-Type": "application/json"}).status_code == 401


def test_a_throttled_source_still_gets_its_health_answer(settings, queue, clock):
    client = audited_app(settings, queue, clock).test_client()
    for _ in range(40):
        client.post("/deploy", data=b"{}", headers={"Content-Type": "application/json"})
    assert client.post("/deploy", data=b"{}", headers={"Content-Type": "application/json"}).status_code == 429
    assert client.get("/healthz").get_json() == {"status": "degraded"}  # no worker here; but not a 429


def test_a_signed_request_from_a_throttled_source_is_still_served(settings, queue, clock):
    client = audited_app(settings, queue, clock).test_client()
    for _ in range(40):
        client.post("/deploy", data=b"{}", headers={"Content-Type": "application/json"})
    response = signed_call(client, "POST", "/deploy", json.dumps({"app": "web", "tag": "v2"}).encode())
    assert response.status_code == 202
    [queued] = [r for r in rows(settings) if r.get("event") == "manual_request"]
    assert queued.get("verdict") == "queued"


def test_a_refusal_after_authentication_is_still_recorded_one_by_one(settings, queue, clock):
    client = audited_app(settings, queue, clock).test_client()
    for n in range(3):
        assert deliver(client, published(tag_name="$(id)"), delivery=f"bad-tag-{n}").status_code == 422
    refused = [r for r in rows(settings) if r.get("event") == "delivery"]
    assert [r.get("verdict") for r in refused] == ["rejected"] * 3


def test_the_tally_folds_every_key_past_its_bound_into_one_overflow_row():
    written: list[dict] = []
    clock = Clock()
    rejections = Rejections(
        lambda event, **fields: written.append({"event": event, **fields}), clock, max_keys=4, max_sources=8
    )
    for n in range(1000):
        rejections.note(route="/deploy", status=401, source=f"198.18.{n // 256}.{n % 256}", reason="no signature")
    rejections.flush()
    assert len(written) == 5
    assert sum(row["count"] for row in written) == 1000
    overflow = [row for row in written if row["source"] == "*"]
    assert overflow and overflow[0]["count"] == 996 and "status" not in overflow[0]
    assert len(rejections.buckets) == 8  # the least recently seen sources are forgotten first


def test_a_source_meets_at_most_workers_times_the_burst_before_429_and_then_workers_times_the_rate():
    """Each gunicorn worker process keeps its own buckets: the documented bound (docs/server.md, Rate limit) for a
    receiver of two workers is 2 x 30 refusals in a burst, then 2 x 0.5 a second."""
    clock = Clock()
    workers = [Rejections(lambda event, **fields: None, clock) for _ in range(2)]
    answered_401 = 0
    for n in range(200):
        worker = workers[n % 2]  # the kernel spreads connections over the workers
        if worker.note(route="/deploy", status=401, source="198.18.0.9", reason="no signature") is None:
            answered_401 += 1
    assert answered_401 == 2 * 30
    clock.now += 10.0  # 10 s at 0.5 a second, in each worker
    answered_401 = sum(
        worker.note(route="/deploy", status=401, source="198.18.0.9", reason="no signature") is None
        for worker in workers
        for _ in range(20)
    )
    assert answered_401 == 2 * 5


def test_an_interval_is_written_once_it_is_over_and_not_before():
    written: list[dict] = []
    clock = Clock()
    rejections = Rejections(lambda event, **fields: written.append(fields), clock, interval=60)
    rejections.note(route="/hooks/github", status=401, source="198.18.0.9", reason="missing X-Hub-Signature-256 header")
    clock.now += 59
    rejections.flush_due()
    assert written == []
    clock.now += 1
    rejections.flush_due()
    assert [(row["route"], row["status"], row["count"]) for row in written] == [("/hooks/github", 401, 1)]
    rejections.flush_due()
    assert len(written) == 1
