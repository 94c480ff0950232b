"""The receiver through Flask's test client: a fresh app, queue and journal per test; no engine at all.

Covers the bad-input table row by row: each rejection is answered with its status, acted on
never (no job), and recorded in the journal with its reason and without any secret.
"""

import io
import json
from urllib.parse import urlencode

import pytest

from deployer import signatures
from deployer.journal import Journal
from deployer.queue.queue import Queue
from deployer.receiver.web import create_app
from support.receiver import (
    CAP,
    GITHUB_SECRET,
    NOW,
    assert_no_secret,
    deliver,
    published,
    read_payload,
    redeploy_body,
    signed_call,
)

HOSTILE_TAGS = ["v1;rm -rf /", "$(id)", "../x", "v" * 200]


def deliveries(events):
    return [e for e in events if e["event"] == "delivery"]


# --- deliveries that are acted on ------------------------------------------------------------------


def test_a_signed_published_release_is_queued_and_answered_202(client, queue, events):
    response = deliver(client, read_payload("release-published.payload.json"))
    assert response.status_code == 202
    body = response.get_json()
    job = queue.jobs.get(body["job"])
    assert body == {
        "status": "queued",
        "job": job.id,
        "app": "web",
        "tag": "0.0.1",
        "reason": "queued",
        "url": f"/jobs/{job.id}",
    }
    assert response.headers["Location"] == f"/jobs/{job.id}"
    assert (job.app, job.tag, job.kind, job.status) == ("web", "0.0.1", "release", "queued")
    assert job.actor == "github:Codertocat (delivery 72d3162e-cc78-11e3-81ab-4c9367dc0958)"
    assert job.source == {
        "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "hook_id": "109948940",
        "action": "published",
        "release_id": 17372790,
        "published_at": "2019-05-15T15:20:53Z",
        "repository": "Codertocat/Hello-World",
        "sender": "Codertocat",
    }
    [record] = deliveries(events)
    assert {k: v for k, v in record.items() if k not in ("ts", "_durable")} == {
        "event": "delivery",
        "remote_addr": "127.0.0.1",
        "delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "hook_id": "109948940",
        "github_event": "release",
        "action": "published",
        "repository": "Codertocat/Hello-World",
        "sender": "Codertocat",
        "app": "web",
        "tag": "0.0.1",
        "body_sha256": signatures.body_sha256(read_payload("release-published.payload.json")),
        "verdict": "queued",
        "reason": "queued",
        "job": job.id,
        "status": 202,
    }
    queued = [e for e in events if e["event"] == "job.queued"]
    assert [(e["job"], e["app"], e["tag"], e["kind"]) for e in queued] == [(job.id, "web", "0.0.1", "release")]
    assert_no_secret(events, response)


def test_the_form_encoded_content_type_is_accepted(client, queue):
    body = urlencode({"payload": read_payload("release-published.payload.json").decode()}).encode()
    response = deliver(client, body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 202
    assert queue.jobs.get(response.get_json()["job"]).tag == "0.0.1"


def test_a_ping_from_a_repository_no_app_claims_answers_404_so_github_shows_it_red(client, queue, events):
    response = deliver(client, read_payload("ping-payload.json"), event="ping")
    assert response.status_code == 404
    assert response.get_json() == {
        "error": "no app is configured for repository Octocoders/Hello-World; this hook deploys nothing here"
    }
    assert queue.jobs.jobs() == []
    [record] = deliveries(events)
    assert (record["verdict"], record["status"]) == ("rejected", 404)
    assert "Octocoders/Hello-World" in record["reason"]


def test_a_ping_from_a_repository_an_app_claims_answers_200(client, queue, events):
    ping = json.loads(read_payload("ping-payload.json"))
    ping["repository"]["full_name"] = "Codertocat/Hello-World"
    response = deliver(client, json.dumps(ping).encode(), event="ping")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "pong",
        "reason": "pong; repository Codertocat/Hello-World deploys app 'web'",
    }
    assert queue.jobs.jobs() == []
    assert deliveries(events)[0]["verdict"] == "pong"


