"""What a fleet controller asks of a host's receiver: a rollout id on POST /deploy, and GET /apps/<app>."""

from __future__ import annotations

import json
import tomllib

import pytest

from deployer import config as config_module
from deployer.errors import ConfigError
from deployer.journal import Journal
from deployer.queue.model import JobKind
from deployer.queue.queue import Queue
from deployer.queue.rows import row_problem
from deployer.receiver.web import create_app
from support.configs import config_text
from support.receiver import (
    ALICE_KEY,
    ALICE_SECRET,
    GITHUB_SECRET,
    NAMES,
    assert_no_secret,
    deliver,
    published,
    redeploy_body,
    signed_call,
)

ROLLOUT_ID = "job-00000000000000aa"


def test_a_rollout_id_is_kept_in_the_jobs_source_and_its_queued_record(client, queue, events):
    response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", rollout=ROLLOUT_ID, reason="rollout"))
    assert response.status_code == 202
    job = queue.jobs.get(response.get_json()["job"])
    assert job.source == {"key_id": "alice", "reason": "rollout", "rollout": ROLLOUT_ID}
    [queued] = [e for e in events if e["event"] == "job.queued"]
    assert (queued["job"], queued["rollout"], queued["tag"]) == (job.id, ROLLOUT_ID, "v2")
    [record] = [e for e in events if e["event"] == "manual_request"]
    assert record["rollout"] == ROLLOUT_ID


def test_a_rollout_step_posted_again_answers_its_first_job_and_queues_nothing_more(client, queue, events):
    first = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", rollout=ROLLOUT_ID))
    again = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", rollout=ROLLOUT_ID))
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.get_json()["job"] == first.get_json()["job"]
    assert f"rollout {ROLLOUT_ID} already has job" in again.get_json()["reason"]
    revert = signed_call(client, "POST", "/deploy", redeploy_body(tag="v1", rollout=ROLLOUT_ID))
    other = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", rollout="job-00000000000000bb"))
    assert len({first.get_json()["job"], revert.get_json()["job"], other.get_json()["job"]}) == 3
    assert [(j.tag, j.source["rollout"]) for j in queue.jobs.jobs()] == [
        ("v2", ROLLOUT_ID),
        ("v1", ROLLOUT_ID),
        ("v2", "job-00000000000000bb"),
    ]
    assert len([e for e in events if e["event"] == "job.queued"]) == 3
    assert [e["verdict"] for e in events if e["event"] == "manual_request"] == [
        "queued",
        "duplicate",
        "queued",
        "queued",
    ]


def test_a_rollout_id_that_is_not_a_job_id_is_422_and_queues_nothing(client, queue):
    for bad in ("../x", 7, "job-XYZ", "job-" + "0" * 17):
        response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", rollout=bad))
        assert response.status_code == 422, bad
        assert response.get_json() == {"error": "field rollout must be a rollout's id (job-<16 hex digits>)"}
    assert queue.jobs.jobs() == []


def test_get_apps_answers_the_live_tag_the_port_set_and_the_last_job(client, queue, events):
    job_id = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", rollout=ROLLOUT_ID)).get_json()["job"]
    queue.live.set_active("web", "v1", None, "blue")
    response = signed_call(client, "GET", "/apps/web", content_type=None)
    assert response.status_code == 200
    body = response.get_json()
    assert {k: body[k] for k in ("app", "tag", "port_set", "job")} == {
        "app": "web",
        "tag": "v1",
        "port_set": "blue",
        "job": None,
    }
    assert body["last_job"] == {
        "id": job_id,
        "tag": "v2",
        "kind": "redeploy",
        "status": "queued",
        "reason": None,
        "rollout": ROLLOUT_ID,
    }
    assert set(body["health"]) == {"receiver", "queue", "worker", "docker", "netfilter", "disk"}
    assert_no_secret(events, response)


