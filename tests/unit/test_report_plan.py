"""What the audit log's entries tell GitHub and the notification targets: exact message sequences per scenario,
mapped entry by entry as the outbox does, and the retry policy's table."""

from __future__ import annotations

import json

import pytest

from deployer.config.reports import DEFAULT_NOTIFY_EVENTS
from deployer.plan.report import (
    CreateDeployment,
    DeploymentStatus,
    GithubTarget,
    Notification,
    Verdict,
    backoff,
    found_deployment,
    github_messages,
    judge,
    notification_body,
    notify_messages,
)

TARGETS = {"web": GithubTarget("octo/web", "production", "https://web.example")}
J1, J2 = "job-1", "job-2"


def entries(*rows: tuple) -> list[dict]:
    """(event, fields) rows as audit entries, numbered from 1."""
    return [{"seq": n, "event": event, "app": "web", **fields} for n, (event, fields) in enumerate(rows, start=1)]


def github_run(rows: list[dict], state: dict | None = None) -> list[tuple]:
    state = state or {}
    sent = []
    for entry in rows:
        messages, state = github_messages(entry, TARGETS, state)
        sent += [short(m) for m in messages]
    return sent


def short(message) -> tuple:
    if isinstance(message, CreateDeployment):
        return ("create", message.key, message.ref, message.environment)
    return (message.state, message.key, message.description, message.environment_url)


RELEASE_OK = entries(
    ("job.queued", {"job": J1, "tag": "v2", "kind": "release"}),
    ("job.started", {"job": J1, "tag": "v2"}),
    ("deploy.started", {"job": J1, "tag": "v2"}),
    ("step", {"job": J1, "step": "health", "outcome": "ok"}),
    ("step", {"job": J1, "step": "flip", "outcome": "ok"}),
    ("deploy.finished", {"job": J1, "tag": "v2", "outcome": "ok"}),
    ("job.finished", {"job": J1, "tag": "v2", "outcome": "ok", "reason": "v2 is live on green"}),
)
RELEASE_FAILED = entries(
    ("job.queued", {"job": J1, "tag": "v3", "kind": "release"}),
    ("deploy.started", {"job": J1, "tag": "v3"}),
    ("deploy.failed", {"job": J1, "tag": "v3", "outcome": "failed", "error": "health check did not pass " + "x" * 200}),
    ("job.failed", {"job": J1, "outcome": "failed", "reason": "health check did not pass"}),
)
# The worker was killed after the flip: the job is run again and finds its tag live.
KILLED_AFTER_FLIP = entries(
    ("job.queued", {"job": J1, "tag": "v2", "kind": "release"}),
    ("deploy.started", {"job": J1, "tag": "v2"}),
    ("job.started", {"job": J1, "tag": "v2"}),
    ("deploy.started", {"job": J1, "tag": "v2"}),
    ("job.finished", {"job": J1, "tag": "v2", "outcome": "skipped", "reason": "tag v2 is already active"}),
)
BY_HAND = entries(
    ("deploy.started", {"tag": "v5"}),
    ("step", {"step": "flip", "outcome": "ok"}),
    ("deploy.finished", {"tag": "v5", "outcome": "ok"}),
)
# A release that starts a canary: its job ends once the canary runs, and the promote is a job of its own.
CANARY_STARTED = (
    ("job.queued", {"job": J1, "tag": "v2", "kind": "release"}),
    ("deploy.started", {"job": J1, "tag": "v2", "canary": 30}),
    ("step", {"job": J1, "step": "flip", "outcome": "ok", "canary": 30}),
    ("deploy.finished", {"job": J1, "tag": "v2", "outcome": "ok", "canary": 30}),
    ("job.finished", {"job": J1, "tag": "v2", "outcome": "ok", "reason": "v2 is live on green"}),
)
CANARY_PROMOTED = entries(
    *CANARY_STARTED,
    ("job.queued", {"job": J2, "kind": "promote"}),
    ("promote.started", {"job": J2, "tag": "v2"}),
    ("step", {"job": J2, "step": "flip", "outcome": "ok"}),
    ("promote.finished", {"job": J2, "tag": "v2", "outcome": "ok"}),
    ("job.finished", {"job": J2, "tag": "v2", "outcome": "ok", "reason": "promote: v2 serves everything"}),
)
CANARY_ABORTED = entries(
    *CANARY_STARTED,
    ("abort.finished", {"job": J2, "tag": "v2", "outcome": "ok", "reason": "errors"}),
    ("job.finished", {"job": J2, "tag": "v1", "outcome": "ok", "reason": "abort: v1 serves everything"}),
)
SUPERSEDED = entries(
    ("job.queued", {"job": J1, "tag": "v2", "kind": "release"}),
    ("job.queued", {"job": J2, "tag": "v3", "kind": "release"}),
    ("job.superseded", {"job": J1, "tag": "v2", "superseded_by": J2}),
    ("deploy.started", {"job": J2, "tag": "v3"}),
)
ROLLBACK = entries(
    ("rollback.started", {}),
    ("step", {"step": "flip", "outcome": "ok"}),
    ("rollback.finished", {"tag": "v1", "outcome": "ok"}),
)