def test_an_organization_hook_ping_answers_200_with_the_repositories_deployed_here(client, events):
    ping = json.loads(read_payload("ping-payload.json"))
    del ping["repository"]
    ping["organization"] = {"login": "Octocoders", "id": 38302899}
    ping["hook"]["type"] = "Organization"
    response = deliver(client, json.dumps(ping).encode(), event="ping")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "pong",
        "reason": "pong; an organization's hook: this server deploys repositories Codertocat/Hello-World",
        "repositories": ["Codertocat/Hello-World"],
    }


@pytest.mark.parametrize("repository", ["Octocoders/Hello-World", "Codertocat/Hello-World", None])
def test_an_unsigned_ping_stays_401(client, events, repository):
    ping = json.loads(read_payload("ping-payload.json"))
    if repository is None:
        del ping["repository"]
        ping["hook"]["type"] = "Organization"
    else:
        ping["repository"]["full_name"] = repository
    response = deliver(client, json.dumps(ping).encode(), event="ping", secret=None)
    assert response.status_code == 401


def test_a_redelivery_does_not_deploy_twice(client, queue):
    first = deliver(client, read_payload("release-published.payload.json"))
    again = deliver(client, read_payload("release-published.payload.json"))
    assert again.status_code == 200
    assert again.get_json() == {
        "status": "duplicate",
        "job": first.get_json()["job"],
        "job_status": "queued",
        "reason": "delivery 72d3162e-cc78-11e3-81ab-4c9367dc0958 was already received (queued)",
    }
    assert len(queue.jobs.jobs()) == 1


def test_published_and_released_of_one_release_make_one_job(client, queue):
    first = deliver(client, read_payload("release-published.payload.json"), delivery="d-published")
    second = deliver(client, read_payload("release-released.json"), delivery="d-released")
    assert second.status_code == 200
    assert second.get_json()["job"] == first.get_json()["job"]
    assert len(queue.jobs.jobs()) == 1


def test_a_tag_already_active_makes_no_job(client, queue):
    queue.live.set_active("web", "0.0.1", None)
    response = deliver(client, read_payload("release-released.json"))
    assert (response.status_code, response.get_json()["reason"]) == (200, "tag 0.0.1 is already active")
    assert queue.jobs.jobs() == []


def test_ignored_actions_are_acknowledged_with_the_reason(client, queue, events):
    response = deliver(client, published(prerelease=True))
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ignored",
        "reason": "the release is a prerelease, and app 'web' does not deploy prereleases (prereleases = false)",
    }
    assert queue.jobs.jobs() == []
    assert deliveries(events)[0]["verdict"] == "ignore"


# --- the bad-input table ---------------------------------------------------------------------------


def assert_refused(response, status, error, queue, events, event="delivery"):
    assert response.status_code == status
    assert response.get_json() == {"error": error}
    assert queue.jobs.jobs() == []
    records = [e for e in events if e["event"] == event]
    assert records and records[-1]["verdict"] == "rejected" and records[-1]["reason"] == error
    assert records[-1]["status"] == status
    assert_no_secret(events, response)


def assert_refused_before_auth(client, response, status, error, queue, events, event="delivery"):
    """Refused before it authenticated: no row of its own, but one aggregated row once the interval is flushed."""
    assert response.status_code == status
    assert response.get_json() == {"error": error}
    assert queue.jobs.jobs() == []
    assert [e for e in events if e["event"] == event] == []
    client.application.extensions["deployer"].rejections.flush()
    [row] = [e for e in events if e["event"] == "rejected_requests"]
    assert (row["status"], row["reason"], row["count"], row["source"]) == (status, error, 1, "127.0.0.1")
    assert_no_secret(events, response)


def test_missing_signature_is_401(client, queue, events):
    response = deliver(client, read_payload("release-published.payload.json"), secret=None)
    assert_refused_before_auth(client, response, 401, "missing X-Hub-Signature-256 header", queue, events)


def test_wrong_signature_is_401_and_never_reveals_the_expected_value(client, queue, events):
    body = read_payload("release-published.payload.json")
    response = deliver(client, body, secret="not-the-secret")
    assert_refused_before_auth(client, response, 401, "X-Hub-Signature-256 does not match the body", queue, events)
    expected = signatures.github_signature(GITHUB_SECRET, body)
    assert expected[7:] not in response.get_data(as_text=True)
    assert expected[7:] not in json.dumps(events)


