"""GET /audit through Flask's test client: a fresh app per test, a real audit log in tmp, real signatures.

The app is built as gunicorn builds it (queue, journal and audit log from the state folder), so
a refused read lands in the same audit log the route answers from.
"""

from __future__ import annotations

from urllib.parse import urlencode

import pytest

from deployer import signatures
from deployer.audit import AuditLog, Query
from deployer.queue.queue import Queue
from deployer.receiver.web import create_app
from support.configs import app_toml, make_config
from support.receiver import ALICE_KEY, ALICE_SECRET, NAMES, NOW, Clock

AUDIT_TOKEN = "audit-read-token-3c9e51f0a7d2"

SEEDED = [
    {"ts": "2025-12-30T10:00:00.000Z", "event": "deploy.started", "app": "web", "actor": "cli:ann", "tag": "v1"},
    {
        "ts": "2025-12-31T12:00:00.000Z",
        "event": "deploy.finished",
        "app": "web",
        "actor": "cli:ann",
        "tag": "v1",
        "outcome": "ok",
    },
    {
        "ts": "2025-12-31T20:00:00.000Z",
        "event": "deploy.failed",
        "app": "api",
        "actor": "github:octocat",
        "tag": "v7",
        "outcome": "failed",
    },
    {
        "ts": "2025-12-31T23:30:00.000Z",
        "event": "delivery",
        "app": "web",
        "actor": "github:octocat",
        "verdict": "rejected",
        "reason": "tag does not match",
    },
]


def load_config(tmp_path, *, token: bool = True):
    server = NAMES + ('audit_token_env = "AUDIT_TOKEN"\n' if token else "") + ALICE_KEY
    return make_config(
        tmp_path,
        app_toml("web", 8000),
        server=server,
        environ={"ALICE_SECRET": ALICE_SECRET, "AUDIT_TOKEN": AUDIT_TOKEN},
    )


@pytest.fixture
def log(tmp_path) -> AuditLog:
    log = AuditLog.for_state_dir(tmp_path / "state")
    log.append_many(SEEDED)
    return log


@pytest.fixture
def client(tmp_path, log):
    app = create_app({"DEPLOYER_CONFIG": load_config(tmp_path), "CLOCK": Clock(), "TESTING": True})
    return app.test_client()


def with_token(client, target: str, token: str = AUDIT_TOKEN, method: str = "GET"):
    return client.open(target, method=method, headers={"Authorization": f"Bearer {token}"})


def signed(client, target: str, *, signed_target: str | None = None, method: str = "GET"):
    """A request signed as docs/server.md says; `signed_target` signs another path or query than the one sent."""
    signed.counter += 1
    headers = signatures.sign_request(
        ALICE_SECRET,
        method=method,
        host="localhost",
        path=signed_target or target,
        key_id="alice",
        timestamp=NOW,
        nonce=f"audit-nonce-{signed.counter:08d}",
        body=b"",
    )
    return client.open(target, method=method, headers=headers)


signed.counter = 0


def seqs(response) -> list[int]:
    return [entry["seq"] for entry in response.get_json()["entries"]]


def audit(**filters: str) -> str:
    return "/audit?" + urlencode(filters) if filters else "/audit"


# --- authentication ------------------------------------------------------------------------------------


def test_without_a_signature_or_a_token_it_is_401(client):
    response = client.get("/audit")
    assert response.status_code == 401
    assert response.get_json() == {"error": "missing X-Deployer-Key header"}
    assert client.get(audit(limit="0")).status_code == 401  # refused before its filters are read


