"""Reporting on a real `deployer serve`: GitHub deployments and their statuses at a fake GitHub API, and [[notify]]
notifications at a receiver, from real deploys (dockerd, the registry, netfilter) through the report loop serve
runs. Each case compares the exact calls that were answered, in order: GitHub failing in each of its ways, a worker
SIGKILLed between the flip and its status, a receiver down for a while and serve restarted lose nothing and send
nothing twice; a refusal for good is recorded and skipped; a deploy never waits for either. A rollback, canaries
promoted and aborted, deploys by hand, a release superseded while another runs, and a fleet rollout (two hosts'
servers on this machine and a controller) each send what docs/release-loop.md says."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deployer.audit import AuditLog, Query
from support.fake_github_api import FakeGithubApi, NotifyReceiver
from support.integration import IMAGE, REPO, Deployer, demo_app, owned_deployer
from support.served import GITHUB_REPO, Served, release_payload, served_version

pytestmark = pytest.mark.integration

SICK = "v3-sick"  # a tag whose image fails its health check
ENVIRONMENT_URL = "https://web.example.com"
DEPLOYMENTS = f"/repos/{GITHUB_REPO}/deployments"
AT = {
    "v1": "2026-02-01T10:00:00Z",
    "v2": "2026-02-02T10:00:00Z",
    SICK: "2026-02-03T10:00:00Z",
    "v3": "2026-02-04T10:00:00Z",
}


@pytest.fixture(scope="module")
def sick_tag(images) -> Iterator[str]:
    """v1 with HEALTH_STATUS=500 baked in, pushed: its health gate never passes."""
    try:
        build = subprocess.run(
            ["docker", "build", "-q", "-t", f"{IMAGE}:{SICK}", "-"],
            input=f"FROM {IMAGE}:v1\nENV HEALTH_STATUS=500 APP_VERSION={SICK}\n",
            capture_output=True,
            text=True,
        )
        assert build.returncode == 0, build.stderr
        push = subprocess.run(["docker", "push", "-q", f"{IMAGE}:{SICK}"], capture_output=True, text=True)
        assert push.returncode == 0, push.stderr
        yield SICK
    finally:
        subprocess.run(["docker", "rmi", "-f", f"{IMAGE}:{SICK}"], capture_output=True)


def reported_app(port: int, more: str = "") -> str:
    """The web app of the server tests, reported to GitHub, with a health gate that gives up after 3 s; `more`:
    the app's other keys."""
    return demo_app(
        "web",
        external=port,
        blue=port + 1,
        green=port + 2,
        drain=0.5,
        stop_timeout=4,
        env={"DRAIN_TIMEOUT": "2"},
        health={"deadline": 3},
        extra=f'repository = "{GITHUB_REPO}"\nenvironment_url = "{ENVIRONMENT_URL}"\n{more}',
    )


def github_server(fake: FakeGithubApi, token_file: Path) -> str:
    return f'github_api = "{fake.url}"\ngithub_token_file = "{token_file}"\nreport_timeout = "2s"\n'


def token_file(tmp_path: Path) -> tuple[str, Path]:
    token = "ghp_" + secrets.token_hex(18)
    path = tmp_path / "github-deployments-token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token, path


def wait_for(
    what: str, condition: Callable[[], object], timeout: float = 30, seen: Callable[[], object] | None = None
) -> None:
    """Wait for `condition`; `seen` says what there was instead, when it does not come."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s" + (f": {seen()}" if seen else "")
        time.sleep(0.05)


def release(served: Served, tag: str) -> str:
    answer = served.deliver(release_payload(tag, published_at=AT[tag]))
    assert answer.status_code == 202, answer.text
    return answer.json()["job"]


def manual_deploy(served: Served, tag: str) -> str:
    answer = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": tag}).encode())
    assert answer.status_code == 202, answer.text
    return answer.json()["job"]


def audit(served: Served, *events: str) -> list[dict]:
    log = AuditLog.for_state_dir(served.deployer.root / "state")
    try:
        return [e.fields for e in log.query(Query(event=events, limit=None, oldest_first=True))]
    finally:
        log.close()


def reported(tag: str, deployment: int, *statuses: tuple[str, str], environment: str = "web") -> list[tuple]:
    """A release's calls: its deployment created, then each (state, description) posted to it."""
    return [created(tag, environment), *(posted(deployment, s, d) for s, d in statuses)]


