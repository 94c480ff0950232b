"""Trust between hosts, at the receiver: a request names its server, a key does only what its scope allows, and a
junk credential buys no body read from a throttled source.

The receivers are the real app factory with real queues in tmp; the requests are signed as a controller or an
operator signs them.
"""

from __future__ import annotations

import io
import json

import pytest

from deployer.config.model import OperatorKey
from deployer.journal import Journal
from deployer.queue.queue import Queue
from deployer.receiver import scopes
from deployer.receiver.scopes import Action
from deployer.receiver.web import create_app
from support.configs import app_toml, make_config
from support.receiver import ALICE_SECRET, CAP, GITHUB_SECRET, Clock, deliver, published, signed_call

FLEET_SECRET = "fleet-key-secret-0123456789ab"
READER_SECRET = "reader-key-secret-0123456789"


def receiver(tmp_path, *, names='names = ["h2.example:8000"]', keys=""):
    """A receiver with the apps web and api, alice's unscoped key and `keys`, answering to `names`."""
    apps = (
        app_toml("web", 8000, repository="Codertocat/Hello-World", tag_pattern="^[v0-9][A-Za-z0-9._-]*$"),
        app_toml("api", 9000),
    )
    server = (
        f'{names}\nmax_body_bytes = {CAP}\ngithub_secret_env = "GH_SECRET"\n'
        '[server.operators.alice]\nsecret_env = "ALICE_SECRET"\n' + keys
    )
    config = make_config(
        tmp_path,
        *apps,
        server=server,
        environ={
            "GH_SECRET": GITHUB_SECRET,
            "ALICE_SECRET": ALICE_SECRET,
            "FLEET_SECRET": FLEET_SECRET,
            "READER_SECRET": READER_SECRET,
        },
    )
    queue = Queue.for_state_dir(config.settings.state_dir, clock=Clock())
    events = []
    app = create_app(
        {
            "DEPLOYER_CONFIG": config,
            "QUEUE": queue,
            "JOURNAL": Journal([events.append]),
            "CLOCK": Clock(),
            "TESTING": True,
        }
    )
    return app.test_client(), queue, events


def deploy_body(app="web", **fields) -> bytes:
    return json.dumps({"app": app, **fields}).encode()


# --- the Host a request names ------------------------------------------------------------------------


def test_a_request_signed_for_another_server_and_sent_there_unchanged_is_refused_with_421(tmp_path):
    """h1 and h2 share the key; a request signed for h1, replayed byte for byte to h2, keeps h1's Host."""
    client, queue, _ = receiver(tmp_path)
    answer = signed_call(client, "POST", "/deploy", deploy_body(tag="v2"), host="h1.example:8000")
    assert answer.status_code == 421
    assert answer.get_json()["error"] == (
        "this server answers to h2.example:8000, not to 'h1.example:8000' ([server] names)"
    )
    assert queue.jobs.jobs() == []


def test_a_request_signed_for_another_server_with_its_host_rewritten_does_not_verify(tmp_path):
    client, queue, _ = receiver(tmp_path)
    answer = signed_call(
        client, "POST", "/deploy", deploy_body(tag="v2"), host="h1.example:8000", sent_to="h2.example:8000"
    )
    assert answer.status_code == 401
    assert queue.jobs.jobs() == []


def test_a_request_signed_for_the_servers_own_name_is_queued(tmp_path):
    client, queue, _ = receiver(tmp_path)
    answer = signed_call(client, "POST", "/deploy", deploy_body(tag="v2"), host="h2.example:8000")
    assert answer.status_code == 202, answer.get_json()
    assert [job.tag for job in queue.jobs.jobs()] == ["v2"]


def test_behind_a_proxy_that_passes_the_host_through_the_public_name_is_the_servers(tmp_path):
    """nginx on deploy.example.com hands the request to 127.0.0.1:8000 with `proxy_set_header Host $host`."""
    client, queue, _ = receiver(tmp_path, names='listen = "127.0.0.1:8000"\nnames = ["deploy.example.com"]')
    answer = signed_call(client, "POST", "/deploy", deploy_body(tag="v2"), host="deploy.example.com")
    assert answer.status_code == 202, answer.get_json()
    direct = signed_call(client, "POST", "/deploy", deploy_body(tag="v3"), host="127.0.0.1:8000")
    assert direct.status_code == 421  # names replace the default: only the name clients are meant to use
    assert [job.tag for job in queue.jobs.jobs()] == ["v2"]


@pytest.mark.parametrize("path", ["/jobs/job-0123456789abcdef", "/apps/web", "/audit"])
def test_every_signed_route_refuses_a_foreign_host(tmp_path, path):
    client, _, _ = receiver(tmp_path)
    assert signed_call(client, "GET", path, host="h1.example:8000").status_code == 421


def test_a_github_delivery_is_not_bound_to_a_host(tmp_path):
    """GitHub's signature covers the body, not the Host; the repository's secret and hook id bind a delivery."""
    client, queue, _ = receiver(tmp_path)
    assert deliver(client, published(tag_name="v2.0.0")).status_code == 202
    assert len(queue.jobs.jobs()) == 1


# --- scoped keys -------------------------------------------------------------------------------------

FLEET_KEY = '[server.operators.fleet]\nsecret_env = "FLEET_SECRET"\nscope = "fleet"\napps = ["web"]\n'
READER_KEY = '[server.operators.reader]\nsecret_env = "READER_SECRET"\nscope = "read"\n'


