"""Property: the controller against hostile hosts. Whatever the hosts answer (any status, redirects, JSON of the
wrong type or with hostile values, answers too large or too slow), the rollout ends: it succeeds, or it fails with
every host it had finished reverted (but one that had no release before, as docs/fleet.md says). It never dies of
an unexpected exception, never sends a request anywhere but the configured hosts' own routes, and never prints a
control character.

The real FleetClient and SignedClient talk to three small HTTP servers on 127.0.0.1, each an honest deployer host
until its script (drawn by hypothesis) says otherwise for the next requests; a fourth server stands for any other
address, and must never be asked anything. The controller's clock is a fake that moves on each sleep.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deployer.adapters.api_client import SignedClient
from deployer.cli import fleet as fleet_cli
from deployer.config.fleet import FleetConfig, FleetHost
from deployer.errors import RolloutFailed
from deployer.fleet.client import FleetClient
from deployer.fleet.rollout import Rollout
from deployer.journal import Journal
from deployer.plan import rollout as plan
from deployer.queue.model import Job, JobKind
from deployer.queue.queue import Queue

HOSTS = ("h1", "h2", "h3")
ROUTES = re.compile(r"^/deploy$|^/jobs/job-[0-9a-f]{16}$|^/apps/web$")
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]")
CLIENT_TIMEOUT = 0.25


@dataclass
class Host:
    """An honest deployer host (its tag and its jobs), but for the hostile answers its script holds."""

    tag: str = "v1"
    script: dict[int, Any] = field(default_factory=dict)  # the n-th request it answers -> a hostile move
    answered: int = 0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    counter: Any = field(default_factory=lambda: itertools.count(1))

    def honest(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if method == "POST" and path == "/deploy":
            request = json.loads(body)
            job_id = f"job-{next(self.counter):016x}"
            self.jobs[job_id] = {
                "id": job_id,
                "tag": request["tag"],
                "status": "running",
                "rollout": request["rollout"],
                "reason": None,
            }
            return 202, {"job": job_id}
        if path.startswith("/jobs/") and path[6:] in self.jobs:
            job = self.jobs[path[6:]]
            if job["status"] == "running":
                job["status"] = "succeeded"
                self.tag = job["tag"]
            return 200, job
        if path == "/apps/web":
            last = list(self.jobs.values())[-1] if self.jobs else None
            return 200, {
                "app": "web",
                "tag": self.tag,
                "port_set": "blue",
                "last_job": last,
                "health": {"worker": "ok"},
            }
        return 404, {"error": "no such route"}


class Fleet:
    """Three host servers and one elsewhere, on 127.0.0.1, for the whole module; each example sets the scripts."""

    def __init__(self) -> None:
        self.hosts = {name: Host() for name in HOSTS}
        self.paths: list[str] = []
        self.elsewhere_paths: list[str] = []
        self.servers = {name: self.start(name) for name in HOSTS}
        self.elsewhere = self.start(None)

    def start(self, name: str | None) -> ThreadingHTTPServer:
        fleet = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    fleet.answer(self, name, body)
                except OSError:
                    pass  # the client hung up on a slow or huge answer: as it should

            do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        httpd.daemon_threads = True
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        return httpd

    def url(self, httpd: ThreadingHTTPServer) -> str:
        return f"http://127.0.0.1:{httpd.server_address[1]}"

    def reset(self, scripts: dict[str, dict[int, Any]]) -> None:
        self.hosts = {name: Host(script=dict(scripts[name])) for name in HOSTS}
        self.paths, self.elsewhere_paths = [], []

    def answer(self, handler: BaseHTTPRequestHandler, name: str | None, body: bytes) -> None:
        if name is None:
            self.elsewhere_paths.append(handler.path)
            return write(handler, 200, json.dumps({"job": "job-00000000000000ee", "tag": "v2"}).encode())
        self.paths.append(handler.path)
        host = self.hosts[name]
        move = host.script.get(host.answered, "honest")
        host.answered += 1
        if move == "honest":
            status, data = host.honest(handler.command, handler.path, body)
            return write(handler, status, json.dumps(data).encode())
        kind, value = move
        if kind == "redirect":
            return write(handler, value, b"{}", {"Location": self.url(self.elsewhere) + handler.path})
        if kind == "status":
            return write(handler, value[0], json.dumps(value[1]).encode())
        if kind == "json":
            return write(handler, 200 if handler.command == "GET" else 202, json.dumps(value).encode())
        if kind == "raw":
            return write(handler, 200, value)
        if kind == "huge":
            return write(handler, 200, b'{"tag": "' + b"v" * (2 << 20) + b'"}')
        if kind == "slow":
            handler.send_response(200)
            handler.send_header("Content-Length", "200")
            handler.end_headers()
            for _ in range(200):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.02)
            return None
        raise AssertionError(f"unknown move {move!r}")

    def close(self) -> None:
        for httpd in [*self.servers.values(), self.elsewhere]:
            httpd.shutdown()
            httpd.server_close()


def write(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in {
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
        **(headers or {}),
    }.items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture(scope="module")
def servers() -> Iterator[Fleet]:
    fleet = Fleet()
    yield fleet
    fleet.close()


HOSTILE_TEXT = st.sampled_from(
    [
        "../../audit?since=999d",
        "job-0000000000000001/../../audit",
        "job-\x1b[2J",
        "\x1b]0;owned\x07",
        "ok\nforged: v9 is live",
        "v2\r\x9b\u202e",
        "",
    ]
) | st.text(max_size=20)
HOSTILE_ID = HOSTILE_TEXT | st.sampled_from(["job-0000000000000001", "job-00000000000000ff"])
HOSTILE_TAG = HOSTILE_TEXT | st.sampled_from(["v1", "v2", "v3"])
SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | HOSTILE_TEXT
JOB = st.fixed_dictionaries(
    {"status": st.sampled_from(["succeeded", "failed", "running", "skipped"]) | SCALAR},
    optional={"reason": SCALAR, "tag": HOSTILE_TAG | SCALAR, "id": HOSTILE_ID},
)
STATUS = st.fixed_dictionaries(
    {"tag": HOSTILE_TAG | SCALAR},
    optional={
        "last_job": st.none()
        | SCALAR
        | st.fixed_dictionaries(
            {"id": HOSTILE_ID | SCALAR}, optional={"rollout": HOSTILE_ID | SCALAR, "tag": HOSTILE_TAG, "status": SCALAR}
        ),
        "health": st.dictionaries(HOSTILE_TEXT, SCALAR, max_size=2) | SCALAR,
    },
)
MOVE = st.one_of(
    st.tuples(st.just("redirect"), st.sampled_from([301, 302, 303, 307, 308])),
    st.tuples(
        st.just("status"),
        st.tuples(
            st.integers(100, 599).filter(lambda c: c not in (101, 204, 304)),
            st.none() | st.fixed_dictionaries({"error": HOSTILE_TEXT}) | SCALAR,
        ),
    ),
    st.tuples(
        st.just("json"),
        SCALAR | st.lists(SCALAR, max_size=3) | st.fixed_dictionaries({"job": HOSTILE_ID}) | JOB | STATUS,
    ),
    st.tuples(st.just("raw"), st.sampled_from([b"", b"not json", b"\xff\xfe\x00", b"[" * 50_000, b'{"job": '])),
    st.tuples(st.just("huge"), st.none()),
    st.tuples(st.just("slow"), st.none()),
)
# Each host is honest but for up to three of its first ten answers (its preflight GET /apps/web is the first).
SCRIPTS = st.fixed_dictionaries({name: st.dictionaries(st.integers(0, 9), MOVE, max_size=3) for name in HOSTS})


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordedJobs:
    """What `rollout --wait` reads: the job and its steps, as the worker's JobSteps sink records them."""

    job: Job
    recorded: list[dict[str, Any]]

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        return self.recorded

    def get(self, job_id: str) -> Job:
        return self.job


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scripts=SCRIPTS, revert=st.booleans())
def test_the_rollout_ends_whatever_the_hosts_answer(servers, scripts, revert):
    servers.reset(scripts)
    config = FleetConfig(
        apps=("web",),
        hosts=tuple(FleetHost(name, servers.url(servers.servers[name]), "fleet", "secret") for name in HOSTS),
        host_timeout=5,
    )
    folder = Path(tempfile.mkdtemp(prefix="rollout-property-"))
    try:
        clock = Clock()
        queue = Queue(folder / "jobs.db", clock=clock)
        events: list[dict[str, Any]] = []
        job = Job(
            id="job-00000000000000aa",
            app="web",
            tag="v2",
            kind=JobKind.ROLLOUT,
            actor="cli:ops",
            status="running",
            source={"revert": revert},
        )
        rollout = Rollout(
            job,
            fleet=config,
            progress=queue.rollouts,
            journal=Journal([events.append]),
            hosts=FleetClient(config, connect=SignedClient, timeout=CLIENT_TIMEOUT),
            clock=clock,
            sleep=clock.sleep,
            poll=1.0,
        )
        try:
            summary, failure = rollout.run(), None
        except RolloutFailed as exc:
            summary, failure = None, exc
        rows = {row.host: row for row in queue.rollouts.rollout_hosts(job.id)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    event("succeeded" if failure is None else "failed: " + ", ".join(sorted({r.state for r in rows.values()})))
    # It ended: no host is left half-way.
    assert not [r for r in rows.values() if r.state in (plan.POSTING, plan.DEPLOYING, plan.REVERTING)]
    if failure is None:
        assert all(r.state in (plan.DONE, plan.SKIPPED) for r in rows.values())
    elif revert:  # a host that had no release has nothing to go back to: it stays, and the failure names it
        assert not [r for r in rows.values() if r.state == plan.DONE and r.previous is not None], (
            "a done host was not reverted"
        )

    # It sent nothing anywhere but the hosts' own routes.
    assert servers.elsewhere_paths == []
    assert [p for p in servers.paths if not ROUTES.fullmatch(p)] == []

    # What `rollout --wait` shows of it holds no control character.
    finished = Job(
        id=job.id,
        app="web",
        tag="v2",
        kind=JobKind.ROLLOUT,
        actor="cli:ops",
        status="failed" if failure else "succeeded",
        reason=str(failure) if failure else summary,
    )
    steps = [{"name": e["event"], "detail": e} for e in events]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        fleet_cli.follow(SimpleNamespace(jobs=RecordedJobs(finished, steps)), finished, timeout=1)  # type: ignore[arg-type]
    assert not CONTROL.search(out.getvalue() + err.getvalue())
