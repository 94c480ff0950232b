"""The signed HTTP client of a running receiver: what `deployer redeploy` sends, and how it follows a job.

It receives its signer (the CLI builds one from `server.signatures`, which this layer may not import).
The Host it has signed is the one it sends, so a proxy or library that rewrites Host makes the server refuse it
rather than accept a request meant for another server. A refusal becomes the project error of its
status code; an unreachable server is one DeployerError that names the URL and no secret.

The server at the other end is not trusted with more than its own answer:
- no redirect is followed: a signed request meant for this server must not reach another, so a 3xx is a refusal;
- each request has one deadline for the whole exchange, connect to last byte: a server that trickles its answer
  one byte at a time is cut off (a per-read timeout alone never fires for it);
- the answer is read in chunks up to a byte cap, and must be a JSON object: anything else is UnexpectedAnswer.
`ca_file` is the CA bundle that verifies an https server (a private CA); without it, the system's bundle.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from deployer.adapters.deadlines import Deadlines
from deployer.errors import (
    DeployerError,
    Forbidden,
    InvalidRequest,
    InvalidUrl,
    MalformedRequest,
    MisdirectedRequest,
    PayloadTooLarge,
    Redirected,
    ServerBusy,
    ServerUnavailable,
    Unauthorized,
    UnexpectedAnswer,
    UnknownApp,
    UnknownJob,
    UnsupportedMediaType,
)
from deployer.plan.printable import printable
from deployer.queue.model import FINISHED

# sign(method, host, path, body) -> the headers that authenticate the request
Signer = Callable[[str, str, str, bytes], Mapping[str, str]]
CLIENT_TIMEOUT = 30
MAX_ANSWER_BYTES = 1 << 20  # a receiver's answers are a few KiB; a job with all its steps stays far below this
READ_CHUNK = 64 * 1024
SHOWN_ERROR_CHARS = 200
# What each status becomes: a refusal (exit 65), or a server to try again later (429, 503: exit 75).
REJECTIONS = {
    400: MalformedRequest,
    401: Unauthorized,
    403: Forbidden,
    404: UnknownApp,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    421: MisdirectedRequest,
    422: InvalidRequest,
    429: ServerBusy,
    503: ServerBusy,
}
DEADLINES = Deadlines()  # one watcher thread shuts down the late sockets of every client in this process


class Sending(threading.local):
    """What the request this thread is sending arms on each socket it opens: its deadline."""

    arm: Callable[[socket.socket], None] | None = None


SENDING = Sending()


class ArmedConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:  # the TCP socket, before any TLS handshake: the deadline covers that too
        sock = super()._new_conn()
        if SENDING.arm is not None:
            SENDING.arm(sock)
        return sock


class ArmedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        if SENDING.arm is not None:
            SENDING.arm(sock)
        return sock


class ArmedPool(HTTPConnectionPool):
    ConnectionCls = ArmedConnection


class ArmedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = ArmedHTTPSConnection


class ArmedAdapter(HTTPAdapter):
    """requests' adapter whose connections arm the sending request's deadline on their socket; no retries."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": ArmedPool, "https": ArmedHTTPSPool}