@pytest.mark.parametrize(
    "rows, expected",
    [
        (
            RELEASE_OK,
            [
                ("create", J1, "v2", "production"),
                ("queued", J1, "v2 is queued", None),
                ("in_progress", J1, "deploying v2", None),
                ("success", J1, "v2 is live", "https://web.example"),
            ],
        ),
        (
            RELEASE_FAILED,
            [
                ("create", J1, "v3", "production"),
                ("queued", J1, "v3 is queued", None),
                ("in_progress", J1, "deploying v3", None),
                ("failure", J1, "health check did not pass " + "x" * 200, None),
            ],
        ),
        (
            KILLED_AFTER_FLIP,
            [
                ("create", J1, "v2", "production"),
                ("queued", J1, "v2 is queued", None),
                ("in_progress", J1, "deploying v2", None),
                ("success", J1, "tag v2 is already active", "https://web.example"),
            ],
        ),
        (
            BY_HAND,
            [
                ("create", "web#1", "v5", "production"),
                ("in_progress", "web#1", "deploying v5", None),
                ("success", "web#1", "v5 is live", "https://web.example"),
            ],
        ),
        (
            CANARY_PROMOTED,
            [
                ("create", J1, "v2", "production"),
                ("queued", J1, "v2 is queued", None),
                ("in_progress", J1, "canary of v2 starting at 30%", None),
                ("in_progress", J1, "canary: v2 takes 30% of the traffic", None),
                ("success", J1, "canary promoted: v2 takes all the traffic", "https://web.example"),
            ],
        ),
        (
            CANARY_ABORTED,
            [
                ("create", J1, "v2", "production"),
                ("queued", J1, "v2 is queued", None),
                ("in_progress", J1, "canary of v2 starting at 30%", None),
                ("in_progress", J1, "canary: v2 takes 30% of the traffic", None),
                ("failure", J1, "canary aborted: errors", None),
            ],
        ),
        (
            SUPERSEDED,
            [
                ("create", J1, "v2", "production"),
                ("queued", J1, "v2 is queued", None),
                ("create", J2, "v3", "production"),
                ("queued", J2, "v3 is queued", None),
                ("inactive", J1, "superseded by job-2", None),
                ("in_progress", J2, "deploying v3", None),
            ],
        ),
        (
            ROLLBACK,
            [
                ("create", "web#3", "v1", "production"),
                ("success", "web#3", "rolled back to v1", "https://web.example"),
            ],
        ),
    ],
    ids=["release", "failed", "killed-after-flip", "by-hand", "canary-promoted", "canary-aborted", "superseded", "rb"],
)
def test_a_deploy_walks_its_deployment_statuses(rows, expected):
    assert github_run(rows) == expected


def test_an_app_without_a_repository_sends_nothing():
    rows = [{**entry, "app": "other"} for entry in RELEASE_OK]
    assert github_run(rows) == []


