"""The outbox's order of effects over hand-written fakes: the audit log, the cursors and the HTTP answers.

Statuses go out in order, the cursor moves after each message, a failure waits (nothing after it goes first),
a refused message is recorded and skipped, a creation marked before a crash is looked up, not repeated; and the
token is never in an audit entry, a log line or a problem.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace

from deployer.config.model import GithubReport, NotifyTarget
from deployer.journal import Journal, log_sink
from deployer.plan.report import HttpAnswer
from deployer.queue.reports import Cursor
from deployer.report.outbox import GithubFeed, NotifyFeed, Outbox
from deployer.signatures import github_signature

TOKEN = "ghs_SECRETtoken123"
API = "http://github.test"
APPS = {"web": GithubReport("octo/web", "production", None, TOKEN)}
RELEASE = [
    {"seq": 11, "event": "job.queued", "app": "web", "job": "j-1", "tag": "v2", "kind": "release"},
    {"seq": 12, "event": "deploy.started", "app": "web", "job": "j-1", "tag": "v2"},
    {"seq": 13, "event": "deploy.finished", "app": "web", "job": "j-1", "tag": "v2", "outcome": "ok"},
]


class FakeAudit:
    def __init__(self, entries):
        self.entries = entries

    def after(self, seq, limit):
        return [e for e in self.entries if e["seq"] > seq][:limit]

    def head(self):
        return max((e["seq"] for e in self.entries), default=0)


class FakeCursors:
    def __init__(self):
        self.saved: dict[str, Cursor] = {}

    def begin(self, feed, head):
        self.saved.setdefault(feed, Cursor(feed, head))
        return self.saved[feed]

    def cursor(self, feed):
        return self.saved[feed]

    def save(self, cursor):
        json.dumps(cursor.state)  # what the store writes must be plain JSON
        self.saved[cursor.feed] = cursor


class FakeHttp:
    """Answers from a list, in order (then 201 with the next id); records every request."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.calls = []
        self.next_id = 100

    def __call__(self, method, url, headers, body):
        self.calls.append((method, url.removeprefix(API), dict(headers), json.loads(body) if body else None))
        if self.answers:
            return self.answers.pop(0)
        self.next_id += 1
        return HttpAnswer(201, {"id": self.next_id})


class Clock:
    now = 1_000.0

    def __call__(self):
        return self.now


def outbox(feed, entries, records):
    cursors = FakeCursors()
    box = Outbox(
        [feed], cursors, FakeAudit(entries), Journal([records.append, log_sink], secrets=[TOKEN]), clock=Clock()
    )
    cursors.begin(feed.name, 10)
    return box, cursors


def calls(http):
    return [(m, path, body) for m, path, _, body in http.calls]


def test_a_release_goes_out_in_order_and_the_cursor_follows():
    http, records = FakeHttp(), []
    box, cursors = outbox(GithubFeed(APPS, API, http), RELEASE, records)
    assert box.drain(box.feeds[0]) is None
    assert calls(http) == [
        (
            "POST",
            "/repos/octo/web/deployments",
            {
                "ref": "v2",
                "environment": "production",
                "auto_merge": False,
                "required_contexts": [],
                "payload": {"job": "j-1"},
                "description": "deployer: v2",
                "transient_environment": False,
            },
        ),
        ("POST", "/repos/octo/web/deployments/101/statuses", {"state": "queued", "description": "v2 is queued"}),
        ("POST", "/repos/octo/web/deployments/101/statuses", {"state": "in_progress", "description": "deploying v2"}),
        (
            "POST",
            "/repos/octo/web/deployments/101/statuses",
            {"state": "success", "description": "v2 is live", "auto_inactive": True},
        ),
    ]
    assert {h["Authorization"] for _, _, h, _ in http.calls} == {f"Bearer {TOKEN}"}
    assert (cursors.saved["github"].seq, cursors.saved["github"].done) == (13, 0)
    assert records == []


def test_a_failure_waits_and_nothing_after_it_goes_first(caplog):
    caplog.set_level(logging.INFO)
    http, records = FakeHttp([HttpAnswer(201, {"id": 7}), HttpAnswer(500, problem="HTTP 500 from github.test")]), []
    box, cursors = outbox(GithubFeed(APPS, API, http), RELEASE, records)
    assert box.drain(box.feeds[0]) == 1.0
    assert len(http.calls) == 2
    cursor = cursors.saved["github"]
    assert (cursor.seq, cursor.done, cursor.attempts, cursor.retry_at) == (10, 1, 1, 1_001.0)
    assert box.step(box.feeds[0]) == 1.0  # not due yet: nothing sent
    assert len(http.calls) == 2
    box.clock.now = 1_001.0
    http.answers = [HttpAnswer(None, problem="no answer from github.test: ReadTimeout")]
    assert box.step(box.feeds[0]) == 2.0  # the backoff doubles
    box.clock.now = 1_003.0
    assert box.drain(box.feeds[0]) is None
    assert [body["state"] for _, _, body in calls(http)[1:]] == ["queued", "queued", "queued", "in_progress", "success"]
    assert TOKEN not in caplog.text


