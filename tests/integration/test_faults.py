"""The host's own faults, real and undone by each test: a full state folder, a registry that went away, a
Docker daemon that stops answering.

Each fault is injected by the test (a tmpfs of its own, a registry of its own on another port, a socket of its
own in front of the daemon, each stopped by its pid) and undone in `finally`. The shared dockerd and the shared
registry on :5000 are never stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import requests

from deployer.queue.model import FINISHED
from support.fake_github import free_port
from support.integration import IMAGE, run
from support.load import TRAFFIC
from support.own_registry import audit_events, own_registry
from support.served import served_version, web_app

pytestmark = pytest.mark.integration


def wait_for_health(served, part: str, wanted, timeout: float = 15) -> float:
    """Seconds until the signed /healthz names `part` in the wanted state."""
    started = time.monotonic()
    while True:
        state = served.signed("GET", "/healthz").json().get(part)
        if isinstance(state, str) and wanted(state):
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"/healthz says {part}: {state!r}"
        time.sleep(0.2)


def iso_seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def test_a_release_delivered_while_the_registry_is_down_deploys_when_it_is_back(serve, images, tmp_path):
    port = free_port()
    image = f"127.0.0.1:{port}/deployer-faults"
    with own_registry(tmp_path / "registry", port) as registry:
        for tag in ("v1", "v2"):
            assert run(["docker", "tag", f"{IMAGE}:{tag}", f"{image}:{tag}"]).returncode == 0
            pushed = run(["docker", "push", f"{image}:{tag}"])
            assert pushed.returncode == 0, pushed.stderr
        client = None
        try:
            served = serve(web_app(22300).replace(f'image = "{IMAGE}"', f'image = "{image}"'))
            first = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode())
            assert served.wait(first.json()["job"])["status"] == "succeeded"
            wait_for_health(served, "registry", lambda state: state == "ok")
            out = tmp_path / "traffic.jsonl"
            client = subprocess.Popen(
                [
                    sys.executable,
                    TRAFFIC,
                    "http-new",
                    "127.0.0.1:22300",
                    "--out",
                    str(out),
                    "--pause",
                    "0.01",
                    "--timeout",
                    "5",
                    "--duration",
                    "120",
                ]
            )
            registry["stop"]()
            down = f"registry 127.0.0.1:{port}: "
            wait_for_health(served, "registry", lambda state: state.startswith(down))
            answer = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v2"}).encode())
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job"]
            deadline = time.monotonic() + 40
            # Four tries: the next wait is 4 to 8 s, longer than the worker's checks take to see the registry back.
            while len([e for e in audit_events(served, "job.waiting") if e.get("job") == job_id]) < 4:
                assert time.monotonic() < deadline, served.job(job_id)
                time.sleep(0.2)
            assert served_version(22300) == "v1"  # traffic stays where it was
            assert served.job(job_id)["status"] in ("queued", "running")
            registry["start"]()
            wait_for_health(served, "registry", lambda state: state == "ok")
            job = served.wait(job_id, timeout=60)
            assert (job["status"], job["reason"]) == ("succeeded", "v2 is live on green"), job
            time.sleep(1.0)
            client.send_signal(signal.SIGTERM)
            client.wait(timeout=15)
            records = [json.loads(line) for line in out.read_text().splitlines()]
            failed = [r for r in records if not r.get("ok")]
            assert len(records) > 100 and failed == [], failed[:5]  # zero downtime throughout
            assert served_version(22300) == "v2"
            waits = [e for e in audit_events(served, "job.waiting") if e.get("job") == job_id]
            assert waits and all(e["fault"] == "registry" for e in waits)
            # Woken when the worker saw the registry back, not left to the end of its last wait.
            last = waits[-1]
            started = [e for e in audit_events(served, "job.started") if e.get("job") == job_id][-1]
            woke_after = iso_seconds(started["ts"]) - iso_seconds(last["ts"])
            assert woke_after < last["retry_in"], (woke_after, last["retry_in"])
        finally:
            if client is not None and client.poll() is None:
                client.kill()
                client.wait(timeout=5)
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
            response = served.signed(
                "POST", "/deploy", json.dumps({"app": "web", "tag": "v2", "reason": f"fill {n}"}).encode()
            )
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
        while any(
            queue.jobs.get(job_id).status not in ("succeeded", "superseded", "skipped", "failed") for job_id in accepted
        ):
            assert time.monotonic() < deadline, [queue.jobs.get(j).status for j in accepted]
            time.sleep(0.5)
        assert served.process.poll() is None
        statuses = {queue.jobs.get(job_id).status for job_id in accepted}
        assert "failed" not in statuses and "succeeded" in statuses, statuses
        assert served_version(22320) == "v2"
        queued = {e["job"] for e in audit_events(served, "job.queued")}
        assert set(accepted) <= queued  # every 202 has its job.queued record
        assert {j.id for j in queue.jobs.jobs()} >= set(accepted)
        verified = deployer.cli("audit", "verify")
        assert verified.returncode == 0, verified.stdout + verified.stderr


@contextlib.contextmanager
def docker_socket() -> Iterator[dict]:
    """A socket of the test's own in front of the shared daemon (socat): stopping it by its pid is, for the
    deployer pointed at it, a daemon that stops answering; the shared dockerd, which every other test uses,
    is never stopped."""
    folder = Path(tempfile.mkdtemp(prefix="dsock-", dir="/tmp"))
    path = folder / "docker.sock"
    state: dict = {"process": None, "url": f"unix://{path}"}

    def start() -> None:
        state["process"] = subprocess.Popen(
            ["socat", f"UNIX-LISTEN:{path},fork,unlink-early", "UNIX-CONNECT:/var/run/docker.sock"],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not path.exists():
            assert time.monotonic() < deadline, "socat did not listen"
            time.sleep(0.05)

    def stop() -> None:
        process = state["process"]
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
            process.wait(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        state["process"] = None

    state.update(start=start, stop=stop)
    start()
    try:
        yield state
    finally:
        stop()
        shutil.rmtree(folder, ignore_errors=True)


def health(served) -> dict:
    response = served.signed("GET", "/healthz")
    assert response.status_code in (200, 503), response.text
    return response.json()


def wait_for(what, check, timeout: float) -> float:
    """Seconds until `check()` is true; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_a_release_delivered_while_docker_does_not_answer_deploys_with_zero_downtime_when_it_does(serve, tmp_path):
    with docker_socket() as daemon:
        served = serve(web_app(22340, drain=1.0), settings=f'docker_host = "{daemon["url"]}"')
        first = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode())
        assert served.wait(first.json()["job"])["status"] == "succeeded"
        wait_for("docker ok", lambda: health(served)["docker"] == "ok", 15)

        out = tmp_path / "traffic.jsonl"
        client = subprocess.Popen(
            [
                sys.executable,
                TRAFFIC,
                "http-new",
                "127.0.0.1:22340",
                "--out",
                str(out),
                "--pause",
                "0.01",
                "--timeout",
                "5",
                "--duration",
                "120",
            ]
        )
        try:
            daemon["stop"]()
            wait_for("docker reported down", lambda: health(served)["docker"] != "ok", 15)
            assert requests.get(f"{served.url}/healthz", timeout=5).json() == {"status": "degraded"}
            status = served.deployer.cli("status")
            # 69, EX_UNAVAILABLE: the daemon does not answer (a fault of another part would be 1)
            assert status.returncode == 69 and "fault docker:" in status.stdout, status.stdout + status.stderr

            answer = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v2"}).encode())
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job"]
            wait_for(
                "job.waiting", lambda: [e for e in audit_events(served, "job.waiting") if e.get("job") == job_id], 20
            )
            # The job is queued between its tries and running during one, so status is asked until it finds the job
            # queued (a loaded host can take seconds to start the CLI, long enough for the next try to claim it).
            wait_for(
                "status shows the waiting job",
                lambda: f"waiting: {job_id} (web v2" in served.deployer.cli("status").stdout,
                20,
            )
            assert served_version(22340) == "v1"

            daemon["start"]()
            wait_for("docker reported up", lambda: health(served)["docker"] == "ok", 15)
            wait_for("deployed", lambda: served.job(job_id)["status"] in FINISHED, 60)
            job = served.job(job_id)
            assert (job["status"], job["reason"]) == ("succeeded", "v2 is live on green"), job
            time.sleep(1.0)
        finally:
            client.send_signal(signal.SIGTERM)
            client.wait(timeout=15)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        failed = [r for r in records if not r.get("ok")]
        assert len(records) > 100 and failed == [], failed[:5]
        assert served_version(22340) == "v2"
        waits = [e for e in audit_events(served, "job.waiting") if e.get("job") == job_id]
        assert waits and {e["fault"] for e in waits} == {"docker"}
        assert [e["outcome"] for e in audit_events(served, "worker.fault") if e.get("fault") == "docker"][:2] == [
            "failed",
            "ok",
        ]


