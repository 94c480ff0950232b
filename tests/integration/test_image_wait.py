"""A GitHub release delivered before its image is pushed: it waits for the image and deploys under live traffic;
a tag that never appears fails after `image_wait`, and GitHub's redelivery of that delivery, once the image is
pushed, deploys it. Each test runs a registry of its own (tests/support/own_registry.py) and pushes to it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest

from support.fake_github import free_port
from support.integration import IMAGE, run
from support.load import TRAFFIC
from support.own_registry import audit_events, own_registry, push
from support.served import release_payload, served_version, web_app

pytestmark = pytest.mark.integration


def wait_for(what: str, condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.2)


def job_events(served, name: str, job_id: str) -> list[dict]:
    return [e for e in audit_events(served, name) if e.get("job") == job_id]


def test_a_release_delivered_before_its_image_deploys_once_the_image_is_pushed(serve, images, tmp_path):
    port = free_port()
    image = f"127.0.0.1:{port}/deployer-image-wait"
    client = None
    with own_registry(tmp_path / "registry", port):
        try:
            push(image, "v1")
            served = serve(web_app(22400).replace(f'image = "{IMAGE}"', f'image = "{image}"'))
            first = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode())
            assert served.wait(first.json()["job"])["status"] == "succeeded"
            out = tmp_path / "traffic.jsonl"
            client = subprocess.Popen(
                [sys.executable, TRAFFIC, "http-new", "127.0.0.1:22400", "--out", str(out)]
                + ["--pause", "0.01", "--timeout", "5", "--duration", "120"]
            )
            delivered_at = time.monotonic()
            answer = served.deliver(release_payload("v2"))
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job"]
            wait_for("job.waiting", lambda: job_events(served, "job.waiting", job_id), 10)
            # Between two looks the job is queued, waiting on `image`; during a look it runs for a moment.
            shown = f"fault image: a release waits for its image to appear in the registry; waiting: {job_id} (web v2"
            wait_for("the wait in `status`", lambda: shown in served.deployer.cli("status").stdout, 15)
            time.sleep(max(0.0, 6 - (time.monotonic() - delivered_at)))
            assert served_version(22400) == "v1"  # traffic stays where it was while the job waits
            push(image, "v2")
            pushed_at = time.monotonic()
            job = served.wait(job_id, timeout=40)
            assert (job["status"], job["reason"]) == ("succeeded", "v2 is live on green"), job
            # The looks come 1, 2, 4, then 5 s apart: the one after a push at ~6 s is at ~7 s, never past 5 s later.
            assert time.monotonic() - pushed_at < 30
            time.sleep(1.0)
            client.send_signal(signal.SIGTERM)
            client.wait(timeout=15)
            records = [json.loads(line) for line in out.read_text().splitlines()]
            failed = [r for r in records if not r.get("ok")]
            assert len(records) > 100 and failed == [], failed[:5]  # zero downtime throughout
            assert served_version(22400) == "v2"
            waits = job_events(served, "job.waiting", job_id)
            assert len(waits) >= 2 and all(e["fault"] == "image" for e in waits), waits
            assert all(e["image"] == f"{image}:v2" for e in waits)
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait(timeout=5)
            for tag in ("v1", "v2"):
                run(["docker", "rmi", "-f", f"{image}:{tag}"])


def test_a_tag_that_never_appears_fails_after_image_wait_and_its_redelivery_deploys_it(serve, images, tmp_path):
    port = free_port()
    image = f"127.0.0.1:{port}/deployer-image-wait"
    with own_registry(tmp_path / "registry", port):
        try:
            push(image, "v1")
            app = web_app(22420, extra='image_wait = "3s"')
            served = serve(app.replace(f'image = "{IMAGE}"', f'image = "{image}"'))
            first = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode())
            assert served.wait(first.json()["job"])["status"] == "succeeded"
            body, delivery = release_payload("v2"), str(uuid.uuid4())
            answer = served.deliver(body, delivery=delivery)
            assert answer.status_code == 202, answer.text
            failed_id = answer.json()["job"]
            started = time.monotonic()
            failed = served.wait(failed_id, timeout=30)
            assert failed["status"] == "failed", failed
            assert failed["reason"].startswith(f"the image {image}:v2 did not appear in 3s (waited since "), failed
            assert 2.5 < time.monotonic() - started < 20
            assert served_version(22420) == "v1"
            assert [e["fault"] for e in job_events(served, "job.failed", failed_id)] == ["image"]

            push(image, "v2")
            again = served.deliver(body, delivery=delivery)  # GitHub's "Redeliver": the same id, body and signature
            assert again.status_code == 202, again.text
            retry_id = again.json()["job"]
            assert retry_id != failed_id
            assert again.json()["reason"] == f"release v2 failed in {failed_id}; queued again as a retry"
            assert served.job(retry_id)["source"]["retry_of"] == failed_id
            assert [e.get("retry_of") for e in job_events(served, "job.queued", retry_id)] == [failed_id]
            job = served.wait(retry_id, timeout=40)
            assert (job["status"], job["reason"]) == ("succeeded", "v2 is live on green"), job
            assert served_version(22420) == "v2"
            duplicate = served.deliver(body, delivery=delivery)  # succeeded now: the first answer again
            assert (duplicate.status_code, duplicate.json()["job"]) == (200, retry_id)
        finally:
            for tag in ("v1", "v2"):
                run(["docker", "rmi", "-f", f"{image}:{tag}"])
