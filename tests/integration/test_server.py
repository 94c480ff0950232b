"""`deployer serve` end to end: gunicorn on loopback, the real worker, engine, registry and netfilter.

Deliveries are GitHub's real payloads (tests/fixtures/github/), signed the way GitHub signs
them; manual requests are signed with an operator key by the `deployer redeploy` client. Every
server a test starts is SIGKILLed (its whole process group) in teardown.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from deployer.audit import AuditLog, Query
from deployer.queue.queue import Queue
from support.fake_github import FakeGitHub, free_port
from support.integration import IMAGE, REPO
from support.load import TRAFFIC
from support.served import (
    GITHUB_REPO,
    Served,
    claimed_ping,
    gunicorn_master,
    real_payload,
    release_payload,
    served_version,
    web_app,
)

pytestmark = pytest.mark.integration


def assert_no_secret_anywhere(served: Served, *more: str) -> None:
    """Grep every log and every file of the state folder (databases included) for each secret."""
    values = [served.github_secret, served.operator_secret, *more]
    places = [*served.logs, *(p for p in (served.deployer.root / "state").rglob("*") if p.is_file())]
    assert places
    for place in places:
        data = place.read_bytes()
        for value in values:
            assert value.encode() not in data, f"a secret is in {place}"


# --- a release under load -------------------------------------------------------------------------


def test_a_signed_published_release_deploys_with_zero_failed_requests(serve, images, tmp_path):
    images.ensure("0.0.1")  # the tag of GitHub's real payload
    served = serve(web_app(22100, drain=2.0, stop_timeout=6))
    first = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v1"}).encode())
    assert first.status_code == 202, first.text
    assert served.wait(first.json()["job"])["status"] == "succeeded"
    assert served_version(22100) == "v1"

    out = tmp_path / "traffic"
    out.mkdir()
    clients = [
        subprocess.Popen(
            [
                sys.executable,
                TRAFFIC,
                mode,
                "127.0.0.1:22100",
                "--out",
                str(out / f"{mode}.jsonl"),
                "--pause",
                "0.005",
                "--timeout",
                "5",
                "--duration",
                "120",
            ]
        )
        for mode in ("http-new", "http-keepalive")
    ]
    try:
        time.sleep(1.0)
        published = served.deliver(real_payload("release-published.payload.json"), delivery="d-published")
        assert published.status_code == 202, published.text
        job_id = published.json()["job"]
        assert published.json() == {
            "status": "queued",
            "job": job_id,
            "app": "web",
            "tag": "0.0.1",
            "reason": "queued",
            "url": f"/jobs/{job_id}",
        }
        # GitHub sends 'released' for the same release, and may redeliver: neither deploys again.
        released = served.deliver(real_payload("release-released.json"), delivery="d-released")
        again = served.deliver(real_payload("release-published.payload.json"), delivery="d-published")
        assert (released.status_code, released.json()["job"]) == (200, job_id)
        assert (again.status_code, again.json()["job"]) == (200, job_id)
        job = served.wait(job_id)
        assert (job["status"], job["reason"]) == ("succeeded", "0.0.1 is live on green"), job
        time.sleep(1.0)
    finally:
        for client in clients:
            client.send_signal(signal.SIGTERM)
        for client in clients:
            client.wait(timeout=15)

    records = [json.loads(line) for path in out.glob("*.jsonl") for line in path.read_text().splitlines()]
    failed = [r for r in records if not r.get("ok")]
    assert len(records) > 200 and failed == [], failed[:5]
    versions = [r["version"] for r in sorted(records, key=lambda r: r["t"])]
    assert versions[0] == "v1" and versions[-1] == "0.0.1"
    assert served_version(22100) == "0.0.1"

    steps = [(s["name"], s["outcome"]) for s in job["steps"] if s["outcome"] != "running"]
    assert ("pull", "ok") in steps and ("flip", "ok") in steps and steps[-1] == ("job.finished", "ok")
    assert job["actor"] == "github:Codertocat (delivery d-published)"
    assert len(served.queue().jobs.jobs()) == 2
    assert_no_secret_anywhere(served)


# --- manual redeploys -------------------------------------------------------------------------------


def test_the_redeploy_client_deploys_a_tag_and_redeploys_the_active_release(serve):
    served = serve(web_app(22110))
    first = served.redeploy("web", "v2", "--reason", "first deploy", "--wait")
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines()[0].startswith("web: queued job-")
    assert "  flip ok" in first.stdout and first.stdout.rstrip().endswith("web: succeeded: v2 is live on blue")
    assert served_version(22110) == "v2"

    again = served.redeploy("web", "--wait")  # no tag: the active release, on the other set
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.rstrip().endswith("web: succeeded: v2 is live on green")
    assert served_version(22110) == "v2"
    assert [j.actor for j in served.queue().jobs.jobs()] == ["key:ops", "key:ops"]

    refused = served.redeploy("web", "$(id)")
    assert refused.returncode == 65  # EX_DATAERR: the server refused the request
    assert refused.stderr.startswith("deployer: the server refused the request (422): ")
    assert len(served.queue().jobs.jobs()) == 2
    assert_no_secret_anywhere(served)


# --- duplicates and superseding ---------------------------------------------------------------------


def test_waiting_releases_are_superseded_by_the_newest(serve):
    served = serve(web_app(22120))
    served.deployer.hook("pre-deploy", "sleep 3\n")  # holds the first deploy while the others queue
    running = served.deliver(release_payload("v1")).json()["job"]
    served.wait(running, {"running"})
    skipped_over = served.deliver(release_payload("v9")).json()["job"]  # no such image: it must never run
    newest = served.deliver(release_payload("v2")).json()["job"]
    assert len({running, skipped_over, newest}) == 3

    assert served.wait(newest)["status"] == "succeeded"
    assert served.wait(running)["status"] == "succeeded"
    old = served.wait(skipped_over)
    assert (old["status"], old["superseded_by"]) == ("superseded", newest)
    assert old["reason"] == f"superseded by {newest} (v2), which was queued later"
    assert old["steps"] == [] and old["started_at"] is None
    assert served_version(22120) == "v2"

    late = served.deliver(release_payload("v9", action="released"))
    assert (late.status_code, late.json()["job"]) == (200, skipped_over)
    assert late.json()["reason"] == f"release v9 was superseded by {newest}; redeploy it with POST /deploy"
    active = served.deliver(release_payload("v2", action="released"))
    assert (active.status_code, active.json()["job"]) == (200, newest)
    assert len(served.queue().jobs.jobs()) == 3


def test_a_newer_release_that_fails_leaves_the_newest_good_one_live(serve):
    """9.9.9 (published last, its image never pushed) is held running; v2 and a late v1 arrive meanwhile and wait
    behind it; 9.9.9 fails once its image wait is over, v2 runs and goes live, v1 never deploys; a later delivery
    of a release older than v2 is refused. The audit log says why for each."""
    served = serve(web_app(22125, extra='image_wait = "2s"'))
    served.deployer.hook("pre-deploy", "sleep 2\n")  # holds 9.9.9 while the others arrive
    at = {"9.9.9": "2026-03-01T10:00:00Z", "v2": "2026-02-03T10:00:00Z", "v1": "2026-02-02T10:00:00Z"}
    broken = served.deliver(release_payload("9.9.9", published_at=at["9.9.9"])).json()["job"]
    served.wait(broken, {"running"})
    good = served.deliver(release_payload("v2", published_at=at["v2"]))
    late = served.deliver(release_payload("v1", published_at=at["v1"]))
    for answer, tag in ((good, "v2"), (late, "v1")):
        assert answer.status_code == 202, answer.text
        assert answer.json()["reason"] == (
            f"release {tag} (published {at[tag]}) waits behind release 9.9.9 (published {at['9.9.9']}), "
            f"which is running; it runs only if that one fails"
        )
    good, late = good.json()["job"], late.json()["job"]

    failed = served.wait(broken)
    assert failed["status"] == "failed" and "9.9.9" in failed["reason"], failed  # the tag was never pushed
    assert served.wait(good)["status"] == "succeeded"
    assert served_version(22125) == "v2"
    never = served.wait(late)
    assert (never["status"], never["superseded_by"], never["started_at"]) == ("superseded", good, None)
    assert (
        never["reason"]
        == f"release v1 (published {at['v1']}) is older than release v2 (published {at['v2']}), which is live"
    )

    older = served.deliver(release_payload("v0", published_at="2026-02-01T10:00:00Z"))
    assert (older.status_code, older.json()["status"], older.json()["job"]) == (200, "older", good)
    assert "which is live; deploy it on purpose with POST /deploy" in older.json()["reason"]
    jobs = served.queue().jobs.jobs()
    assert [(j.tag, j.status) for j in jobs] == [("9.9.9", "failed"), ("v2", "succeeded"), ("v1", "superseded")]

    log = AuditLog.for_state_dir(served.deployer.root / "state")
    entries = log.query(Query(limit=None, oldest_first=True))
    log.close()
    why = {
        (e.get("event"), e.get("job") if e.get("event") == "job.failed" else e.get("tag"), e.get("verdict")): e.get(
            "reason"
        )
        for e in entries
        if e.get("event") in ("delivery", "job.failed", "job.superseded")
    }
    assert "waits behind release 9.9.9" in why[("delivery", "v2", "waiting")]
    assert "waits behind release 9.9.9" in why[("delivery", "v1", "waiting")]
    assert why[("job.failed", broken, None)] == failed["reason"]
    assert "is older than release v2" in why[("job.superseded", "v1", None)]
    assert "is older than release v2" in why[("delivery", "v0", "older")]


# --- SIGKILL and restart ------------------------------------------------------------------------------


def test_sigkill_of_server_and_worker_loses_no_accepted_job(serve):
    served = serve(web_app(22130))
    served.deployer.hook("pre-deploy", "sleep 2\n")
    interrupted = served.deliver(release_payload("v1")).json()["job"]
    served.wait(interrupted, {"running"})
    accepted = [interrupted]
    for tag in ("v9", "v8"):
        response = served.deliver(release_payload(tag))
        assert response.status_code == 202
        accepted.append(response.json()["job"])
    manual = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": "v2"}).encode())
    assert manual.status_code == 202
    accepted.append(manual.json()["job"])

    served.kill()  # mid-deploy: serve, gunicorn and the job's process all at once
    assert {j.status for j in served.queue().jobs.jobs()} == {"running", "queued"}

    served.start()
    finished = {job_id: served.wait(job_id) for job_id in accepted}
    assert set(finished) == {j.id for j in served.queue().jobs.jobs()}  # nothing lost, nothing extra
    assert finished[accepted[3]]["status"] == "succeeded"
    for job_id in accepted[:3]:
        assert (finished[job_id]["status"], finished[job_id]["superseded_by"]) == ("superseded", accepted[3])
    interrupted_steps = [(s["name"], s["outcome"]) for s in finished[interrupted]["steps"]]
    assert ("interrupted", "requeued") in interrupted_steps  # it shows why it did not run to its end
    assert served_version(22130) == "v2"
    status = served.deployer.cli("status", "web")
    assert "rules match" in status.stdout, status.stdout + status.stderr
    assert len(served.deployer.containers("web")) == 1


# --- the bad-input table over real HTTP ---------------------------------------------------------------


def raw_request(port: int, head: str) -> str:
    """Send only a request head (no body) and read the answer: what a body-less refusal looks like."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer.decode(errors="replace")


def test_refusals_over_gunicorn(serve):
    served = serve(web_app(22140))
    body = real_payload("release-published.payload.json")
    unsigned = requests.post(
        f"{served.url}/hooks/github",
        data=body,
        timeout=10,
        headers={"Content-Type": "application/json", "X-GitHub-Event": "release", "X-GitHub-Delivery": "d-1"},
    )
    assert (unsigned.status_code, unsigned.json()) == (401, {"error": "missing X-Hub-Signature-256 header"})
    # A 100 MB body is refused from its Content-Length, without the server waiting for it.
    answer = raw_request(
        served.port,
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
    )
    assert answer.startswith("HTTP/1.1 413 ") and "the limit is 65536" in answer
    assert served.deliver(b"{broken").status_code == 400
    assert requests.get(f"{served.url}/hooks/github", timeout=10).status_code == 405
    assert served.signed("POST", "/deploy", json.dumps({"app": "nope"}).encode()).status_code == 404
    assert served.queue().jobs.jobs() == []
    log = served.log_text()
    assert "verdict=rejected" in log  # the signed broken body; the unsigned one is counted, not logged alone


# --- slow clients, floods and a gunicorn that dies -----------------------------------------------------


def drip_connections(port: int, count: int, stop: threading.Event) -> list[socket.socket]:
    """`count` connections that send a delivery's head one byte a second, until `stop` or the server closes them."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(count)]
    head = b"POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: " + b"a" * 600

    def drip() -> None:
        for n in range(len(head)):
            for sock in sockets:
                with contextlib.suppress(OSError):
                    sock.send(head[n : n + 1])
            if stop.wait(1.0):
                return

    threading.Thread(target=drip, daemon=True).start()
    return sockets


def test_dripping_clients_do_not_delay_a_delivery(serve):
    served = serve(web_app(22170))
    stop = threading.Event()
    slow = drip_connections(served.port, 50, stop)
    try:
        time.sleep(2)  # each dripper has sent its first bytes: the sync worker would be stuck behind them
        for n in range(5):
            started = time.monotonic()
            answer = served.deliver(claimed_ping(), event="ping")
            took = time.monotonic() - started
            assert (answer.status_code, answer.json()["status"]) == (200, "pong")
            assert took < 1.0, f"delivery {n} took {took:.2f} s beside 50 dripping clients"
            time.sleep(0.5)
    finally:
        stop.set()
        for sock in slow:
            sock.close()


def test_an_unsigned_flood_adds_few_rows_and_a_signed_delivery_in_it_is_served(serve):
    served = serve(web_app(22180))
    body = real_payload("release-published.payload.json")
    log = AuditLog.for_state_dir(served.deployer.root / "state")
    before = len(log.query(Query(limit=None)))
    session = requests.Session()
    answers: dict[int, int] = {}
    for n in range(600):
        if n == 300:
            signed = served.deliver(release_payload("v1"))
            assert signed.status_code == 202, signed.text
            continue
        response = session.post(
            f"{served.url}/hooks/github",
            data=body,
            timeout=10,
            headers={
                "Content-Type": "application/json",
                "X-GitHub-Event": "release",
                "X-GitHub-Delivery": f"flood-{n}",
                "X-Hub-Signature-256": "sha256=0",
            },
        )
        answers[response.status_code] = answers.get(response.status_code, 0) + 1
    assert set(answers) <= {401, 429} and answers.get(429, 0) > 0
    assert "Retry-After" in response.headers
    entries = log.query(Query(limit=None, oldest_first=True))
    log.close()
    written = entries[before:]
    deliveries = [e for e in written if e.get("event") == "delivery"]
    assert [(e.get("verdict"), e.get("status")) for e in deliveries] == [("queued", 202)]  # the signed one only
    assert len(written) < 60, [e.get("event") for e in written]  # its job's records; no row per refusal


def test_serve_starts_gunicorn_again_when_it_is_killed(serve):
    served = serve(web_app(22190))
    first = gunicorn_master(served.process.pid)
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        again = gunicorn_master(served.process.pid)
        try:
            if again not in (None, first) and requests.get(f"{served.url}/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"gunicorn was not started again:\n{served.log_text()[-3000:]}"
        time.sleep(0.2)
    assert served.process.poll() is None  # the worker ran on
    assert "gunicorn exited with status -9; starting it again in 1 s" in served.log_text()
    answer = served.deliver(claimed_ping(), event="ping")
    assert answer.status_code == 200


# --- an image from a release asset ----------------------------------------------------------------------


def test_an_image_from_a_release_asset(serve, images, tmp_path):
    archive = tmp_path / "image.tar"
    tag = f"asset-{secrets.token_hex(3)}"  # never pushed: only the asset can provide it
    source = f"{IMAGE}:{tag}"  # v2 under the release's own tag, the one name an asset may carry
    pulled = subprocess.run(["docker", "pull", "-q", f"{IMAGE}:v2"], capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    subprocess.run(["docker", "tag", f"{IMAGE}:v2", source], check=True, capture_output=True)
    saved = subprocess.run(["docker", "save", "-o", str(archive), source], capture_output=True, text=True)
    subprocess.run(["docker", "rmi", source], capture_output=True)
    assert saved.returncode == 0, saved.stderr
    data = archive.read_bytes()
    import hashlib

    token = "ghp_" + secrets.token_hex(16)
    (tmp_path / "token").write_text(token)
    checksum = f"{hashlib.sha256(data).hexdigest()}  image.tar\n".encode()
    try:
        with FakeGitHub(GITHUB_REPO, assets={501: data, 502: checksum}, token=token, private=True) as github:
            served = serve(
                web_app(22150, extra=f'[apps.web.asset]\nname = "image.tar"\ntoken_file = "{tmp_path / "token"}"\n'),
                server=f'github_api = "{github.api_url}"',
            )
            assets = [
                {"id": 501, "name": "image.tar", "size": len(data), "state": "uploaded"},
                {"id": 502, "name": "image.tar.sha256", "size": len(checksum), "state": "uploaded"},
            ]
            response = served.deliver(release_payload(tag, assets=assets))
            assert response.status_code == 202, response.text
            job = served.wait(response.json()["job"])
            assert job["status"] == "succeeded", job
        assert served_version(22150) == "v2"  # what the archive holds
        assert [s.path for s in github.api_seen] == [
            f"/repos/{GITHUB_REPO}/releases/assets/501",
            f"/repos/{GITHUB_REPO}/releases/assets/502",
        ]
        assert all(s.headers.get("Authorization") == f"Bearer {token}" for s in github.api_seen)
        assert len(github.storage_seen) == 2
        assert all("Authorization" not in s.headers for s in github.storage_seen)
        assert ("asset", "ok") in [(s["name"], s["outcome"]) for s in job["steps"]]
        assert_no_secret_anywhere(served, token)

        # A manual redeploy of it runs that image too: a registry pull of the tag would fail.
        manual = served.signed("POST", "/deploy", json.dumps({"app": "web", "tag": tag}).encode())
        assert manual.status_code == 202, manual.text
        assert served.wait(manual.json()["job"])["status"] == "succeeded"
        assert served_version(22150) == "v2"

        # A rollback to the asset's release runs the image it loaded: no registry has that tag.
        done = served.deployer.cli("deploy", "web", "v1")
        assert done.returncode == 0 and served_version(22150) == "v1", done.stderr
        done = served.deployer.cli("rollback", "web")
        assert done.returncode == 0, done.stderr
        assert served_version(22150) == "v2"
        assert json.loads(served.deployer.cli("status", "web", "--json").stdout)[0]["active"]["tag"] == tag
    finally:
        subprocess.run(["docker", "rmi", f"{IMAGE}:{tag}"], capture_output=True)


# --- the benchmark's smoke ---------------------------------------------------------------------------


def test_webhook_burst_smoke():
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / "webhook_burst.py"), "--count", "20", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert (summary["accepted_202"], summary["accepted_without_job"], summary["jobs_in_queue"]) == (20, 0, 20)
    assert summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"]


# --- the privilege split ----------------------------------------------------------------------------------


def _unprivileged_receiver(config_path: str, port: int, report) -> None:
    """In a forked child: load everything as root, drop to nobody:nogroup, then build and serve the receiver.

    The interpreter of this machine lives under /root, which nobody cannot read, so the code is imported
    before the drop; every file the receiver opens (config, secrets, queue) is opened after it.
    """
    import grp
    import pwd

    import werkzeug.serving

    from deployer.config import load
    from deployer.receiver import web  # noqa: F401 - imported while root can still read the code

    # One request through a throwaway app, so lazily imported modules load before the drop.
    scratch = Path(tempfile.mkdtemp(prefix="deployer-preload-"))
    preload_config = load(config_path)
    from dataclasses import replace

    scratch_config = replace(preload_config, settings=replace(preload_config.settings, state_dir=scratch))
    web.create_app({"DEPLOYER_CONFIG": scratch_config}).test_client().post(
        "/hooks/github", data=b"{}", headers={"Content-Type": "application/json", "X-Hub-Signature-256": "x"}
    )
    shutil.rmtree(scratch)
    holder: dict[str, Any] = {}
    server = werkzeug.serving.make_server(
        "127.0.0.1", port, lambda env, start: holder["app"](env, start), threaded=True
    )  # it reads werkzeug's package metadata: as root

    user, group = pwd.getpwnam("nobody"), grp.getgrnam("nogroup")
    os.setgroups([])
    os.setgid(group.gr_gid)
    os.setuid(user.pw_uid)
    os.umask(0o007)
    facts: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid()}
    try:
        socket.socket(socket.AF_UNIX).connect("/var/run/docker.sock")
        facts["docker_socket"] = "opened"
    except PermissionError:
        facts["docker_socket"] = "denied"
    except OSError as exc:
        facts["docker_socket"] = f"not there ({exc})"
    os.environ["DEPLOYER_CONFIG"] = config_path
    holder["app"] = web.create_app()
    report.send(facts)
    server.serve_forever()


def test_the_receiver_runs_unprivileged_and_only_enqueues(deployer, images):
    import grp
    import multiprocessing
    import stat

    shared = Path(tempfile.mkdtemp(prefix="deployer-split-", dir="/tmp"))  # reachable by nobody, unlike tmp_path
    shared.chmod(0o755)
    nogroup = grp.getgrnam("nogroup").gr_gid
    worker = receiver = None
    try:
        deployer.root = shared
        folder = shared / "secrets"
        folder.mkdir()
        os.chown(folder, 0, nogroup)
        folder.chmod(0o750)
        github_secret, operator_secret = secrets.token_hex(20), secrets.token_hex(24)
        for name, value in (("github", github_secret), ("ops", operator_secret)):
            (folder / name).write_text(value)
            os.chown(folder / name, 0, nogroup)
            (folder / name).chmod(0o640)
        # The worker's own secrets are root's alone (0600): the receiver never opens them, so it starts.
        for name, value in (("registry", secrets.token_hex(16)), ("web.env", "WORKER_ONLY=1\n")):
            (folder / name).write_text(value)
            (folder / name).chmod(0o600)
        port = free_port()
        deployer.configure(
            web_app(22160, extra=f'env_files = ["{folder / "web.env"}"]'),
            settings=(
                f'\n[registries."registry.invalid:5000"]\nusername = "deploy"\n'
                f'password_file = "{folder / "registry"}"\n'
                f'\n[server]\nlisten = "127.0.0.1:{port}"\nuser = "nobody"\ngroup = "nogroup"\n'
                f'github_secret_file = "{folder / "github"}"\n'
                f'[server.operators.ops]\nsecret_file = "{folder / "ops"}"\n'
            ),
        )
        deployer.config_path.chmod(0o644)

        worker = subprocess.Popen(
            [sys.executable, "-m", "deployer", "-c", str(deployer.config_path), "worker"],
            cwd=REPO,
            stdout=open(shared / "worker.log", "w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        queue = Queue.for_state_dir(shared / "state")
        deadline = time.monotonic() + 30
        while not (queue.path.exists() and queue.heartbeat.worker_status()):
            assert time.monotonic() < deadline and worker.poll() is None, (shared / "worker.log").read_text()
            time.sleep(0.2)

        context = multiprocessing.get_context("fork")
        parent_end, child_end = context.Pipe()
        receiver = context.Process(target=_unprivileged_receiver, args=(str(deployer.config_path), port, child_end))
        receiver.start()
        assert parent_end.poll(30), "the unprivileged receiver did not start"
        facts = parent_end.recv()
        assert facts == {"uid": 65534, "gid": nogroup, "docker_socket": "denied"}

        served = Served(deployer, port, github_secret, operator_secret, folder / "ops")
        deadline = time.monotonic() + 10
        while True:
            try:
                requests.get(f"{served.url}/healthz", timeout=2)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        response = served.deliver(release_payload("v1"))
        assert response.status_code == 202, response.text
        job = served.wait(response.json()["job"])  # the job read is signed and served by nobody, too
        assert job["status"] == "succeeded", job
        assert served_version(22160) == "v1"

        modes = {
            p.name: (stat.S_IMODE(p.stat().st_mode), p.stat().st_gid)
            for p in queue.path.parent.iterdir()
            if p.name.startswith("jobs.db")
        }
        assert modes["jobs.db"] == (0o660, nogroup)
        assert stat.S_IMODE(queue.path.parent.stat().st_mode) == 0o2770
        assert all(gid == nogroup for _, gid in modes.values()), modes
        app_state = shared / "state" / "apps" / "web.json"
        assert stat.S_IMODE(app_state.stat().st_mode) & 0o077 == 0  # the receiver cannot read the app records
        # The receiver recorded the delivery in the audit log itself: its folder is shared like the queue's.
        audit_log = AuditLog.for_state_dir(shared / "state")
        [delivery] = audit_log.query(Query(event=("delivery",)))
        assert (delivery.get("verdict"), delivery.get("job")) == ("queued", job["id"])
        assert audit_log.verify().ok
        audit_folder = audit_log.path.parent
        assert (stat.S_IMODE(audit_folder.stat().st_mode), audit_folder.stat().st_gid) == (0o2770, nogroup)
    finally:
        if receiver is not None and receiver.is_alive():
            receiver.kill()
            receiver.join(10)
        if worker is not None and worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
        shutil.rmtree(shared, ignore_errors=True)


def _gunicorn_environments(session: int) -> list[dict[str, str]]:
    """The environment of every gunicorn process (master and workers) in serve's session."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            if b"\0-m\0gunicorn\0" not in cmdline or os.getsid(int(proc.name)) != session:
                continue
            raw = (proc / "environ").read_bytes()
        except (ValueError, OSError):
            continue
        found.append(dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item))
    return found


