"""The signed HTTP client of a running receiver: what `deployer redeploy` sends, and how it follows a job.

It receives its signer (the CLI builds one from `server.signatures`, which this layer may not import).
The Host it has signed is the one it sends, so a proxy or library that rewrites Host makes the server refuse it
rather than accept a request meant for another server. A refusal becomes the project error of its
status code; an unreachable server is one DeployerError that names the URL and no secret.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import urlsplit

import requests

from deployer.errors import (
    DeployerError,
    InvalidRequest,
    MalformedRequest,
    PayloadTooLarge,
    Unauthorized,
    UnknownApp,
    UnknownJob,
    UnsupportedMediaType,
)
from deployer.queue.model import FINISHED

# sign(method, host, path, body) -> the headers that authenticate the request
Signer = Callable[[str, str, str, bytes], Mapping[str, str]]
CLIENT_TIMEOUT = 30
REJECTIONS = {400: MalformedRequest, 401: Unauthorized, 404: UnknownApp, 413: PayloadTooLarge,
              415: UnsupportedMediaType, 422: InvalidRequest, 429: DeployerError}


class SignedClient:
    """Signs each request with `sign` and sends it to `base_url` (a path prefix is kept and signed)."""

    def __init__(self, base_url: str, sign: Signer, *, timeout: float = CLIENT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        parts = urlsplit(self.base_url)
        self.host = parts.netloc.rpartition("@")[2]
        self.prefix = parts.path
        self.sign = sign
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False

    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
        headers = dict(self.sign(method, self.host, self.prefix + path, body))
        headers["Host"] = self.host  # the very Host that was signed, default port included
        if body:
            headers["Content-Type"] = "application/json"
        try:
            response = self.session.request(method, self.base_url + path, data=body, headers=headers,
                                            timeout=self.timeout)
        except requests.RequestException as exc:
            raise DeployerError(f"cannot reach {self.base_url}: {type(exc).__name__}") from None
        try:
            data = response.json()
        except ValueError:
            data = {"error": response.text[:200]}
        if response.status_code >= 400:
            message = f"the server refused the request ({response.status_code}): {data.get('error', '')}"
            raise REJECTIONS.get(response.status_code, DeployerError)(message)
        return response.status_code, data

    def job_updates(self, job_id: str, *, timeout: float, interval: float = 1.0,
                    sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
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
