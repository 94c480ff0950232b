"""Small real HTTP servers on loopback that the report loop talks to, for tests.

`FakeGithubApi` answers like GitHub's REST API for deployments (create one, post its statuses, list them by ref
and environment) and records every call in order; it can fail on demand, in one of the ways GitHub fails, and be
switched from one to another while it runs. `NotifyReceiver` records each notification POST; it can be stopped and
started again on the same port, an outage. Both are context managers that leave no thread behind.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from support.fake_github import free_port

# What the fake answers: "ok" like GitHub; the others fail every call (or, with `only_state`, every status of
# that state) without doing anything: no deployment created, no status kept.
MODES = ("ok", "500", "hang", "401", "rate-limit", "429", "422")


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    answer: int | None  # None: hung, no answer before the client gave up

    @property
    def delivered(self) -> bool:
        return self.answer is not None and 200 <= self.answer < 300

    def short(self) -> tuple:
        """(method, path, state, description): what a sequence of calls is compared by."""
        body = self.body if isinstance(self.body, dict) else {}
        if "/statuses" in self.path:
            return (self.method, self.path, body.get("state"), body.get("description"))
        if self.method == "POST":
            return (self.method, self.path, body.get("ref"), body.get("environment"))
        return (self.method, self.path, self.query.get("ref"), self.query.get("environment"))


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True  # server_close joins every handler thread: none is left behind

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.open: set[socket.socket] = set()  # the connections being served, kept alive by their clients
        self.open_lock = threading.Lock()

    def cut(self) -> None:
        """End every open connection, so each handler thread returns (a client's idle keep-alive too)."""
        with self.open_lock:
            for connection in self.open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)


