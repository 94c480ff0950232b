"""The host's own faults, real and undone by each test: a full state folder, a registry that went away.

Each fault is injected by the test (a tmpfs of its own, a registry of its own on another port, stopped by
its pid) and undone in `finally`. The shared dockerd and the shared registry on :5000 are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from conftest import IMAGE, run
from test_server import serve, served_version, web_app  # noqa: F401 - the serve fixture

from deployer.audit import AuditLog, Query
from support.fake_github import free_port

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def own_registry(folder: Path, port: int) -> Iterator[dict]:
    """Debian's docker-registry on 127.0.0.1:<port> with its own storage; `handle["stop"]()` / `["start"]()`."""
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = folder / "config.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {storage}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")
    state: dict = {"process": None}

    def start() -> None:
        state["process"] = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                                            stderr=open(folder / "registry.log", "a"), stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError("the test's registry did not start")

    def stop() -> None:
        process = state["process"]
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)  # by its own pid: never by name
            process.wait(timeout=10)
        state["process"] = None

    start()
    try:
        yield {"start": start, "stop": stop}
    finally:
        stop()


def audit_events(served, *names: str) -> list[dict]:
    entries = AuditLog.for_state_dir(served.deployer.root / "state").query(Query(event=names, limit=None))
    return [entry.fields for entry in entries]


def test_a_release_delivered_while_the_registry_is_down_deploys_when_it_is_back(serve, images, tmp_path):
    port = free_port()
    image = f"127.0.0.1:{port}/deployer-faults"
    with own_registry(tmp_path / "registry", port) as registry:
        for tag in ("v1", "v2"):
            assert run(["docker", "tag", f"{IMAGE}:{tag}", f"{image}:{tag}"]).returncode == 0
            pushed = run(["docker", "push", f"{image}:{tag}"])
            assert pushed.returncode == 0, pushed.stderr
        try:
            served = serve(web_app(22300).replace(f'image = "{IMAGE}"', f'image = "{image}"'))
            first = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode())
            assert served.wait(first.json()["job"])["status"] == "succeeded"
            registry["stop"]()
            answer = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v2"}).encode())
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job"]
            deadline = time.monotonic() + 30
            while not [e for e in audit_events(served, "job.waiting") if e.get("job") == job_id]:
                assert time.monotonic() < deadline, served.job(job_id)
                time.sleep(0.2)
            assert served_version(22300) == "v1"  # traffic stays where it was
            assert served.job(job_id)["status"] in ("queued", "running")
            registry["start"]()
            back = time.monotonic()
            job = served.wait(job_id, timeout=60)
            assert (job["status"], job["reason"]) == ("succeeded", "v2 is live on green"), job
            took = time.monotonic() - back
            assert served_version(22300) == "v2"
            waits = [e for e in audit_events(served, "job.waiting") if e.get("job") == job_id]
            assert waits and all(e["fault"] == "registry" for e in waits)
            assert took < 35, f"deployed {took:.1f} s after the registry was back"  # the backoff's 30 s cap
        finally:
            for tag in ("v1", "v2"):
                run(["docker", "rmi", "-f", f"{image}:{tag}"])


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)])
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield folder
    finally:
        run(["umount", "-l", str(folder)])


def test_a_full_state_folder_answers_503_loses_no_accepted_job_and_recovers_without_a_restart(deployer, serve, images):
    with small_tmpfs(deployer.root / "state", "16m") as state:
        served = serve(web_app(22320))
        first = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode())
        assert served.wait(first.json()["job"])["status"] == "succeeded"
        # Fill the file system but for a little: the queue and the audit log then fill it with deliveries.
        free = os.statvfs(state).f_bavail * os.statvfs(state).f_frsize
        with open(state / "filler", "wb") as filler:
            filler.write(b"\0" * max(0, free - 96 * 1024))
        answers = []
        for n in range(400):
            response = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v2",
                                                                    "reason": f"fill {n}"}).encode())
            answers.append(response)
            if sum(r.status_code == 503 for r in answers) >= 5:
                break
        codes = {r.status_code for r in answers}
        assert codes <= {202, 503} and 503 in codes, [r.text for r in answers if r.status_code not in (202, 503)]
        assert all(r.headers.get("Retry-After") for r in answers if r.status_code == 503)
        assert served.process.poll() is None  # serve lives on
        time.sleep(3)
        assert requests.get(f"{served.url}/healthz", timeout=5).status_code in (200, 503)  # gunicorn still answers

        run(["mount", "-o", "remount,size=128m", str(state)])
        accepted = [r.json()["job"] for r in answers if r.status_code == 202]
        assert accepted
        queue = served.queue()
        deadline = time.monotonic() + 90
        while any(queue.get(job_id).status not in ("succeeded", "superseded", "skipped", "failed")
                  for job_id in accepted):
            assert time.monotonic() < deadline, [queue.get(j).status for j in accepted]
            time.sleep(0.5)
        assert served.process.poll() is None
        statuses = {queue.get(job_id).status for job_id in accepted}
        assert "failed" not in statuses and "succeeded" in statuses, statuses
        assert served_version(22320) == "v2"
        queued = {e["job"] for e in audit_events(served, "job.queued")}
        assert set(accepted) <= queued  # every 202 has its job.queued record
        assert {j.id for j in queue.jobs()} >= set(accepted)
        verified = deployer.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr
