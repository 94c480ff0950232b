"""The audit trail of a full scenario on a real server: a deploy from a webhook, a manual redeploy,
a rejected delivery and a failed health gate, read back in order with their fields."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from deployer.audit import AuditLog, Query
from support.integration import IMAGE
from support.served import GITHUB_REPO, HOOK_ID, real_payload, web_app

pytestmark = pytest.mark.integration

UNHEALTHY = "v3-unhealthy"


@pytest.fixture
def unhealthy_tag(images):
    """A tag whose image fails its health check: v1 with HEALTH_STATUS=500 baked in."""
    build = subprocess.run(
        ["docker", "build", "-q", "-t", f"{IMAGE}:{UNHEALTHY}", "-"],
        input=f"FROM {IMAGE}:v1\nENV HEALTH_STATUS=500 APP_VERSION={UNHEALTHY}\n",
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    push = subprocess.run(["docker", "push", "-q", f"{IMAGE}:{UNHEALTHY}"], capture_output=True, text=True)
    assert push.returncode == 0, push.stderr
    yield UNHEALTHY
    subprocess.run(["docker", "rmi", "-f", f"{IMAGE}:{UNHEALTHY}"], capture_output=True)


def deploy_steps(*, first: bool) -> list[tuple]:
    """A successful deploy's steps; a first deploy has no old rules to tidy and no old instance to drain and stop."""
    steps = [
        ("step", "pull", "ok"),
        ("step", "start", "ok"),
        ("step", "health", "ok"),
        ("step", "flip", "ok"),
        ("step", "record", "ok"),
        ("step", "conntrack", "ok"),
    ]
    return steps if first else steps + [("step", "tidy", "ok"), ("step", "drain", "ok"), ("step", "stop", "ok")]


def test_webhook_manual_rejected_and_failed_gate_leave_the_exact_trail(serve, images, unhealthy_tag):
    images.ensure("0.0.1")  # the tag of GitHub's real payload
    # The demo app passes its gate in a fraction of a second; the unhealthy tag fails it after 2 s, not 15.
    served = serve(web_app(22150, drain=0.5, stop_timeout=3, health={"deadline": 2}))

    published = served.deliver(real_payload("release-published.payload.json"), delivery="d-1")
    assert published.status_code == 202, published.text
    webhook_job = published.json()["job"]
    assert served.wait(webhook_job)["status"] == "succeeded"

    manual = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v2", "reason": "hotfix"}).encode())
    assert manual.status_code == 202, manual.text
    manual_job = manual.json()["job"]
    assert served.wait(manual_job)["status"] == "succeeded"

    forged = requests.post(
        f"{served.url}/hooks/github",
        data=real_payload("release-published.payload.json"),
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "release",
            "X-GitHub-Delivery": "d-forged",
            "X-GitHub-Hook-ID": HOOK_ID,
            "X-Hub-Signature-256": "sha256=" + "0" * 64,
        },
        timeout=10,
    )
    assert forged.status_code == 401

    failing = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": unhealthy_tag}).encode())
    assert failing.status_code == 202, failing.text
    failing_job = failing.json()["job"]
    assert served.wait(failing_job)["status"] == "failed"

    # The forged delivery was refused before it authenticated: it has no row of its own, only a count in the
    # receiver's aggregated row, which a receiver process writes when its interval ends or when it stops.
    assert served.stop() == 0
    log = AuditLog.for_state_dir(served.deployer.root / "state")
    every = [e for e in log.query(Query(limit=None, oldest_first=True)) if e.event != "reconcile.repair"]
    [refusals] = [e for e in every if e.event == "rejected_requests"]
    assert (
        refusals.get("route"),
        refusals.get("status"),
        refusals.get("count"),
        refusals.get("reason"),
        refusals.get("source"),
    ) == ("/hooks/github", 401, 1, "X-Hub-Signature-256 does not match the body", "127.0.0.1")
    entries = [e for e in every if e.event != "rejected_requests"]
    trail = [(e.event, e.get("step"), e.get("outcome") or e.get("verdict")) for e in entries]
    # The receiver commits the job before it records the delivery with its verdict: the 202 names a job
    # that exists. The worker records its start before anything else.
    assert trail == [
        ("worker.started", None, None),
        ("job.queued", None, None),
        ("delivery", None, "queued"),
        ("job.started", None, None),
        ("deploy.started", None, None),
        *deploy_steps(first=True),
        ("deploy.finished", None, "ok"),
        ("job.finished", None, "ok"),
        ("job.queued", None, None),
        ("manual_request", None, "queued"),
        ("job.started", None, None),
        ("deploy.started", None, None),
        *deploy_steps(first=False),
        ("deploy.finished", None, "ok"),
        ("job.finished", None, "ok"),
        ("job.queued", None, None),
        ("manual_request", None, "queued"),
        ("job.started", None, None),
        ("deploy.started", None, None),
        ("step", "pull", "ok"),
        ("step", "start", "ok"),
        ("step", "health", "failed"),
        ("step", "remove-new", "ok"),
        ("deploy.failed", None, "failed"),
        ("job.failed", None, "failed"),
    ], "\n".join(map(str, trail))

    by_event = {}
    for entry in entries:
        by_event.setdefault(entry.event, []).append(entry)
    [accepted] = by_event["delivery"]
    assert (
        accepted.get("delivery"),
        accepted.get("repository"),
        accepted.get("sender"),
        accepted.get("tag"),
        accepted.get("action"),
    ) == ("d-1", GITHUB_REPO, "Codertocat", "0.0.1", "published")
    assert len(accepted.get("body_sha256")) == 64 and accepted.get("remote_addr") == "127.0.0.1"
    first_manual = by_event["manual_request"][0]
    assert (first_manual.get("key_id"), first_manual.get("app"), first_manual.get("tag")) == ("ops", "web", "v2")
    assert first_manual.get("nonce") and first_manual.get("timestamp")

    jobs = [e.get("job") for e in entries if e.event.startswith(("job.", "deploy.")) or e.event == "step"]
    assert set(jobs) == {webhook_job, manual_job, failing_job}
    actors = {e.get("job"): e.get("actor") for e in entries if e.event == "deploy.started"}
    assert actors[webhook_job].startswith("github:Codertocat")
    assert actors[manual_job] == actors[failing_job] == "key:ops"
    failed = by_event["deploy.failed"][0]
    assert (failed.get("tag"), failed.get("error_type")) == (unhealthy_tag, "HealthCheckFailed")
    assert log.verify().ok