class _Loopback:
    """A ThreadingHTTPServer on a free loopback port, served from a thread; start() and stop() again at will."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._release = threading.Event()  # set at stop: a hanging answer ends now

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self._server is None, "already running"
        self._release.clear()
        deadline = time.monotonic() + 10
        while True:
            try:
                self._server = _Server(("127.0.0.1", self.port), self._handler())
                break
            except OSError:  # the port of a server just stopped can take a moment to be free again
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._release.set()
        self._server.shutdown()
        self._server.cut()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.open_lock:
            self.server.open.add(self.connection)

    def finish(self) -> None:
        with self.server.open_lock:
            self.server.open.discard(self.connection)
        super().finish()

    def log_message(self, *args: object) -> None:
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


class FakeGithubApi(_Loopback):
    """GitHub's deployments API. `mode` (one of MODES) is what it answers now; `hang_seconds` is how long a hung
    call holds before it closes (longer than the client's timeout)."""

    def __init__(self, port: int | None = None, *, hang_seconds: float = 4.0) -> None:
        super().__init__(port)
        self.hang_seconds = hang_seconds
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._deployments: dict[str, list[dict[str, Any]]] = {}  # repository -> deployments, oldest first
        self._statuses: dict[int, list[dict[str, Any]]] = {}
        self._next_id = 1000
        self._mode = "ok"
        self._only_state: str | None = None

    def set_mode(self, mode: str, *, only_state: str | None = None) -> None:
        """Answer `mode` from now on; with `only_state`, fail only the statuses of that state (the rest is ok)."""
        assert mode in MODES, mode
        with self._lock:
            self._mode, self._only_state = mode, only_state

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def delivered(self) -> list[tuple]:
        """The calls answered 2xx, in order, as (method, path, state or ref, description or environment)."""
        return [c.short() for c in self.calls() if c.delivered]

    def deployment_ids(self) -> list[int]:
        """The ids of the deployments created, oldest first, all repositories."""
        with self._lock:
            return sorted(d["id"] for deployments in self._deployments.values() for d in deployments)

    def deployments(self) -> list[dict[str, Any]]:
        """The deployments created, oldest first, all repositories: id, ref, environment, payload."""
        with self._lock:
            found = [d for deployments in self._deployments.values() for d in deployments]
        return sorted(
            ({k: d[k] for k in ("id", "ref", "environment", "payload")} for d in found), key=lambda d: d["id"]
        )

    def failed(self) -> list[Call]:
        return [c for c in self.calls() if not c.delivered]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(_Quiet):
            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                split = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(split.query).items()}
                raw = self.read_body()
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                with fake._lock:
                    mode, only = fake._mode, fake._only_state
                if only is not None and not (isinstance(body, dict) and body.get("state") == only):
                    mode = "ok"

                def record(status: int | None) -> None:  # as the call arrives: a hung one is seen while it hangs
                    with fake._lock:
                        fake._calls.append(Call(method, split.path, query, body, dict(self.headers), status))

                if mode == "ok":
                    status, answer = fake._do(method, split.path, query, body)
                    record(status)
                    self.answer(status, answer)
                else:
                    self._fail(mode, record)

            def _fail(self, mode: str, record: Callable[[int | None], None]) -> None:
                """Answer as GitHub fails, doing nothing (a hang answers nothing and closes after `hang_seconds`)."""
                if mode == "hang":
                    record(None)
                    fake._release.wait(fake.hang_seconds)
                    self.close_connection = True
                    return
                headers: dict[str, str] = {}
                if mode == "rate-limit":
                    status, message = 403, "API rate limit exceeded"
                    headers = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": "0"}
                    headers["X-RateLimit-Reset"] = str(int(time.time()) + 1)
                elif mode == "429":
                    status, message, headers = 429, "secondary rate limit", {"Retry-After": "1"}
                else:
                    messages = {"401": "Bad credentials", "422": "No ref found for: the tag"}
                    status, message = int(mode), messages.get(mode, "Server Error")
                record(status)
                self.answer(status, {"message": message}, headers)

        return Handler

    def _do(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != "repos" or parts[3] != "deployments":
            return 404, {"message": "Not Found"}
        repository = f"{parts[1]}/{parts[2]}"
        with self._lock:
            deployments = self._deployments.setdefault(repository, [])
            if method == "GET" and len(parts) == 4:
                found = [
                    d
                    for d in reversed(deployments)  # GitHub lists the newest first
                    if d["ref"] == query.get("ref", d["ref"])
                    and d["environment"] == query.get("environment", d["environment"])
                ]
                return 200, found
            if method == "POST" and len(parts) == 4 and isinstance(body, dict) and body.get("ref"):
                self._next_id += 1
                deployment = {
                    "id": self._next_id,
                    "url": f"https://api.github.com/{path.strip('/')}/{self._next_id}",
                    "ref": body["ref"],
                    "environment": body.get("environment", "production"),
                    "payload": body.get("payload", {}),
                    "description": body.get("description"),
                    "task": "deploy",
                }
                deployments.append(deployment)
                return 201, deployment
            if method == "POST" and len(parts) == 6 and parts[5] == "statuses" and isinstance(body, dict):
                deployment_id = int(parts[4]) if parts[4].isdigit() else None
                if deployment_id not in {d["id"] for d in deployments}:
                    return 404, {"message": "Not Found"}
                status = {"id": len(self._statuses.setdefault(deployment_id, [])) + 1, **body}
                self._statuses[deployment_id].append(status)
                return 201, status
        return 404, {"message": "Not Found"}


@dataclass(frozen=True)
class Received:
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


class NotifyReceiver(_Loopback):
    """A notification target: records each POST (its raw body and headers) and answers 200."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self._lock = threading.Lock()
        self._received: list[Received] = []

    def received(self, path: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self._received if path is None or r.headers.get("X-Path") == path]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(_Quiet):
            def do_POST(self) -> None:
                body = self.read_body()
                with receiver._lock:
                    receiver._received.append(Received(body, {**dict(self.headers), "X-Path": self.path}))
                self.answer(200, {"ok": True})

        return Handler
