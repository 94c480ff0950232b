"""The receiver against random requests: random methods, paths, headers, content types and bodies.

Whatever arrives, it never answers 500, never queues a job unless the request carried a valid
signature, and never writes a row of its own for a request that did not authenticate: those are
only counted, into at most `max_keys + 1` aggregated rows per interval.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deployer import signatures
from deployer.journal import Journal
from deployer.queue.queue import Queue
from deployer.receiver.web import create_app
from support.configs import app_toml, make_config
from support.receiver import ALICE_KEY, Clock

GITHUB_SECRET = "gh-webhook-secret-fuzz-7b1c"
ALICE_SECRET = "alice-operator-secret-fuzz-4e9a"

ROUTES = [
    "/hooks/github",
    "/deploy",
    "/jobs/job-0123456789abcdef",
    "/audit",
    "/healthz",
    "/",
    "/hooks/github/x",
    "/jobs/../../etc/passwd",
    "/audit?since=999999999999d",
    "/audit?event=%F4%8F%BF%BF*",
    "/audit?after=1e20",
]
HEADER_NAMES = [
    "X-GitHub-Event",
    "X-GitHub-Delivery",
    "X-GitHub-Hook-ID",
    "X-Hub-Signature-256",
    "X-Deployer-Key",
    "X-Deployer-Timestamp",
    "X-Deployer-Nonce",
    "X-Deployer-Signature",
    "Authorization",
    "Content-Length",
    "Transfer-Encoding",
    "Host",
    "Content-Encoding",
]
CONTENT_TYPES = [
    "application/json",
    "application/x-www-form-urlencoded",
    "text/plain",
    "multipart/form-data",
    "application/json; charset=utf-16",
    "",
    "application/x-www-form-urlencoded; charset=latin-1",
]
header_value = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(
        st.sampled_from(["action", "release", "repository", "app", "tag", "payload", "zen", "hook_id"]),
        json_values,
        max_size=5,
    ).map(lambda value: json.dumps(value).encode()),
)


@pytest.fixture(scope="module")
def receiver(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    web = app_toml("web", 8000, repository="Codertocat/Hello-World")
    server = f'max_body_bytes = 4096\ngithub_secret_env = "GH_SECRET"\naudit_token_env = "AUDIT_TOKEN"\n{ALICE_KEY}'
    config = make_config(
        root,
        web,
        server=server,
        environ={"GH_SECRET": GITHUB_SECRET, "ALICE_SECRET": ALICE_SECRET, "AUDIT_TOKEN": "audit-token-fuzz-0d3e"},
    )
    events: list[dict] = []
    clock = Clock()
    queue = Queue.for_state_dir(config.settings.state_dir, clock=clock)
    app = create_app(
        {
            "DEPLOYER_CONFIG": config,
            "QUEUE": queue,
            "JOURNAL": Journal([events.append]),
            "CLOCK": clock,
            "TESTING": False,
        }
    )
    return app, queue, events


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    path=st.sampled_from(ROUTES)
    | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40).map(
        lambda text: "/" + text.lstrip("/")
    ),
    headers=st.dictionaries(st.sampled_from(HEADER_NAMES), header_value, max_size=6),
    content_type=st.sampled_from(CONTENT_TYPES),
    body=bodies,
)
def test_random_requests_never_fail_never_queue_and_never_write_a_row_each(
    receiver, method, path, headers, content_type, body
):
    app, queue, events = receiver
    rows_before = sum(1 for e in events if e["_durable"])
    sent = {k: v for k, v in headers.items() if k not in ("Content-Length", "Transfer-Encoding", "Host")}
    if content_type:
        sent["Content-Type"] = content_type
    response = app.test_client().open(path, method=method, data=body, headers=sent)
    degraded = response.status_code == 503 and path == "/healthz"  # no worker runs here: degraded is the truth
    assert response.status_code < 500 or degraded, (response.status_code, response.get_data(as_text=True)[:300])
    assert queue.jobs.jobs() == []
    assert sum(1 for e in events if e["_durable"]) == rows_before  # counted, not recorded
    rejections = app.extensions["deployer"].rejections
    assert len(rejections._tallies) <= rejections.max_keys + 1


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=bodies,
    event=st.sampled_from(["release", "ping", "push", "", "release "]),
    content_type=st.sampled_from(CONTENT_TYPES),
    delivery=header_value,
)
def test_signed_random_deliveries_never_fail(receiver, body, event, content_type, delivery):
    """Past the signature check the payload is still anyone's guess: a 4xx with a reason, never a 500."""
    app, _, _ = receiver
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "Content-Type": content_type,
        "X-Hub-Signature-256": signatures.github_signature(GITHUB_SECRET, body),
    }
    response = app.test_client().post("/hooks/github", data=body, headers={k: v for k, v in headers.items() if v})
    assert response.status_code < 500, (response.status_code, response.get_data(as_text=True)[:300])