def test_an_unset_github_secret_refuses_every_delivery(settings, queue, events, clock):
    from dataclasses import replace

    unset = replace(settings, server=replace(settings.server, github_secret=None))
    app = create_app({"DEPLOYER_CONFIG": unset, "QUEUE": queue, "JOURNAL": Journal([events.append]), "CLOCK": clock})
    client = app.test_client()
    response = deliver(client, read_payload("release-published.payload.json"))
    assert_refused_before_auth(
        client,
        response,
        401,
        "webhook deliveries are refused: no GitHub secret is configured "
        "([server] github_secret_file or github_secret_env)",
        queue,
        events,
    )


def test_the_signature_is_checked_before_the_body_is_parsed(client, queue, events):
    response = deliver(client, b"{not json", secret="wrong", content_type="text/plain")
    assert_refused_before_auth(client, response, 401, "X-Hub-Signature-256 does not match the body", queue, events)


def test_malformed_json_is_400(client, queue, events):
    response = deliver(client, b'{"action": "published", ')
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("the body is not valid JSON: ")
    assert queue.jobs.jobs() == [] and deliveries(events)[-1]["verdict"] == "rejected"


@pytest.mark.parametrize(
    "body, error",
    [
        (b"[1, 2]", "the body must be a JSON object"),
        (
            b"\xff\xfe",
            "the body is not valid JSON: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        ),
    ],
)
def test_other_malformed_bodies_are_400(client, queue, events, body, error):
    assert_refused(deliver(client, body), 400, error, queue, events)


def test_a_form_without_payload_is_400(client, queue, events):
    response = deliver(client, b"other=1", content_type="application/x-www-form-urlencoded")
    assert_refused(response, 400, "the form has no single 'payload' field", queue, events)


def test_missing_fields_are_422(client, queue, events):
    data = json.loads(read_payload("release-published.payload.json"))
    del data["release"]["tag_name"]
    response = deliver(client, json.dumps(data).encode())
    assert_refused(response, 422, "missing field release.tag_name", queue, events)


@pytest.mark.parametrize(
    "header, error",
    [
        ("X-GitHub-Event", "missing X-GitHub-Event header"),
        ("X-GitHub-Delivery", "missing X-GitHub-Delivery header"),
    ],
)
def test_missing_github_headers_are_422(client, queue, events, header, error):
    response = deliver(client, read_payload("release-published.payload.json"), headers={header: None})
    assert_refused(response, 422, error, queue, events)


def test_a_body_over_the_cap_is_413_and_is_not_read(client, queue, events):
    class Unread(io.RawIOBase):
        def read(self, *_):
            raise AssertionError("the body was read")

    response = client.post(
        "/hooks/github",
        headers={"Content-Type": "application/json", "X-GitHub-Event": "release", "X-GitHub-Delivery": "d-1"},
        environ_overrides={"wsgi.input": Unread(), "CONTENT_LENGTH": str(CAP + 1)},
    )
    assert_refused_before_auth(client, response, 413, f"the body is {CAP + 1} bytes; the limit is {CAP}", queue, events)


def test_a_chunked_body_over_the_cap_is_413_after_reading_no_more_than_the_cap(client, queue, events):
    class Endless(io.RawIOBase):
        served = 0

        def readable(self):
            return True

        def readinto(self, buffer):
            self.served += len(buffer)
            buffer[:] = b"x" * len(buffer)
            return len(buffer)

    stream = Endless()
    response = client.post(
        "/hooks/github",
        headers={"Content-Type": "application/json", "X-GitHub-Event": "release", "X-GitHub-Delivery": "d-1"},
        environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True, "CONTENT_LENGTH": ""},
    )
    assert_refused_before_auth(client, response, 413, f"the body is over the limit of {CAP} bytes", queue, events)
    assert stream.served <= CAP + 65536


def test_an_unsupported_content_type_is_415(client, queue, events):
    response = deliver(client, read_payload("release-published.payload.json"), content_type="text/plain")
    assert_refused(
        response,
        415,
        "content type 'text/plain' is not accepted: use application/json or application/x-www-form-urlencoded",
        queue,
        events,
    )