def split_base_url(base_url: str) -> tuple[str, str, str]:
    """(scheme, host[:port], path prefix) of an http(s) base URL; InvalidUrl for anything else."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidUrl(
            f"{printable(base_url, 80)!r} is not a server URL: it must start with https:// (or "
            f"http://) and name the host, e.g. https://deploy.example:8443"
        )
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise InvalidUrl(f"{printable(base_url, 80)!r} is not a server URL: no user, query or fragment")
    return parts.scheme, parts.netloc, parts.path


class SignedClient:
    """Signs each request with `sign` and sends it to `base_url` (a path prefix is kept and signed).

    `timeout`: seconds for one whole request, answer included; `max_bytes`: the largest answer read."""

    def __init__(
        self,
        base_url: str,
        sign: Signer,
        *,
        timeout: float = CLIENT_TIMEOUT,
        ca_file: str | Path | None = None,
        max_bytes: int = MAX_ANSWER_BYTES,
        deadlines: Deadlines = DEADLINES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        _, self.host, self.prefix = split_base_url(self.base_url)
        self.sign = sign
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.deadlines = deadlines
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = str(ca_file) if ca_file is not None else True
        self.session.mount("http://", ArmedAdapter())
        self.session.mount("https://", ArmedAdapter())

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
        headers = dict(self.sign(method, self.host, self.prefix + path, body))
        headers["Host"] = self.host  # the very Host that was signed, default port included
        headers["Accept-Encoding"] = "identity"  # the cap counts the bytes as they arrive: nothing to inflate
        if body:
            headers["Content-Type"] = "application/json"
        deadline = time.monotonic() + self.timeout
        tickets: list[int] = []
        SENDING.arm = lambda sock: tickets.append(self.deadlines.arm(sock, max(0.0, deadline - time.monotonic())))
        try:
            status, raw = self.exchange(method, self.base_url + path, body, headers, deadline)
        finally:
            SENDING.arm = None
            for ticket in tickets:
                self.deadlines.disarm(ticket)
            self.session.close()  # the next request opens (and arms) a connection of its own
        if 300 <= status < 400:
            raise Redirected(f"the server answered {status}, a redirect: no signed request is sent elsewhere")
        data = answer_object(raw)
        if status >= 400:
            error = data.get("error", "") if data is not None else raw[:SHOWN_ERROR_CHARS].decode("utf-8", "replace")
            message = f"the server refused the request ({status}): {printable(error, SHOWN_ERROR_CHARS)}"
            raise REJECTIONS.get(status, DeployerError)(message)
        if data is None:
            raise UnexpectedAnswer(f"the server answered {status} with something other than a JSON object")
        return status, data

    def exchange(
        self, method: str, url: str, body: bytes, headers: dict[str, str], deadline: float
    ) -> tuple[int, bytes]:
        """Send, then read the answer in chunks: (status, the body's bytes). Nothing is followed or inflated."""
        try:
            response = self.session.request(
                method, url, data=body, headers=headers, timeout=self.timeout, allow_redirects=False, stream=True
            )
            with response:
                encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise UnexpectedAnswer(
                        f"the server answered with a {printable(encoding, 40)} encoding, which was not asked for"
                    )
                chunks, size = [], 0
                while chunk := response.raw.read(READ_CHUNK, decode_content=False):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UnexpectedAnswer(f"the server's answer is over {self.max_bytes} bytes: not read further")
                    chunks.append(chunk)
                if time.monotonic() >= deadline:  # shut down at its deadline, the answer may look whole but is cut
                    raise requests.Timeout()
                return response.status_code, b"".join(chunks)
        except DeployerError:
            raise
        except Exception as exc:  # requests', urllib3's and http.client's errors alike: the exchange broke off
            if time.monotonic() >= deadline:
                raise ServerUnavailable(
                    f"{self.base_url} did not finish its answer within {self.timeout:g} s"
                ) from None
            raise ServerUnavailable(f"cannot reach {self.base_url}: {type(exc).__name__}") from None

    def job_updates(
        self, job_id: str, *, timeout: float, interval: float = 1.0, sleep: Callable[[float], None] = time.sleep
    ) -> Iterator[dict[str, Any]]:
        """GET /jobs/<id> every `interval` seconds, yielding each answer, until the job ends or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, job = self.request("GET", f"/jobs/{job_id}")
            except UnknownApp:
                raise UnknownJob(f"the server does not know job {job_id}") from None
            yield job
            if job.get("status") in FINISHED or time.monotonic() > deadline:
                return
            sleep(interval)


def answer_object(raw: bytes) -> dict[str, Any] | None:
    """The answer as a JSON object, or None when it is anything else (not JSON, a list, a string...)."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError included; RecursionError: nested too deep
        return None
    return data if isinstance(data, dict) else None
