"""What a fleet controller asks of a host's receiver: a rollout id on POST /deploy, and GET /apps/<app>."""

from __future__ import annotations

import json

from test_web import NOW, assert_no_secret, redeploy_body, signed_call  # noqa: F401 - the fixtures too
from test_web import app, client, clock, events, queue, settings  # noqa: F401

ROLLOUT = "job-00000000000000aa"


def test_a_rollout_id_is_kept_in_the_jobs_source_and_its_queued_record(client, queue, events):
    response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", rollout=ROLLOUT, reason="rollout"))
    assert response.status_code == 202
    job = queue.get(response.get_json()["job"])
    assert job.source == {"key_id": "alice", "reason": "rollout", "rollout": ROLLOUT}
    [queued] = [e for e in events if e["event"] == "job.queued"]
    assert (queued["job"], queued["rollout"], queued["tag"]) == (job.id, ROLLOUT, "v2")
    [record] = [e for e in events if e["event"] == "manual_request"]
    assert record["rollout"] == ROLLOUT


def test_a_rollout_id_that_is_not_a_job_id_is_422_and_queues_nothing(client, queue):
    for bad in ("../x", 7, "job-XYZ", "job-" + "0" * 17):
        response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", rollout=bad))
        assert response.status_code == 422, bad
        assert response.get_json() == {"error": "field rollout must be a rollout's id (job-<16 hex digits>)"}
    assert queue.jobs() == []


def test_get_apps_answers_the_live_tag_the_port_set_and_the_last_job(client, queue, events):
    job_id = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", rollout=ROLLOUT)).get_json()["job"]
    queue.set_active("web", "v1", None, "blue")
    response = signed_call(client, "GET", "/apps/web", content_type=None)
    assert response.status_code == 200
    body = response.get_json()
    assert {k: body[k] for k in ("app", "tag", "port_set", "job")} == {"app": "web", "tag": "v1", "port_set": "blue",
                                                                         "job": None}
    assert body["last_job"] == {"id": job_id, "tag": "v2", "kind": "redeploy", "status": "queued", "reason": None,
                                "rollout": ROLLOUT}
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