@pytest.mark.parametrize("tag", HOSTILE_TAGS)
def test_a_hostile_tag_in_a_release_is_422_and_deploys_nothing(client, queue, events, tag):
    response = deliver(client, published(tag_name=tag))
    assert response.status_code == 422
    assert "is not a valid Docker tag" in response.get_json()["error"]
    assert queue.jobs.jobs() == []
    assert deliveries(events)[-1]["verdict"] == "rejected"
    assert deliveries(events)[-1].get("tag") is None  # the hostile text is not recorded as a tag


def test_a_tag_outside_the_apps_pattern_is_422(client, queue, events):
    response = deliver(client, published(tag_name="release_7"))
    assert_refused(
        response, 422, "tag 'release_7' does not match the pattern of app 'web': ^[v0-9][A-Za-z0-9._-]*$", queue, events
    )


def test_an_unconfigured_repository_is_404(client, queue, events):
    data = json.loads(read_payload("release-published.payload.json"))
    data["repository"]["full_name"] = "someone/else"
    response = deliver(client, json.dumps(data).encode())
    assert_refused(response, 404, "no app is configured for repository someone/else", queue, events)


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/hooks/github"),
        ("PUT", "/hooks/github"),
        ("GET", "/deploy"),
        ("DELETE", "/jobs/job-0123456789abcdef"),
        ("POST", "/healthz"),
    ],
)
def test_a_wrong_method_is_405(client, queue, method, path):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert response.get_json()["error"].startswith("The method is not allowed")
    assert "Allow" in response.headers
    assert queue.jobs.jobs() == []


# --- signed manual requests ------------------------------------------------------------------------


def test_a_signed_redeploy_is_queued(client, queue, events):
    response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2", reason="hotfix"))
    assert response.status_code == 202
    job = queue.jobs.get(response.get_json()["job"])
    assert (job.app, job.tag, job.kind, job.actor) == ("web", "v2", "redeploy", "key:alice")
    assert job.source == {"key_id": "alice", "reason": "hotfix"}
    [record] = [e for e in events if e["event"] == "manual_request"]
    assert (record["key_id"], record["timestamp"], record["verdict"], record["job"]) == ("alice", NOW, "queued", job.id)
    assert record["nonce"].startswith("nonce-")
    assert_no_secret(events, response)


def test_a_redeploy_without_tag_means_the_active_release(client, queue):
    response = signed_call(client, "POST", "/deploy", redeploy_body())
    assert response.status_code == 202
    assert queue.jobs.get(response.get_json()["job"]).tag is None


def test_a_job_is_readable_with_a_signed_get(client, queue, events):
    job_id = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2")).get_json()["job"]
    queue.jobs.add_step(job_id, "pull", "ok", {"duration_ms": 12.5})
    response = signed_call(client, "GET", f"/jobs/{job_id}", content_type=None)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["id"], body["status"], body["tag"]) == (job_id, "queued", "v2")
    assert [(s["name"], s["outcome"], s["detail"]) for s in body["steps"]] == [("pull", "ok", {"duration_ms": 12.5})]
    reads = [e for e in events if e["event"] == "manual_request" and e.get("job") == job_id]
    # The signed POST is a durable record; a successful status read reaches the log only.
    assert [(e["verdict"], e["_durable"]) for e in reads] == [("queued", True), ("answered", False)]


def test_an_unsigned_job_read_is_401(client, queue, events):
    job_id = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2")).get_json()["job"]
    response = client.get(f"/jobs/{job_id}")
    assert response.status_code == 401
    assert response.get_json() == {"error": "missing X-Deployer-Key header"}


def test_an_unknown_job_is_404_after_authentication(client):
    assert signed_call(client, "GET", "/jobs/job-0123456789abcdef", content_type=None).status_code == 404
    assert signed_call(client, "GET", "/jobs/../../etc", content_type=None).status_code == 404
    assert client.get("/jobs/job-0123456789abcdef").status_code == 401