def test_gunicorn_gets_the_receiver_secrets_only_and_each_app_its_own_github_secret(serve, monkeypatch):
    """serve (root) holds the worker's *_env secrets; gunicorn gets only the receiver's."""
    app_secret = secrets.token_hex(20)
    worker_only = {"REGISTRY_PASSWORD": secrets.token_hex(16), "ASSET_TOKEN": secrets.token_hex(16)}
    for name, value in {"WEB_GITHUB_SECRET": app_secret, **worker_only}.items():
        monkeypatch.setenv(name, value)
    served = serve(
        web_app(
            22170,
            extra='github_secret_env = "WEB_GITHUB_SECRET"\n[apps.web.asset]\n'
            'name = "image.tar"\ntoken_env = "ASSET_TOKEN"',
        ),
        settings='[registries."registry.invalid:5000"]\nusername = "u"\npassword_env = "REGISTRY_PASSWORD"',
    )
    environments = _gunicorn_environments(served.process.pid)
    assert len(environments) >= 3  # the master and its two workers
    for env in environments:
        assert env.get("WEB_GITHUB_SECRET") == app_secret, sorted(env)
        assert env["DEPLOYER_CONFIG"] == str(served.deployer.config_path)
        leaked = sorted(name for name in worker_only if name in env)  # names only: no value in a failure
        assert leaked == []
        assert "HOME" not in env and "SUDO_USER" not in env
    # The shared secret no longer signs for an app with its own: refused before anything is queued.
    body = release_payload("v1")
    assert served.deliver(body).status_code == 401
    assert served.queue().jobs.jobs() == []
    served.github_secret = app_secret
    response = served.deliver(body)
    assert response.status_code in (200, 202), response.text  # 200: the release has no image.tar asset