def test_a_wrong_or_malformed_token_is_401_and_never_echoed(client):
    for header in (
        f"Bearer {AUDIT_TOKEN}x",
        f"Bearer {AUDIT_TOKEN[:-1]}",
        "Bearer",
        AUDIT_TOKEN,
        f"Basic {AUDIT_TOKEN}",
    ):
        response = client.get("/audit", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert AUDIT_TOKEN not in response.get_data(as_text=True)
    assert with_token(client, "/audit", AUDIT_TOKEN + "x").get_json() == {"error": "the bearer token does not match"}


def test_a_token_is_refused_when_none_is_configured(tmp_path, log):
    app = create_app({"DEPLOYER_CONFIG": load_config(tmp_path, token=False), "CLOCK": Clock(), "TESTING": True})
    response = with_token(app.test_client(), "/audit")
    assert response.status_code == 401
    assert response.get_json() == {
        "error": "no audit token is configured ([server] audit_token_file or audit_token_env)"
    }


def test_the_token_reads_the_whole_log_newest_first(client):
    response = with_token(client, "/audit")
    assert response.status_code == 200
    body = response.get_json()
    assert body["query"] == {
        "app": None,
        "since": None,
        "until": None,
        "event": [],
        "outcome": None,
        "actor": None,
        "job": None,
        "limit": 100,
        "after": None,
    }
    assert body["count"] == 4 and seqs(response) == [4, 3, 2, 1]
    first = body["entries"][0]
    assert {k: first[k] for k in ("seq", "event", "app", "actor", "verdict", "ts")} == {
        "seq": 4,
        "event": "delivery",
        "app": "web",
        "actor": "github:octocat",
        "verdict": "rejected",
        "ts": "2025-12-31T23:30:00.000Z",
    }
    assert len(first["hash"]) == 64 and first["prev_hash"] == body["entries"][1]["hash"]


def test_a_signed_request_reads_it_with_its_query_bound(client):
    target = audit(app="web", event="deploy.*")  # sent as event=deploy.%2A: the signature covers it as sent
    response = signed(client, target)
    assert response.status_code == 200, response.get_json()
    assert seqs(response) == [2, 1]
    assert response.get_json()["query"]["event"] == ["deploy.*"]


@pytest.mark.parametrize(
    "sent, signed_for",
    [
        ("/audit?app=api", "/audit?app=web"),  # another filter than the one signed
        ("/audit?app=web&limit=1", "/audit?limit=1&app=web"),  # the same filters, reordered
        ("/audit?app=web", "/audit"),  # a query added to a request signed without one
        ("/audit", "/audit?app=web"),  # a query dropped
    ],
)
def test_a_signature_covers_the_query_exactly_as_sent(client, sent, signed_for):
    response = signed(client, sent, signed_target=signed_for)
    assert response.status_code == 401
    assert response.get_json() == {"error": signatures.SIGNATURE_REFUSED}


def test_the_token_opens_get_audit_only(tmp_path, client):
    queue = Queue.for_state_dir(tmp_path / "state")
    deploy = client.post("/deploy", json={"app": "web"}, headers={"Authorization": f"Bearer {AUDIT_TOKEN}"})
    assert (deploy.status_code, deploy.get_json()) == (401, {"error": "missing X-Deployer-Key header"})
    job = with_token(client, "/jobs/job-0123456789abcdef")
    assert (job.status_code, job.get_json()) == (401, {"error": "missing X-Deployer-Key header"})
    assert queue.jobs.jobs() == []


def test_refusals_are_recorded_without_the_token_and_reads_are_not(tmp_path, client, log):
    with_token(client, "/audit", "not-the-token-at-all")
    with_token(client, "/audit")
    signed(client, "/audit")
    assert log.query(Query(event=("manual_request",))) == []  # refused before it authenticated: aggregated
    client.application.extensions["deployer"].rejections.flush()
    [refused] = log.query(Query(event=("rejected_requests",)))
    assert {k: refused.get(k) for k in ("route", "status", "reason", "count")} == {
        "route": "/audit",
        "status": 401,
        "reason": "the bearer token does not match",
        "count": 1,
    }
    log.close()
    stored = b"".join(p.read_bytes() for p in log.path.parent.glob("audit.db*"))
    assert b"not-the-token-at-all" not in stored and AUDIT_TOKEN.encode() not in stored
    assert log.verify().ok


# --- filters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"app": "web"}, [4, 2, 1]),
        ({"app": "api"}, [3]),
        ({"since": "24h"}, [4, 3, 2]),  # relative to the server's clock: from 2025-12-31T00:00Z on
        ({"since": "2025-12-31T12:00Z", "until": "2025-12-31T21:00Z"}, [3, 2]),
        ({"event": "deploy.finished,deploy.failed"}, [3, 2]),
        ({"event": "deploy.*", "app": "web"}, [2, 1]),
        ({"outcome": "rejected"}, [4]),
        ({"outcome": "failed"}, [3]),
        ({"actor": "github:*"}, [4, 3]),
        ({"actor": "cli:ann"}, [2, 1]),
        ({"limit": "2"}, [4, 3]),
        ({"after": "2"}, [4, 3]),
        ({"app": "nothing"}, []),
    ],
)
def test_filters_select_the_right_entries(client, filters, expected):
    response = with_token(client, audit(**filters))
    assert response.status_code == 200, response.get_json()
    assert seqs(response) == expected
    assert response.get_json()["count"] == len(expected)


@pytest.mark.parametrize(
    "target, message",
    [
        (audit(limit="0"), "parameter limit: must be at least 1 and at most 1000"),
        (audit(limit="1001"), "parameter limit: must be at least 1 and at most 1000"),
        (audit(limit="ten"), "parameter limit: must be a whole number, not 'ten'"),
        (audit(after="-"), "parameter after: must be a whole number, not '-'"),
        (
            audit(since="last week"),
            "parameter since: expected a time like 24h, 30m, 7d, 2024-05-01 or 2024-05-01T12:00Z, not 'last week'",
        ),
        (
            audit(until="soon"),
            "parameter until: expected a time like 24h, 30m, 7d, 2024-05-01 or 2024-05-01T12:00Z, not 'soon'",
        ),
        (
            audit(apps="web"),
            "parameter apps: unknown filter 'apps' (known: app, since, until, event, outcome, actor, "
            "job, limit, after)",
        ),
        ("/audit?app=web&app=api", "parameter app: given more than once (several events: event=a,b)"),
    ],
)
def test_a_bad_filter_is_400_naming_the_parameter(client, target, message):
    response = with_token(client, target)
    assert (response.status_code, response.get_json()) == (400, {"error": message})


@pytest.mark.parametrize(
    "target, message",
    [
        (audit(event="\U0010ffff*"), "parameter event: a pattern must not end in U+10FFFF before its '*'"),
        (audit(actor="\U0010ffff*"), "parameter actor: a pattern must not end in U+10FFFF before its '*'"),
        (audit(since="999999999999d"), "parameter since: 999999999999d is out of range"),
        (audit(until="99999999999999w"), "parameter until: 99999999999999w is out of range"),
        (audit(since="0001-01-01T00:00:00+01:00"), "parameter since: 0001-01-01T00:00:00+01:00 is out of range"),
        (audit(after=str(10**20)), f"parameter after: must be at most {2**63 - 1}"),
        (audit(after="1e20"), "parameter after: must be a whole number, not '1e20'"),
        (audit(after="-5"), "parameter after: must not be negative"),
    ],
)
def test_a_filter_out_of_range_is_400_not_500(client, target, message):
    response = with_token(client, target)
    assert (response.status_code, response.get_json()) == (400, {"error": message})


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_a_wrong_method_is_405(client, method):
    response = with_token(client, "/audit", method=method)
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