def test_a_stale_timestamp_is_401(client, queue, events):
    response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2"), timestamp=NOW - 301)
    assert_refused_before_auth(
        client,
        response,
        401,
        "the timestamp is more than 300 s away from the server's clock (check the client's clock)",
        queue,
        events,
        event="manual_request",
    )


def test_a_timestamp_from_the_future_is_401(client, queue, events):
    response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2"), timestamp=NOW + 301)
    assert response.status_code == 401


def test_a_reused_nonce_is_401(client, queue, events):
    body = redeploy_body(tag="v2")
    first = signed_call(client, "POST", "/deploy", body, nonce="the-same-nonce-0001")
    assert first.status_code == 202
    replay = signed_call(client, "POST", "/deploy", body, nonce="the-same-nonce-0001")
    assert replay.status_code == 401 and replay.get_json() == {"error": "nonce already used"}
    assert len(queue.jobs.jobs()) == 1


def test_a_nonce_is_spent_even_when_the_request_is_then_refused(client, queue):
    assert (
        signed_call(client, "POST", "/deploy", redeploy_body(tag="$(id)"), nonce="spent-nonce-00001").status_code == 422
    )
    again = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2"), nonce="spent-nonce-00001")
    assert again.status_code == 401


def test_an_unknown_key_id_is_401(client, queue, events):
    response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2"), key_id="mallory")
    assert_refused_before_auth(
        client, response, 401, signatures.SIGNATURE_REFUSED, queue, events, event="manual_request"
    )
    assert "mallory" not in json.dumps(events)


def test_a_wrong_manual_signature_is_401(client, queue, events):
    response = signed_call(client, "POST", "/deploy", redeploy_body(tag="v2"), secret="x" * 30)
    assert_refused_before_auth(
        client, response, 401, signatures.SIGNATURE_REFUSED, queue, events, event="manual_request"
    )


def test_an_unknown_app_is_404(client, queue, events):
    response = signed_call(client, "POST", "/deploy", json.dumps({"app": "nope"}).encode())
    assert_refused(response, 404, "unknown app 'nope'", queue, events, event="manual_request")


@pytest.mark.parametrize("tag", HOSTILE_TAGS)
def test_a_hostile_tag_in_a_redeploy_is_422(client, queue, tag):
    response = signed_call(client, "POST", "/deploy", redeploy_body(tag=tag))
    assert response.status_code == 422
    assert "is not a valid Docker tag" in response.get_json()["error"]
    assert queue.jobs.jobs() == []


@pytest.mark.parametrize(
    "body, status, error",
    [
        (b"{", 400, None),
        (b'{"tag": "v2"}', 422, "missing field app"),
        (b'{"app": 7}', 422, "field app must be a string"),
        (b'{"app": "web", "reason": "a\\nb"}', 422, "field reason must be printable text of at most 500 characters"),
        (b'{"app": "web", "force": true}', 422, "unknown field 'force' (allowed: app, tag, action, reason, rollout)"),
    ],
)
def test_malformed_redeploy_bodies(client, queue, body, status, error):
    response = signed_call(client, "POST", "/deploy", body)
    assert response.status_code == status
    if error:
        assert response.get_json() == {"error": error}
    assert queue.jobs.jobs() == []