def test_a_refused_message_is_recorded_and_skipped_without_the_token():
    http = FakeHttp([HttpAnswer(422, problem="HTTP 422 from github.test")])
    records: list = []
    box, cursors = outbox(GithubFeed(APPS, API, http), RELEASE, records)
    box.drain(box.feeds[0])
    dropped = [r for r in records if r["event"] == "report.dropped"]
    assert [(r["feed"], r["entry"], r["message"], r["reason"]) for r in dropped] == [
        ("github", 11, "CreateDeployment", "HTTP 422 from github.test"),
        ("github", 11, "DeploymentStatus", "its deployment was not created"),
        ("github", 12, "DeploymentStatus", "its deployment was not created"),
        ("github", 13, "DeploymentStatus", "its deployment was not created"),
    ]
    assert TOKEN not in json.dumps(records)
    assert cursors.saved["github"].seq == 13
    assert cursors.saved["github"].state["memo"]["creating"] == []  # refused: not created, nothing to look up


def test_a_creation_refused_with_4xx_is_posted_again_not_looked_up():
    """A 4xx (here a rate limit) means GitHub created nothing: the next try creates, it need not look first; a
    5xx or no answer may hide a creation, so the next try looks first."""
    http, records = FakeHttp([HttpAnswer(429, retry_after="1"), HttpAnswer(502)]), []
    box, cursors = outbox(GithubFeed(APPS, API, http), RELEASE[:1], records)
    clock = box.clock
    assert box.step(box.feeds[0]) == 1.0
    clock.now += 1
    assert box.step(box.feeds[0]) == 2.0
    clock.now += 2
    http.answers = [HttpAnswer(200, [])]
    box.drain(box.feeds[0])
    assert [(m, path) for m, path, _ in calls(http)] == [
        ("POST", "/repos/octo/web/deployments"),
        ("POST", "/repos/octo/web/deployments"),
        ("GET", "/repos/octo/web/deployments?ref=v2&environment=production&per_page=100"),
        ("POST", "/repos/octo/web/deployments"),
        ("POST", "/repos/octo/web/deployments/101/statuses"),
    ]


def test_a_creation_marked_before_a_crash_is_looked_up_not_repeated():
    http, records = FakeHttp(), []
    box, cursors = outbox(GithubFeed(APPS, API, http), RELEASE[:1], records)
    # the worker died after POSTing the deployment and before its id was written
    cursors.saved["github"] = replace(cursors.saved["github"], state={"memo": {"creating": ["j-1"]}})
    http.answers = [HttpAnswer(200, [{"id": 55, "payload": {"job": "j-0"}}, {"id": 56, "payload": {"job": "j-1"}}])]
    box.drain(box.feeds[0])
    assert calls(http) == [
        ("GET", "/repos/octo/web/deployments?ref=v2&environment=production&per_page=100", None),
        ("POST", "/repos/octo/web/deployments/56/statuses", {"state": "queued", "description": "v2 is queued"}),
    ]


def test_a_notification_is_signed_and_carries_its_stable_id():
    http, records = FakeHttp([HttpAnswer(503), HttpAnswer(204)]), []
    target = NotifyTarget("ops", f"{API}/hook", "json", frozenset({"*"}), "hook-secret")
    failed = [{"seq": 21, "event": "deploy.failed", "app": "web", "job": "j-2", "tag": "v3", "error": "unhealthy"}]
    box, _ = outbox(NotifyFeed(target, http), failed, records)
    assert box.drain(box.feeds[0]) == 1.0
    box.clock.now += 1
    assert box.drain(box.feeds[0]) is None
    (_, _, first_headers, first), (_, _, headers, body) = http.calls
    assert first == body and first_headers == headers
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert headers["X-Deployer-Delivery"] == "audit-21"
    assert headers["X-Deployer-Signature"] == github_signature("hook-secret", raw)
    assert body["text"] == "web: deploy of v3 failed: unhealthy"