# --- serve --watch ---------------------------------------------------------------------------------


def test_serve_with_watch_answers_with_the_page_when_the_instance_dies(serve):
    """`serve --watch` runs the maintenance responder and the failover watchdog beside the worker."""
    from deployer.adapters.iptables import Netfilter
    from deployer.plan import retries

    served = serve(
        web_app(22130, extra="[apps.web.watchdog]\ninterval = 0.3\nfailures = 2\nrecoveries = 2\n"),
        settings="maintenance_port = 22139",
        serve_args=("--watch",),
    )
    assert served.redeploy("web", "v1", "--wait").returncode == 0
    assert served_version(22130) == "v1"
    assert requests.get("http://127.0.0.1:22139/", timeout=5).status_code == 503  # the responder answers
    chain = f"{served.deployer.prefix}-RETRY"
    assert retries.parse(Netfilter().save_table("mangle")).has_chain(chain)

    container = served.deployer.containers("web")[0]
    subprocess.run(["docker", "kill", container.id], check=True, capture_output=True)
    deadline = time.monotonic() + 15
    while True:
        try:
            answer = requests.get("http://127.0.0.1:22130/", timeout=2)
            if answer.status_code == 503:
                break
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the watchdog never moved the app to the maintenance page"
        time.sleep(0.2)
    assert "Retry-After" in answer.headers

    served.process.send_signal(signal.SIGTERM)  # a graceful stop removes the watchdog's retry rules
    served.process.wait(timeout=60)
    served.process = None
    assert not retries.parse(Netfilter().save_table("mangle")).has_chain(chain)