def test_a_redeploy_must_be_json(client, queue):
    response = signed_call(client, "POST", "/deploy", b"app=web", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


def test_a_redeploy_over_the_cap_is_413(client, queue):
    response = signed_call(client, "POST", "/deploy", redeploy_body(reason="x" * CAP))
    assert response.status_code == 413


# --- health ----------------------------------------------------------------------------------------


def test_health_is_degraded_without_a_worker(client):
    response = signed_call(client, "GET", "/healthz")
    assert response.status_code == 503
    assert response.get_json() == {
        "status": "degraded",
        "receiver": "ok",
        "queue": "ok",
        "worker": "no heartbeat",
        "docker": "unknown",
        "netfilter": "unknown",
        "disk": "ok",
    }


def test_unauthenticated_health_says_ok_or_degraded_and_nothing_else(client, queue, clock, settings):
    assert (client.get("/healthz").status_code, client.get("/healthz").get_json()) == (503, {"status": "degraded"})
    queue.heartbeat.heartbeat(
        pid=1,
        started_at=clock.now,
        docker="cannot reach /var/run/docker.sock: permission denied",
        netfilter="ok",
        checked=True,
    )
    response = client.get("/healthz")
    assert (response.status_code, response.get_json()) == (503, {"status": "degraded"})
    assert b"docker.sock" not in response.data and str(settings.settings.state_dir).encode() not in response.data
    queue.heartbeat.heartbeat(pid=1, started_at=clock.now, docker="ok", netfilter="ok", checked=True)
    assert (client.get("/healthz").status_code, client.get("/healthz").get_json()) == (200, {"status": "ok"})


def test_a_queue_error_is_not_shown_without_credentials(tmp_path, settings, events, clock):
    broken = Queue(tmp_path / "not-a-folder" / "jobs.db", clock=clock)
    (tmp_path / "not-a-folder").write_text("a file where the folder should be")
    app = create_app(
        {
            "DEPLOYER_CONFIG": settings,
            "QUEUE": broken,
            "CLOCK": clock,
            "TESTING": True,
            "JOURNAL": Journal([events.append]),
        }
    )
    client = app.test_client()
    anonymous = client.get("/healthz")
    assert (anonymous.status_code, anonymous.get_json()) == (503, {"status": "degraded"})
    assert b"not-a-folder" not in anonymous.data


def test_health_details_refuse_a_bad_signature(client):
    response = signed_call(client, "GET", "/healthz", secret="x" * 30)
    assert (response.status_code, response.get_json()) == (401, {"error": signatures.SIGNATURE_REFUSED})


def test_health_reports_the_workers_checks(client, queue, clock):
    queue.heartbeat.heartbeat(pid=1, started_at=clock.now, docker="ok", netfilter="ok", checked=True)
    assert signed_call(client, "GET", "/healthz").get_json()["status"] == "ok"
    queue.heartbeat.heartbeat(
        pid=1, started_at=clock.now, docker="the Docker daemon does not answer", netfilter="ok", checked=True
    )
    response = signed_call(client, "GET", "/healthz")
    assert (response.status_code, response.get_json()["docker"]) == (503, "the Docker daemon does not answer")
    clock.now += 60
    assert signed_call(client, "GET", "/healthz").get_json()["worker"] == "last heartbeat 60 s ago"


def test_health_names_the_registry_only_when_the_worker_checks_one(client, queue, clock):
    queue.heartbeat.heartbeat(pid=1, started_at=clock.now, docker="ok", netfilter="ok", checked=True)
    assert "registry" not in signed_call(client, "GET", "/healthz").get_json()
    queue.heartbeat.heartbeat(
        pid=1,
        started_at=clock.now,
        docker="ok",
        netfilter="ok",
        checked=True,
        registry="registry 127.0.0.1:5001: ConnectionRefusedError: [Errno 111] Connection refused",
    )
    response = signed_call(client, "GET", "/healthz")
    assert (response.status_code, response.get_json()["registry"]) == (
        503,
        "registry 127.0.0.1:5001: ConnectionRefusedError: [Errno 111] Connection refused",
    )
    queue.heartbeat.heartbeat(pid=1, started_at=clock.now, docker="ok", netfilter="ok", checked=True, registry="ok")
    assert signed_call(client, "GET", "/healthz").get_json()["registry"] == "ok"


def test_a_signed_promote_or_abort_is_queued_as_its_own_kind(client, queue):
    for action in ("promote", "abort"):
        response = signed_call(client, "POST", "/deploy", redeploy_body(action=action, reason="checked"))
        assert response.status_code == 202, response.get_json()
    assert [(j.kind, j.tag) for j in queue.jobs.jobs()] == [("promote", None), ("abort", None)]


@pytest.mark.parametrize(
    "body, error",
    [
        ({"action": "rollout"}, 'field action must be "promote" or "abort" (a canary\'s end)'),
        ({"action": "promote", "tag": "v2"}, "field action 'promote' takes no tag: it ends the running canary"),
    ],
)
def test_a_bad_canary_action_is_422(client, queue, body, error):
    response = signed_call(client, "POST", "/deploy", redeploy_body(**body))
    assert (response.status_code, response.get_json()) == (422, {"error": error})
    assert queue.jobs.jobs() == []