def test_the_bodies_github_is_sent():
    messages, _ = github_messages(RELEASE_OK[0], TARGETS, {})
    assert [m.body() for m in messages] == [
        {
            "ref": "v2",
            "environment": "production",
            "auto_merge": False,
            "required_contexts": [],
            "payload": {"job": J1},
            "description": "deployer: v2",
            "transient_environment": False,
        },
        {"state": "queued", "description": "v2 is queued"},
    ]
    failure = DeploymentStatus(J1, "web", "octo/web", "failure", "y" * 300)
    assert failure.body() == {"state": "failure", "description": "y" * 140}
    success = DeploymentStatus(J1, "web", "octo/web", "success", "v2 is live", "https://web.example")
    assert success.body() == {
        "state": "success",
        "description": "v2 is live",
        "environment_url": "https://web.example",
        "auto_inactive": True,
    }


def test_mapping_an_entry_again_from_the_same_state_gives_the_same_messages():
    state: dict = {}
    for entry in RELEASE_OK[:3]:
        first, after = github_messages(entry, TARGETS, state)
        again, after_again = github_messages(entry, TARGETS, state)
        assert (first, after) == (again, after_again)
        state = after


def test_the_deployment_created_before_a_crash_is_found_by_its_job():
    answer = [
        {"id": 7, "payload": {"job": "job-0"}},
        {"id": 9, "payload": json.dumps({"job": J1})},
    ]
    assert found_deployment(answer, J1) == 9
    assert found_deployment(answer, J2) is None
    assert found_deployment({"message": "Not Found"}, J1) is None


# --- notifications ---------------------------------------------------------------------------------


def notify_run(rows: list[dict], events: tuple[str, ...]) -> list[tuple[str, str, str]]:
    state: dict = {}
    sent = []
    for entry in rows:
        messages, state = notify_messages(entry, frozenset(events), state)
        sent += [(m.id, m.event, m.text) for m in messages]
    return sent


ROLLOUT = [
    {"seq": 1, "event": "rollout.planned", "app": "web", "job": "r-1", "rollout": "r-1"},
    {"seq": 2, "event": "rollout.host", "app": "web", "job": "r-1", "host": "a", "outcome": "failed", "reason": "x"},
    {"seq": 3, "event": "rollout.stopping", "app": "web", "job": "r-1", "rollout": "r-1", "reason": "aborted by bob"},
    {"seq": 4, "event": "job.failed", "app": "web", "job": "r-1", "reason": "stopped"},
]


@pytest.mark.parametrize(
    "rows, events, expected",
    [
        (RELEASE_OK, DEFAULT_NOTIFY_EVENTS, []),
        (RELEASE_OK, ("*",), [("audit-6", "deploy.succeeded", "web: v2 is live")]),
        (
            RELEASE_FAILED,
            DEFAULT_NOTIFY_EVENTS,
            [("audit-3", "deploy.failed", "web: deploy of v3 failed: health check did not pass " + "x" * 200)],
        ),
        (
            entries(("job.failed", {"job": J1, "reason": "the image did not appear"})),
            DEFAULT_NOTIFY_EVENTS,
            [("audit-1", "deploy.failed", "web: job job-1 failed: the image did not appear")],
        ),
        (
            CANARY_ABORTED,
            ("*",),
            [
                ("audit-4", "canary.started", "web: canary of v2 started at 30%"),
                ("audit-6", "canary.aborted", "web: canary aborted, v2 serves everything (errors)"),
            ],
        ),
        (
            CANARY_PROMOTED,
            ("canary.promoted",),
            [("audit-9", "canary.promoted", "web: canary promoted, v2 takes all the traffic")],
        ),
        (ROLLBACK, DEFAULT_NOTIFY_EVENTS, [("audit-3", "rollback", "web: rolled back to v1")]),
        (
            ROLLOUT,
            DEFAULT_NOTIFY_EVENTS,
            [
                ("audit-2", "rollout.stopped", "web: rollout stopped on a: x"),
                ("audit-3", "rollout.aborted", "web: rollout r-1 stopped: aborted by bob"),
            ],
        ),
        (
            [*ROLLOUT[:1], {"seq": 2, "event": "job.finished", "app": "web", "job": "r-1", "reason": "done"}],
            ("rollout.finished",),
            [("audit-2", "rollout.finished", "web: rollout r-1: done")],
        ),
    ],
    ids=["quiet", "all", "failed-once", "job-failed", "canary", "promoted", "rollback", "rollout", "rollout-done"],
)
def test_notifications_per_event(rows, events, expected):
    assert notify_run(rows, events) == expected