def test_a_fault_that_outlasts_the_job_timeout_fails_the_job_and_runs_on_failure(serve):
    with docker_socket() as daemon:
        served = serve(web_app(22360), settings=f'docker_host = "{daemon["url"]}"')
        first = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode())
        assert served.wait(first.json()["job"])["status"] == "succeeded"
        marker = served.deployer.root / "on-failure.out"
        served.deployer.hook("on-failure", f'echo "$DEPLOYER_TAG $DEPLOYER_ERROR" > {marker}\n')
        served.kill()
        served.deployer.config_path.write_text(
            served.deployer.config_path.read_text().replace("job_timeout = 300", "job_timeout = 6")
        )
        served.start()
        daemon["stop"]()
        answer = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v2"}).encode())
        assert answer.status_code == 202, answer.text
        job = served.wait(answer.json()["job"], timeout=60)
        assert job["status"] == "failed", job
        assert job["reason"].startswith("gave up after ") and "over 6 s: " in job["reason"], job["reason"]
        assert "does not answer" in job["reason"]
        assert marker.read_text().startswith("v2 "), "on-failure did not run"
        assert [e["fault"] for e in audit_events(served, "job.failed") if e.get("job") == job["id"]] == ["docker"]
        daemon["start"]()
        assert served_version(22360) == "v1"  # traffic stayed where it was
