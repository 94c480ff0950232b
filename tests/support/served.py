"""`deployer serve` as the integration tests run it: one process group with signed clients for it, GitHub's real
payloads, the app it serves. The fixture that starts it (`serve`) is in tests/integration/conftest.py."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from deployer import signatures
from deployer.queue.model import FINISHED
from deployer.queue.queue import Queue
from support.github_payloads import PAYLOADS
from support.integration import REPO, Deployer, demo_app, http_get

GITHUB_REPO = "Codertocat/Hello-World"
HOOK_ID = "109948940"


def real_payload(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def claimed_ping() -> bytes:
    """GitHub's real ping, from the repository the test apps name: answered 200 (another repository's is 404)."""
    data = json.loads(real_payload("ping-payload.json"))
    data["repository"]["full_name"] = GITHUB_REPO
    return json.dumps(data).encode()


def release_payload(tag: str, action: str = "published", **release: Any) -> bytes:
    """GitHub's real 'published' payload, for another tag (each tag is its own release)."""
    data = json.loads(real_payload("release-published.payload.json"))
    data["action"] = action
    data["release"].update(tag_name=tag, id=17372790 + sum(map(ord, tag)), **release)
    return json.dumps(data).encode()


class PortTaken(Exception):
    """Another process bound the listen port between the choice and serve's bind."""


def gunicorn_master(serve_pid: int) -> int | None:
    """The gunicorn child of a serve process, from /proc (its only child running gunicorn)."""
    for task in Path(f"/proc/{serve_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"gunicorn" in cmdline:
                return int(child)
    return None


@dataclass
class Served:
    """One `deployer serve` process group, and signed clients for it."""

    deployer: Deployer
    port: int
    github_secret: str
    operator_secret: str
    secret_file: Path
    process: subprocess.Popen | None = None
    logs: list[Path] = field(default_factory=list)
    serve_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def queue(self) -> Queue:
        return Queue.for_state_dir(self.deployer.root / "state")

    def start(self, timeout: float = 60) -> None:
        """Start serve and wait until it is healthy; PortTaken when another process holds the port."""
        log = self.deployer.root / f"serve-{len(self.logs) + 1}.log"
        self.logs.append(log)
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "deployer", "-c", str(self.deployer.config_path), "serve", *self.serve_args],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exited = self.process.poll() is not None
            text = log.read_text(errors="replace")  # read after the poll: all that an exited serve wrote
            if f"the receiver cannot listen on 127.0.0.1:{self.port}" in text:  # serve binds it before anything
                self.kill()
                raise PortTaken(self.port)
            assert not exited, f"serve exited:\n{text[-3000:]}"
            try:
                # Our gunicorn must have bound the port: another test run's server may answer on it too.
                if (
                    f"Listening at: {self.url}" in text
                    and requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
                ):
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise AssertionError(f"serve did not become healthy:\n{log.read_text()[-3000:]}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM serve, as systemd stops it: gunicorn finishes, the worker waits for running jobs."""
        assert self.process is not None
        self.process.terminate()
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL serve, gunicorn and every job process: the whole process group."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("processes of the killed server are still alive")
        self.process = None

    def deliver(
        self, body: bytes, *, event: str = "release", delivery: str | None = None, timeout: float = 10
    ) -> requests.Response:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/test",
            "X-GitHub-Event": event,
            "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
            "X-GitHub-Hook-ID": HOOK_ID,
            "X-Hub-Signature-256": signatures.github_signature(self.github_secret, body),
        }
        return requests.post(f"{self.url}/hooks/github", data=body, headers=headers, timeout=timeout)

    def signed(self, method: str, path: str, body: bytes = b"") -> requests.Response:
        headers = signatures.sign_request(
            self.operator_secret,
            method=method,
            host=urlsplit(self.url).netloc,
            path=path,
            key_id="ops",
            timestamp=int(time.time()),
            nonce=secrets.token_urlsafe(18),
            body=body,
        )
        if body:
            headers["Content-Type"] = "application/json"
        return requests.request(method, f"{self.url}{path}", data=body, headers=headers, timeout=10)

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.signed("GET", f"/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, statuses: frozenset[str] | set[str] = FINISHED, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is still {job['status']}: {json.dumps(job, indent=1)[-3000:]}")
            time.sleep(0.2)

    def redeploy(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "deployer",
                "-c",
                str(self.deployer.config_path),
                "redeploy",
                *args,
                "--url",
                self.url,
                "--key-id",
                "ops",
                "--secret-file",
                str(self.secret_file),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log_text(self) -> str:
        return "".join(path.read_text(errors="replace") for path in self.logs)


def web_app(
    port: int, *, drain: float = 0.5, stop_timeout: int = 4, extra: str = "", health: dict[str, Any] | None = None
) -> str:
    return demo_app(
        "web",
        external=port,
        blue=port + 1,
        green=port + 2,
        drain=drain,
        stop_timeout=stop_timeout,
        env={"DRAIN_TIMEOUT": str(stop_timeout - 2)},
        health=health,
        extra=f'repository = "{GITHUB_REPO}"\n{extra}',
    )


def served_version(port: int) -> str:
    return http_get("127.0.0.1", port).split()[0]