def test_the_json_and_slack_bodies():
    note = Notification("audit-6", "deploy.succeeded", "web", "web: v2 is live", {"app": "web", "job": J1, "tag": "v2"})
    assert json.loads(notification_body(note, "json")) == {
        "id": "audit-6",
        "event": "deploy.succeeded",
        "text": "web: v2 is live",
        "app": "web",
        "job": J1,
        "tag": "v2",
    }
    assert json.loads(notification_body(note, "slack")) == {
        "text": "web: v2 is live",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": "*deploy.succeeded*: web: v2 is live"}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": "web · job-1 · audit-6"}]},
        ],
    }


def test_with_a_public_url_a_jobs_statuses_and_notifications_link_its_console_page():
    job = "job-0123456789abcdef"
    page = f"https://deploy.example/console/jobs/{job}"
    queued = {"seq": 1, "event": "job.queued", "app": "web", "job": job, "tag": "v2", "kind": "release"}
    messages, _ = github_messages(queued, TARGETS, {}, "https://deploy.example/")
    assert [m.body() for m in messages][1] == {"state": "queued", "description": "v2 is queued", "log_url": page}
    failed = {"seq": 2, "event": "deploy.failed", "app": "web", "job": job, "tag": "v2", "error": "no"}
    [note], _ = notify_messages(failed, frozenset({"*"}), {}, "https://deploy.example")
    assert json.loads(notification_body(note, "json"))["url"] == page
    context = json.loads(notification_body(note, "slack"))["blocks"][1]["elements"][0]["text"]
    assert context.startswith(f"web · <{page}|{job}> · ")
    # a deploy run by hand is no job: no page, no link
    by_hand = {"seq": 3, "event": "deploy.failed", "app": "web", "tag": "v2", "error": "no"}
    [note], _ = notify_messages(by_hand, frozenset({"*"}), {}, "https://deploy.example")
    assert "url" not in json.loads(notification_body(note, "json"))


# --- retries ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt, delay", [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (30, 60.0)])
def test_the_backoff_doubles_to_a_minute(attempt, delay):
    assert backoff(attempt) == delay


NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    "status, attempt, headers, expected",
    [
        (201, 1, {}, Verdict("delivered")),
        (200, 4, {}, Verdict("delivered")),
        (None, 1, {}, Verdict("retry", 1.0, "no answer")),
        (500, 3, {}, Verdict("retry", 4.0, "HTTP 500")),
        (502, 9, {}, Verdict("retry", 60.0, "HTTP 502")),
        (401, 1, {}, Verdict("retry", 1.0, "HTTP 401")),
        (408, 2, {}, Verdict("retry", 2.0, "HTTP 408")),
        (429, 1, {"retry_after": "7"}, Verdict("retry", 7.0, "HTTP 429")),
        (403, 1, {"rate_reset": str(int(NOW) + 30)}, Verdict("retry", 30.0, "HTTP 403")),
        (403, 5, {}, Verdict("retry", 16.0, "HTTP 403")),
        (429, 1, {"retry_after": "Fri, 15 Jan 2027 08:00:10 GMT"}, Verdict("retry", 10.0, "HTTP 429")),
        (429, 1, {"retry_after": "86400"}, Verdict("retry", 3600.0, "HTTP 429")),
        (429, 1, {"retry_after": "0"}, Verdict("retry", 1.0, "HTTP 429")),
        (404, 1, {}, Verdict("refused", reason="HTTP 404")),
        (422, 1, {}, Verdict("refused", reason="HTTP 422")),
    ],
)
def test_which_answers_are_tried_again_and_when(status, attempt, headers, expected):
    assert judge(status, attempt=attempt, now=NOW, **headers) == expected
