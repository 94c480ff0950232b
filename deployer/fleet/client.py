"""The controller's client of its hosts: one signed client per host, each signing with that host's operator key.

What a rollout asks of a host goes through the routes every deployer server already has: POST /deploy (with
the rollout's id, which the host records in its own `job.queued` entry), GET /jobs/<id>, and GET /apps/<app>
(the live tag, port set and last job, read from the host's queue). A host that does not answer is a
DeployerError naming its URL; one that refuses is the RequestRejected of its status (deployer/adapters/api_client.py).
The signed client itself comes from deployer/wiring.py (`build_fleet_client`), through `connect`.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Callable, Protocol

from deployer.config.fleet import FleetConfig
from deployer import signatures

REQUEST_TIMEOUT = 5.0  # one request; a host's whole deploy has [fleet] host_timeout

Signer = Callable[[str, str, str, bytes], dict[str, str]]


class HostClient(Protocol):
    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]: ...


Connect = Callable[..., HostClient]  # connect(url, signer, *, timeout) -> a signed client of one host


def operator_signer(key_id: str, secret: str) -> Signer:
    """Sign as `key_id`: now, with a fresh nonce (the scheme of `server.signatures`)."""
    def sign(method: str, host: str, path: str, body: bytes) -> dict[str, str]:
        return signatures.sign_request(secret, method=method, host=host, path=path, key_id=key_id,
                                       timestamp=int(time.time()), nonce=secrets.token_urlsafe(24), body=body)

    return sign


class FleetClient:
    """post, follow and status of each host of [fleet], by its name."""

    def __init__(self, fleet: FleetConfig, *, connect: Connect, timeout: float = REQUEST_TIMEOUT) -> None:
        self.clients = {host.name: connect(host.url, operator_signer(host.key_id, host.secret), timeout=timeout)
                        for host in fleet.hosts}

    def deploy(self, host: str, app: str, tag: str, *, rollout: str, reason: str) -> str:
        """POST /deploy; returns the host's job id."""
        body = json.dumps({"app": app, "tag": tag, "rollout": rollout, "reason": reason}).encode()
        _, answer = self.clients[host].request("POST", "/deploy", body)
        return str(answer["job"])

    def job(self, host: str, job_id: str) -> dict[str, Any]:
        _, answer = self.clients[host].request("GET", f"/jobs/{job_id}")
        return answer

    def status(self, host: str, app: str) -> dict[str, Any]:
        _, answer = self.clients[host].request("GET", f"/apps/{app}")
        return answer