def created(tag: str, environment: str = "web") -> tuple:
    """The call that creates a deployment of `tag`."""
    return ("POST", DEPLOYMENTS, tag, environment)


def posted(deployment: int, state: str, description: str) -> tuple:
    """The call that posts a status to `deployment`."""
    return ("POST", f"{DEPLOYMENTS}/{deployment}/statuses", state, description)


def signed_job(served: Served, **request: str) -> str:
    """A signed POST /deploy (a promote, an abort); the job's id once it succeeded."""
    answer = served.signed("POST", "/deploy", json.dumps(request).encode())
    assert answer.status_code == 202, answer.text
    job = answer.json()["job"]
    assert served.wait(job)["status"] == "succeeded"
    return job


def feed_started(served: Served) -> None:
    """Wait for the report loop's GitHub cursor: a feed starts at the audit log's head, so what is recorded before
    it began (a deploy by hand straight after serve started) would not be reported."""
    queue = served.queue()

    def begun() -> bool:
        try:
            queue.reports.cursor("github")
        except KeyError:
            return False
        return True

    wait_for("the GitHub feed", begun)


def by_hand(served: Served, *args: str) -> None:
    """A command run by hand on the host (`deployer deploy`, `rollback`): no job, the engine in its own process."""
    done = served.deployer.cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr


# --- a: a release and a failed health gate, exactly as GitHub sees them --------------------------------


def test_a_release_and_a_failed_health_gate_report_their_exact_statuses(serve, sick_tag, tmp_path):
    token, path = token_file(tmp_path)
    with FakeGithubApi() as fake:
        served = serve(reported_app(22610), server=github_server(fake, path))
        good = release(served, "v1")
        assert served.wait(good)["status"] == "succeeded"
        wait_for("v1's success", lambda: len(fake.delivered()) == 4)
        bad = release(served, sick_tag)
        failed = served.wait(bad)
        assert failed["status"] == "failed", failed
        assert served_version(22610) == "v1"
        wait_for("the failure", lambda: len(fake.delivered()) == 8)
        time.sleep(1.5)  # anything more would come now: the feed looks again every second

        first, second = fake.deployment_ids()
        error = [e["error"] for e in audit(served, "deploy.failed") if e.get("job") == bad]
        assert len(error) == 1 and "health" in error[0], error
        assert fake.delivered() == [
            *reported(
                "v1", first, ("queued", "v1 is queued"), ("in_progress", "deploying v1"), ("success", "v1 is live")
            ),
            *reported(
                sick_tag,
                second,
                ("queued", f"{sick_tag} is queued"),
                ("in_progress", f"deploying {sick_tag}"),
                ("failure", error[0][:140]),
            ),
        ]
        calls = fake.calls()
        assert all(c.delivered for c in calls), [c.short() for c in calls if not c.delivered]
        assert [c.body["payload"] for c in calls if c.path == DEPLOYMENTS] == [{"job": good}, {"job": bad}]
        assert all(
            (c.body["auto_merge"], c.body["required_contexts"]) == (False, []) for c in calls if c.path == DEPLOYMENTS
        )
        success = next(c.body for c in calls if c.short()[2] == "success")
        assert success == {
            "state": "success",
            "description": "v1 is live",
            "environment_url": ENVIRONMENT_URL,
            "auto_inactive": True,
        }
        assert "environment_url" not in next(c.body for c in calls if c.short()[2] == "failure")
        # The token is in the Authorization header and nowhere else: not in another header, a body, the audit
        # log, the queue or serve's log.
        for call in calls:
            assert call.headers["Authorization"] == f"Bearer {token}"
            assert call.headers["Accept"] == "application/vnd.github+json"
            others = {k: v for k, v in call.headers.items() if k != "Authorization"}
            assert token not in json.dumps(others) + json.dumps(call.body)
        places = [*served.logs, *(p for p in (served.deployer.root / "state").rglob("*") if p.is_file())]
        assert {"jobs.db", "audit.db"} <= {p.name for p in places}, places
        for place in places:
            assert token.encode() not in place.read_bytes(), f"the token is in {place}"


# --- b: GitHub failing in each of its ways never holds a deploy up, and loses nothing -----------------