def as_fleet(client, method, path, body=b""):
    return signed_call(client, method, path, body, key_id="fleet", secret=FLEET_SECRET, host="h2.example:8000")


def as_reader(client, method, path, body=b""):
    return signed_call(client, method, path, body, key_id="reader", secret=READER_SECRET, host="h2.example:8000")


def test_a_fleet_key_deploys_a_tag_of_its_app_and_follows_the_job(tmp_path):
    client, queue, _ = receiver(tmp_path, keys=FLEET_KEY)
    answer = as_fleet(client, "POST", "/deploy", deploy_body(tag="v2"))
    assert answer.status_code == 202, answer.get_json()
    job = answer.get_json()["job"]
    assert as_fleet(client, "GET", f"/jobs/{job}").status_code == 200
    assert as_fleet(client, "GET", "/apps/web").status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/deploy", deploy_body("api", tag="v2"), 403),  # another app
        ("POST", "/deploy", deploy_body(action="promote"), 403),  # a canary's end
        ("POST", "/deploy", deploy_body(action="abort"), 403),
        ("GET", "/apps/api", b"", 403),
        ("GET", "/audit", b"", 403),  # the log spans every app, hook output included
    ],
)
def test_a_fleet_key_does_nothing_else(tmp_path, method, path, body, status):
    client, queue, _ = receiver(tmp_path, keys=FLEET_KEY)
    answer = as_fleet(client, method, path, body)
    assert answer.status_code == status, answer.get_json()
    assert queue.jobs.jobs() == []


def test_a_fleet_key_sees_no_job_of_another_app_not_even_that_it_exists(tmp_path):
    client, _, _ = receiver(tmp_path, keys=FLEET_KEY)
    other = signed_call(client, "POST", "/deploy", deploy_body("api", tag="v2"), host="h2.example:8000")
    assert other.status_code == 202
    answer = as_fleet(client, "GET", f"/jobs/{other.get_json()['job']}")
    assert (answer.status_code, answer.get_json()) == (404, {"error": "no job has that id"})


def test_a_read_key_reads_and_changes_nothing(tmp_path):
    client, queue, _ = receiver(tmp_path, keys=READER_KEY)
    assert as_reader(client, "GET", "/audit").status_code == 200
    assert as_reader(client, "GET", "/apps/api").status_code == 200
    assert as_reader(client, "POST", "/deploy", deploy_body(tag="v2")).status_code == 403
    assert queue.jobs.jobs() == []


def test_a_key_without_a_scope_keeps_every_right(tmp_path):
    client, _, _ = receiver(tmp_path)
    assert (
        signed_call(client, "POST", "/deploy", deploy_body("api", tag="v2"), host="h2.example:8000").status_code == 202
    )
    assert signed_call(client, "GET", "/audit", host="h2.example:8000").status_code == 200


def key(scope="operator", apps=None) -> OperatorKey:
    return OperatorKey("k", "s" * 16, scope=scope, apps=apps)


@pytest.mark.parametrize(
    ("scope", "apps", "action", "app", "allowed"),
    [
        ("operator", None, Action.DEPLOY, "web", True),
        ("operator", None, Action.END_CANARY, "web", True),
        ("operator", None, Action.READ_LOG, None, True),
        ("operator", ("web",), Action.DEPLOY, "api", False),
        ("operator", ("web",), Action.READ_LOG, None, False),
        ("fleet", ("web",), Action.DEPLOY, "web", True),
        ("fleet", ("web",), Action.READ_APP, "web", True),
        ("fleet", ("web",), Action.END_CANARY, "web", False),
        ("fleet", ("web",), Action.DEPLOY, "api", False),
        ("fleet", ("web",), Action.READ_LOG, None, False),
        ("read", None, Action.READ_APP, "api", True),
        ("read", None, Action.READ_LOG, None, True),
        ("read", None, Action.DEPLOY, "web", False),
        ("read", None, Action.END_CANARY, "web", False),
    ],
)
def test_what_each_scope_allows(scope, apps, action, app, allowed):
    assert (scopes.refusal(key(scope, apps), action, app) is None) is allowed


# --- an early 429 ------------------------------------------------------------------------------------


class Tripwire(io.BytesIO):
    """A request body that must not be read."""

    def read(self, *args):
        raise AssertionError("the body of a throttled request was read")


@pytest.mark.parametrize(
    "junk",
    [
        {"X-Hub-Signature-256": "x"},
        {"X-Deployer-Signature": "v2=00"},
        {
            "X-Deployer-Key": "alice",
            "X-Deployer-Timestamp": "1",
            "X-Deployer-Nonce": "n" * 16,
            "X-Deployer-Signature": "v2=00",
        },  # well-formed but far outside the time window
        {
            "X-Deployer-Key": "nobody",
            "X-Deployer-Timestamp": str(int(Clock.now)),
            "X-Deployer-Nonce": "n" * 16,
            "X-Deployer-Signature": "v2=00",
        },  # an unknown key
        {"Authorization": "Bearer guessed"},
    ],
)
def test_a_junk_credential_from_a_throttled_source_gets_the_429_without_its_body_read(tmp_path, junk):
    client, _, _ = receiver(tmp_path)
    for _ in range(40):
        client.post(
            "/deploy", data=b"{}", headers={"Content-Type": "application/json"}, base_url="http://h2.example:8000"
        )
    answer = client.post(
        "/deploy",
        input_stream=Tripwire(b"{}"),
        content_length=2,
        base_url="http://h2.example:8000",
        headers={"Content-Type": "application/json", **junk},
    )
    assert answer.status_code == 429