def test_get_apps_of_an_app_never_deployed_says_so(client):
    body = signed_call(client, "GET", "/apps/web", content_type=None).get_json()
    assert (body["tag"], body["port_set"], body["last_job"]) == (None, None, None)


def test_get_apps_needs_a_signature_and_a_known_app(client):
    assert client.get("/apps/web").status_code == 401
    response = signed_call(client, "GET", "/apps/nope", content_type=None)
    assert response.status_code == 404
    assert json.loads(response.data)["error"].startswith("unknown app 'nope'")


# --- a controller's receiver: a fleet app's release queues a rollout --------------------------------


FLEET = """\
[fleet]
apps = ["web"]

[[fleet.hosts]]
name = "h1"
url = "http://10.0.0.1:8000"
insecure_http = true
key_id = "fleet"
secret_file = "{secret}"

[fleet.releases.web]
repository = "Codertocat/Hello-World"
tag_pattern = '^[v0-9][A-Za-z0-9._-]*$'
"""


def controller_text(tmp_path, secret) -> str:
    """A controller without apps of its own: its receiver takes GitHub's deliveries and alice's requests."""
    server = f'{NAMES}github_secret_env = "GH_SECRET"\n{ALICE_KEY}'
    return config_text(tmp_path, server=server, tables=FLEET.format(secret=secret))


@pytest.fixture
def controller(tmp_path, events, clock):
    secret = tmp_path / "fleet.secret"
    secret.write_text("fleet-host-secret-77aa\n")
    path = tmp_path / "deployer.toml"
    path.write_text(controller_text(tmp_path, secret))
    environ = {"GH_SECRET": GITHUB_SECRET, "ALICE_SECRET": ALICE_SECRET}
    receiver_config = config_module.load_receiver(path, environ=environ)
    queue = Queue.for_state_dir(receiver_config.settings.state_dir, clock=clock)
    journal = Journal([events.append], secrets=receiver_config.secrets())
    app = create_app(
        {"DEPLOYER_CONFIG": receiver_config, "QUEUE": queue, "JOURNAL": journal, "CLOCK": clock, "TESTING": True}
    )
    return app.test_client(), queue, config_module.load(path, environ=environ)


def test_a_release_of_a_fleet_app_queues_a_rollout_on_the_controller(controller, events):
    client, queue, full = controller
    response = deliver(client, published())
    assert response.status_code == 202, response.get_json()
    [job] = queue.jobs.jobs()
    assert (job.app, job.kind, job.status) == ("web", JobKind.ROLLOUT, "queued")
    [queued] = [e for e in events if e["event"] == "job.queued"]
    assert (queued["kind"], queued["rollout"]) == (JobKind.ROLLOUT, job.id)
    assert row_problem(job, full.apps, full.fleet.apps) is None  # the controller's worker runs it
    assert "fleet-host-secret-77aa" not in repr(events)
    # The receiver never holds the hosts' key: only the worker's config reads it.
    assert "fleet-host-secret-77aa" in full.secrets()
    assert deliver(client, published()).get_json()["status"] == "duplicate"  # a redelivery: no second rollout


def test_a_signed_redeploy_of_a_fleet_app_is_refused_on_the_controller(controller):
    client, queue, _ = controller
    response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2"))
    assert response.status_code == 422
    assert "is a fleet app" in response.get_json()["error"]
    assert queue.jobs.jobs() == []


def test_a_release_policy_for_an_app_not_in_the_fleet_is_refused(tmp_path):
    secret = tmp_path / "s"
    secret.write_text("x" * 20)
    text = controller_text(tmp_path, secret).replace("[fleet.releases.web]", "[fleet.releases.api]")
    with pytest.raises(ConfigError, match=r"key 'fleet.releases.api': names no app of \[fleet\] apps"):
        config_module.parse(
            tomllib.loads(text), path=tmp_path / "d.toml", environ={"GH_SECRET": "g" * 20, "ALICE_SECRET": "a" * 20}
        )