def test_github_failing_every_way_holds_no_deploy_and_each_status_arrives_once_in_order(serve, tmp_path):
    _, path = token_file(tmp_path)
    with FakeGithubApi(hang_seconds=4) as fake:  # a hung call outlasts report_timeout (2 s)
        served = serve(reported_app(22620), server=github_server(fake, path))
        fake.set_mode("500")
        job = release(served, "v1")
        answers: list[int | None] = []
        for mode, answer in (("500", 500), ("hang", None), ("401", 401), ("rate-limit", 403), ("429", 429)):
            fake.set_mode(mode)
            wait_for(f"a call answered {mode}", lambda a=answer: len(fake.failed()) > len(answers), timeout=20)
            answers.append(fake.failed()[-1].answer)
        assert answers == [500, None, 401, 403, 429]
        finished = served.wait(job, timeout=30)
        assert (finished["status"], finished["reason"]) == ("succeeded", "v1 is live on blue"), finished
        assert fake.delivered() == []  # the deploy finished while GitHub still failed
        behind = served.deployer.cli("status").stdout
        assert "report github: " in behind and "audit entries behind (try " in behind, behind
        fake.set_mode("ok")
        wait_for("every status", lambda: len(fake.delivered()) == 5, timeout=20)
        time.sleep(1.5)  # a duplicate would come now

        # The creation's first try was refused, so the feed looks for it before creating it again: it is not there.
        (deployment,) = fake.deployment_ids()
        assert fake.delivered() == [
            ("GET", DEPLOYMENTS, "v1", "web"),
            *reported(
                "v1",
                deployment,
                ("queued", "v1 is queued"),
                ("in_progress", "deploying v1"),
                ("success", "v1 is live"),
            ),
        ]
        # Every failed try was the same request: the creation first, then the look for it.
        tries = [c.short() for c in fake.failed()]
        assert tries == [("POST", DEPLOYMENTS, "v1", "web")] + [("GET", DEPLOYMENTS, "v1", "web")] * 4, tries
        status = served.deployer.cli("status")
        assert "report github" not in status.stdout, status.stdout  # caught up


# --- c: a worker SIGKILLed between the flip and its status --------------------------------------------


def test_a_worker_killed_between_the_flip_and_its_status_reports_one_success(serve, tmp_path):
    _, path = token_file(tmp_path)
    with FakeGithubApi() as fake:
        served = serve(reported_app(22630), server=github_server(fake, path))
        flipped, go = tmp_path / "flipped", tmp_path / "go"
        # Holds the deploy after its flip (and the record) until `go`, at most 15 s; it dies with its job.
        served.deployer.hook(
            "post-flip",
            f"touch {flipped}\ni=0\nwhile [ ! -e {go} ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done\n",
        )
        fake.set_mode("500", only_state="success")  # the flip's status is not delivered before the kill
        job = release(served, "v1")
        wait_for("the post-flip hook", flipped.exists)
        wait_for("a refused success", lambda: any(c.short()[2] == "success" for c in fake.failed()))
        assert served.job(job)["status"] == "running"
        served.kill()  # serve, gunicorn, the report loop, the job and its hook, all at once
        assert [(j.id, j.status) for j in served.queue().jobs.jobs()] == [(job, "running")]

        fake.set_mode("ok")
        go.touch()
        served.start()
        finished = served.wait(job, timeout=40)
        # Run again, it finds its tag live: the deploy had done its work before the kill.
        assert (finished["status"], finished["reason"]) == ("skipped", "tag v1 is already active"), finished
        assert ("interrupted", "requeued") in [(s["name"], s["outcome"]) for s in finished["steps"]], finished
        assert served_version(22630) == "v1"
        wait_for("the success", lambda: any(c[2] == "success" for c in fake.delivered()), timeout=20)
        time.sleep(2)  # a second success, or a second deployment, would come now

        (deployment,) = fake.deployment_ids()
        assert fake.delivered() == reported(
            "v1", deployment, ("queued", "v1 is queued"), ("in_progress", "deploying v1"), ("success", "v1 is live")
        )
        assert [c.short()[2] for c in fake.failed()] == ["success"] * len(fake.failed())


# --- d: notifications, signed, through a receiver's outage and a restart of serve ---------------------


def notify_targets(receiver: NotifyReceiver, secret_file: Path) -> str:
    return (
        f'[[notify]]\nname = "ops"\nurl = "{receiver.url}/ops"\nsecret_file = "{secret_file}"\nevents = ["*"]\n'
        f'[[notify]]\nname = "chat"\nurl = "{receiver.url}/chat"\nformat = "slack"\n'  # the default events
    )


def test_notifications_arrive_once_signed_across_an_outage_and_a_restart(serve, sick_tag, tmp_path):
    secret = secrets.token_hex(24)
    secret_file = tmp_path / "notify-secret"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    with NotifyReceiver() as receiver:
        served = serve(reported_app(22640), notify_targets(receiver, secret_file))
        first = manual_deploy(served, "v1")
        assert served.wait(first)["status"] == "succeeded"
        sick = manual_deploy(served, sick_tag)
        assert served.wait(sick)["status"] == "failed"
        wait_for("two notifications", lambda: len(receiver.received("/ops")) == 2 and receiver.received("/chat"))

        receiver.stop()  # an outage: the next notification is tried and refused until it ends
        second = manual_deploy(served, "v2")
        assert served.wait(second)["status"] == "succeeded"
        queue = served.queue()
        wait_for("a refused try", lambda: queue.reports.cursor("notify:ops").problem is not None, timeout=20)
        assert len(receiver.received()) == 3
        receiver.start()
        wait_for("the missed notification", lambda: len(receiver.received("/ops")) == 3, timeout=20)

        served.stop()
        served.start()
        time.sleep(2.5)  # the restarted report loop looks every second: a repeat would come now
        ops, chat = receiver.received("/ops"), receiver.received("/chat")
        failed = next(e for e in audit(served, "deploy.failed") if e.get("job") == sick)
        entries = {e["job"]: e["seq"] for e in audit(served, "deploy.finished", "deploy.failed")}
        assert [(r.json()["id"], r.json()["event"], r.json()["job"], r.json()["tag"]) for r in ops] == [
            (f"audit-{entries[first]}", "deploy.succeeded", first, "v1"),
            (f"audit-{entries[sick]}", "deploy.failed", sick, sick_tag),
            (f"audit-{entries[second]}", "deploy.succeeded", second, "v2"),
        ]
        assert [r.json()["text"] for r in ops] == [
            "web: v1 is live",
            f"web: deploy of {sick_tag} failed: {failed['error']}",
            "web: v2 is live",
        ]
        for r in ops:
            body = r.json()
            assert set(body) == {"id", "event", "text", "app", "job", "tag", "outcome", "ts"}, body
            assert r.headers["X-Deployer-Delivery"] == body["id"]
            expected = "sha256=" + hmac.new(secret.encode(), r.body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(r.headers["X-Deployer-Signature"], expected)
            assert r.headers["Content-Type"] == "application/json"
        # Slack: the default events (a failed deploy only), Slack's schema only, unsigned (no secret).
        assert len(chat) == 1
        (slack,) = chat
        assert slack.headers["X-Deployer-Delivery"] == f"audit-{entries[sick]}"
        assert "X-Deployer-Signature" not in slack.headers
        body = slack.json()
        assert set(body) == {"text", "blocks"}
        assert body["text"] == f"web: deploy of {sick_tag} failed: {failed['error']}"
        section, context = body["blocks"]
        assert section == {"type": "section", "text": {"type": "mrkdwn", "text": f"*deploy.failed*: {body['text']}"}}
        assert set(context) == {"type", "elements"} and context["type"] == "context"
        assert all(set(e) == {"type", "text"} and e["type"] == "mrkdwn" for e in context["elements"])
        assert sick in context["elements"][0]["text"] and f"audit-{entries[sick]}" in context["elements"][0]["text"]
        assert secret.encode() not in b"".join(p.read_bytes() for p in served.logs)


# --- e: a refusal for good is recorded and skipped --------------------------------------------------------


def test_a_release_github_refuses_is_recorded_as_dropped_and_the_next_is_reported(serve, tmp_path):
    token, path = token_file(tmp_path)
    with FakeGithubApi() as fake:
        served = serve(reported_app(22650), server=github_server(fake, path))
        fake.set_mode("422")  # GitHub does not know the tag: refused for good, not tried again
        first = release(served, "v1")
        assert served.wait(first)["status"] == "succeeded"
        wait_for("the refusals recorded", lambda: len(audit(served, "report.dropped")) == 4)
        fake.set_mode("ok")
        second = release(served, "v2")
        assert served.wait(second)["status"] == "succeeded"
        wait_for("v2's success", lambda: len(fake.delivered()) == 4)
        time.sleep(1.5)

        dropped = [(e["feed"], e["job"], e["message"], e["reason"]) for e in audit(served, "report.dropped")]
        assert dropped == [
            ("github", first, "CreateDeployment", "HTTP 422 from 127.0.0.1"),
            *[("github", first, "DeploymentStatus", "its deployment was not created")] * 3,
        ]
        assert [c.short() for c in fake.failed()] == [("POST", DEPLOYMENTS, "v1", "web")]  # tried once
        (deployment,) = fake.deployment_ids()
        assert fake.delivered() == reported(
            "v2", deployment, ("queued", "v2 is queued"), ("in_progress", "deploying v2"), ("success", "v2 is live")
        )
        assert served.deployer.cli("status").stdout.count("report github") == 0
        log = AuditLog.for_state_dir(served.deployer.root / "state")
        try:
            assert log.verify().ok  # the report loop's own entries keep the chain
        finally:
            log.close()
        assert token.encode() not in b"".join(
            p.read_bytes() for p in (served.deployer.root / "state").rglob("*") if p.is_file()
        )


# --- f: a rollback ----------------------------------------------------------------------------------------


def test_a_rollback_is_a_deployment_of_the_release_it_went_back_to(serve, tmp_path):
    _, path = token_file(tmp_path)
    with FakeGithubApi() as fake:
        served = serve(reported_app(22660), server=github_server(fake, path))
        feed_started(served)
        for tag in ("v1", "v2"):
            assert served.wait(release(served, tag))["status"] == "succeeded"
        by_hand(served, "rollback", "web")
        assert served_version(22660) == "v1"
        wait_for("the rollback's success", lambda: len(fake.delivered()) == 10, timeout=20, seen=fake.delivered)
        time.sleep(1.5)  # anything more would come now

        first, second, third = fake.deployment_ids()
        [back] = audit(served, "rollback.finished")
        assert fake.delivered() == [
            *reported(
                "v1", first, ("queued", "v1 is queued"), ("in_progress", "deploying v1"), ("success", "v1 is live")
            ),
            *reported(
                "v2", second, ("queued", "v2 is queued"), ("in_progress", "deploying v2"), ("success", "v2 is live")
            ),
            *reported("v1", third, ("success", "rolled back to v1")),
        ]
        calls = fake.calls()
        assert all(c.delivered for c in calls), [c.short() for c in calls if not c.delivered]
        # No job: the rollback's deployment is named by its audit entry.
        assert [c.body["payload"] for c in calls if c.path == DEPLOYMENTS][-1] == {"job": f"web#{back['seq']}"}
        assert calls[-1].body == {
            "state": "success",
            "description": "rolled back to v1",
            "environment_url": ENVIRONMENT_URL,
            "auto_inactive": True,  # v2's deployment becomes inactive on GitHub's side
        }


# --- g: canaries, promoted and aborted; a deploy by hand ----------------------------------------------------


def test_a_canary_is_in_progress_with_its_weight_until_promoted_or_aborted(serve, tmp_path):
    _, path = token_file(tmp_path)
    with FakeGithubApi() as fake:
        # Releases of this app start a canary at 20%; a deploy by hand splits only when asked to.
        served = serve(reported_app(22670, "canary = 20\n"), server=github_server(fake, path))
        feed_started(served)
        by_hand(served, "deploy", "web", "v1")
        canary = release(served, "v2")
        finished = served.wait(canary)
        assert finished["status"] == "succeeded", finished
        wait_for("the canary's statuses", lambda: len(fake.delivered()) == 7, timeout=20, seen=fake.delivered)
        time.sleep(1.5)  # the canary runs: nothing more comes until it ends
        assert len(fake.delivered()) == 7
        promote = signed_job(served, app="web", action="promote")
        assert served_version(22670) == "v2"
        by_hand(served, "deploy", "web", "v1", "--canary", "20")
        signed_job(served, app="web", action="abort", reason="errors on /checkout")
        assert served_version(22670) == "v2"
        wait_for("the abort's failure", lambda: len(fake.delivered()) == 12, timeout=20, seen=fake.delivered)
        time.sleep(1.5)

        first, second, third = fake.deployment_ids()
        assert fake.delivered() == [
            *reported("v1", first, ("in_progress", "deploying v1"), ("success", "v1 is live")),
            *reported(
                "v2",
                second,
                ("queued", "v2 is queued"),
                ("in_progress", "canary of v2 starting at 20%"),
                ("in_progress", "canary: v2 takes 20% of the traffic"),
                ("success", "canary promoted: v2 takes all the traffic"),
            ),
            *reported(
                "v1",
                third,
                ("in_progress", "canary of v1 starting at 20%"),
                ("in_progress", "canary: v1 takes 20% of the traffic"),
                ("failure", "canary aborted: errors on /checkout"),
            ),
        ]
        calls = fake.calls()
        assert all(c.delivered for c in calls), [c.short() for c in calls if not c.delivered]
        started = {e["seq"]: e.get("canary") for e in audit(served, "deploy.started")}
        payloads = [c.body["payload"]["job"] for c in calls if c.path == DEPLOYMENTS]
        # The deploys by hand are named by their deploy.started entries; the release by its job, not the promote's.
        assert payloads[1] == canary != promote
        assert [started[int(p.removeprefix("web#"))] for p in (payloads[0], payloads[2])] == [None, 20], payloads
        promoted = next(c.body for c in calls if c.short()[2] == "success" and "promoted" in c.short()[3])
        assert promoted["environment_url"] == ENVIRONMENT_URL and promoted["auto_inactive"] is True


# --- h: releases superseded while another runs --------------------------------------------------------------


def test_a_release_superseded_while_queued_is_inactive_and_the_newest_goes_live(serve, images, tmp_path):
    images.ensure("v3")
    _, path = token_file(tmp_path)
    with FakeGithubApi() as fake:
        served = serve(reported_app(22680), server=github_server(fake, path))
        feed_started(served)
        held, go = tmp_path / "held", tmp_path / "go"
        # Holds each deploy before its pull until `go`, at most 15 s; v3's passes at once.
        served.deployer.hook(
            "pre-deploy",
            f"touch {held}\ni=0\nwhile [ ! -e {go} ] && [ $i -lt 150 ]; do sleep 0.1; i=$((i+1)); done\n",
        )
        first = release(served, "v1")
        wait_for("v1 held", held.exists)
        wait_for("v1 in progress", lambda: len(fake.delivered()) == 3, timeout=20, seen=fake.delivered)
        second, third = release(served, "v2"), release(served, "v3")
        wait_for("v2 and v3 queued", lambda: len(fake.delivered()) == 7, timeout=20, seen=fake.delivered)
        go.touch()
        assert served.wait(first)["status"] == "succeeded"
        assert served.wait(third)["status"] == "succeeded"
        # v2 waited behind v3, the newer release; once v3 is live, v2 never runs.
        assert served.wait(second)["status"] == "superseded"
        assert served_version(22680) == "v3"
        wait_for("v2 inactive", lambda: len(fake.delivered()) == 11, timeout=20, seen=fake.delivered)
        time.sleep(1.5)

        v1, v2, v3 = fake.deployment_ids()
        assert fake.delivered() == [
            *reported("v1", v1, ("queued", "v1 is queued"), ("in_progress", "deploying v1")),
            *reported("v2", v2, ("queued", "v2 is queued")),
            *reported("v3", v3, ("queued", "v3 is queued")),
            posted(v1, "success", "v1 is live"),
            posted(v3, "in_progress", "deploying v3"),
            posted(v3, "success", "v3 is live"),
            posted(v2, "inactive", f"superseded by {third}"),
        ]
        assert all(c.delivered for c in fake.calls())
        assert [c.body["payload"] for c in fake.calls() if c.path == DEPLOYMENTS] == [
            {"job": first},
            {"job": second},
            {"job": third},
        ]


# --- i: a fleet rollout: each host reports its own deploy ---------------------------------------------------


@pytest.fixture
def host_b(host, images, tmp_path) -> Iterator[Deployer]:
    """A second host of the fleet: a deployer of its own (chains, state, containers) on this machine. Set up
    before `serve`, so its server is killed before it is removed."""
    (tmp_path / "host-b").mkdir()
    with owned_deployer(tmp_path / "host-b") as instance:
        yield instance


@pytest.fixture
def controller(host, images, tmp_path) -> Iterator[Deployer]:
    """The fleet's controller: a deployer with no app of its own; its chain prefix is the test's all the same."""
    (tmp_path / "controller").mkdir()
    with owned_deployer(tmp_path / "controller") as instance:
        yield instance


def fleet_key(folder: Path) -> Path:
    """A host's own secret for the controller's operator key `fleet`."""
    folder.mkdir(exist_ok=True)
    path = folder / "fleet.secret"
    path.write_text(secrets.token_hex(24) + "\n")
    path.chmod(0o600)
    return path


def controller_worker(controller: Deployer, hosts: dict[str, tuple[Served, Path]]) -> subprocess.Popen:
    """The controller's config ([fleet], one host at a time, no bake) and its worker, which runs the rollouts."""
    listed = "".join(
        f'[[fleet.hosts]]\nname = "{name}"\nurl = "{served.url}"\nkey_id = "fleet"\nsecret_file = "{key}"\n\n'
        for name, (served, key) in hosts.items()
    )
    controller.configure(
        settings=(
            '[server]\njob_timeout = 300\nuser = "root"\n\n'
            '[fleet]\napps = ["web"]\nmax_parallel = 1\nbake = 0\nhost_timeout = 60\n\n' + listed
        )
    )
    with open(controller.root / "worker.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "deployer", "-c", str(controller.config_path), "worker"],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM a process group we started, then SIGKILL what is left of it."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_a_fleet_rollout_is_reported_by_each_host_in_its_own_environment(host_b, controller, serve, tmp_path):
    with FakeGithubApi() as fake:
        hosts: dict[str, tuple[Served, Path]] = {}
        tokens: dict[str, str] = {}
        for name, on, port in (("host-a", None, 22690), ("host-b", host_b, 22695)):
            folder = tmp_path / f"{name}-secrets"
            key = fleet_key(folder)
            tokens[name], path = token_file(folder)  # each host's own token: its own report loop sends its calls
            served = serve(
                reported_app(port, f'github_environment = "production/{name}"\n'),
                server=github_server(fake, path)
                + f'[server.operators.fleet]\nsecret_file = "{key}"\nscope = "fleet"\napps = ["web"]\n',
                on=on,
            )
            feed_started(served)
            hosts[name] = (served, key)
        worker = controller_worker(controller, hosts)
        try:
            rolled = controller.cli("rollout", "web", "v1", "--wait", timeout=120)
            assert rolled.returncode == 0, rolled.stdout + rolled.stderr + (controller.root / "worker.log").read_text()
        finally:
            stop_group(worker)
        rollout = next(w for w in rolled.stdout.splitlines()[0].split() if w.startswith("job-"))
        assert [served_version(port) for port in (22690, 22695)] == ["v1", "v1"]
        wait_for("each host's success", lambda: len(fake.delivered()) == 8, timeout=20, seen=fake.delivered)
        time.sleep(1.5)

        # One deployment per host, in its own environment, one host after the other; the controller reports none.
        deployments = fake.deployments()
        assert [(d["ref"], d["environment"]) for d in deployments] == [
            ("v1", "production/host-a"),
            ("v1", "production/host-b"),
        ]
        calls = fake.calls()
        assert all(c.delivered for c in calls), [c.short() for c in calls if not c.delivered]
        for deployment, (name, (served, _)) in zip(deployments, hosts.items(), strict=True):
            environment = f"production/{name}"
            mine = [
                c
                for c in calls
                if c.short()[3] == environment or c.path == f"{DEPLOYMENTS}/{deployment['id']}/statuses"
            ]
            assert [c.short() for c in mine] == reported(
                "v1",
                deployment["id"],
                ("queued", "v1 is queued"),
                ("in_progress", "deploying v1"),
                ("success", "v1 is live"),
                environment=environment,
            ), name
            assert {c.headers["Authorization"] for c in mine} == {f"Bearer {tokens[name]}"}, name
            # The host's job of this rollout is the deployment's.
            [job] = [j for j in served.queue().jobs.jobs(app="web") if j.source.get("rollout") == rollout]
            assert deployment["payload"] == {"job": job.id}, name
