"""The controller's client of its hosts: one signed client per host, each signing with that host's operator key.

What a rollout asks of a host goes through the routes every deployer server already has: POST /deploy (with
the rollout's id, which the host records in its own `job.queued` entry), GET /jobs/<id>, and GET /apps/<app>
(the live tag, port set and last job, read from the host's queue). A host that does not answer is a
DeployerError naming its URL; one that refuses is the RequestRejected of its status (deployer/adapters/api_client.py).
The signed client itself comes from deployer/wiring.py (`build_fleet_client`), through `connect`.

Every answer is checked before the controller acts on it or records it: a job id has the form of this
deployer's own (it becomes part of the next signed path), a tag is a Docker tag, a status and a reason are short
strings. A host that answers anything else is UnexpectedAnswer, a refusal: that host fails, the rollout stops.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from deployer import signatures
from deployer.config.fleet import FleetConfig
from deployer.errors import UnexpectedAnswer
from deployer.plan.printable import printable
from deployer.plan.tags import DOCKER_TAG_RE
from deployer.queue.model import JOB_ID_RE

REQUEST_TIMEOUT = 5.0  # one request, its whole answer included; a host's whole deploy has [fleet] host_timeout
MAX_TEXT_CHARS = 500  # a status, a reason or an error a host answers: kept to this

Signer = Callable[[str, str, str, bytes], dict[str, str]]


class HostClient(Protocol):
    def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, Any]]: ...


Connect = Callable[..., HostClient]  # connect(url, signer, *, timeout, ca_file) -> a signed client of one host


def operator_signer(key_id: str, secret: str) -> Signer:
    """Sign as `key_id`: now, with a fresh nonce (the scheme of `server.signatures`)."""

    def sign(method: str, host: str, path: str, body: bytes) -> dict[str, str]:
        return signatures.sign_request(
            secret,
            method=method,
            host=host,
            path=path,
            key_id=key_id,
            timestamp=int(time.time()),
            nonce=secrets.token_urlsafe(24),
            body=body,
        )

    return sign


class FleetClient:
    """post, follow and status of each host of [fleet], by its name."""

    def __init__(self, fleet: FleetConfig, *, connect: Connect, timeout: float = REQUEST_TIMEOUT) -> None:
        self.clients = {
            host.name: connect(
                host.url, operator_signer(host.key_id, host.secret), timeout=timeout, ca_file=host.ca_file
            )
            for host in fleet.hosts
        }

    def deploy(self, host: str, app: str, tag: str, *, rollout: str, reason: str) -> str:
        """POST /deploy; returns the host's job id."""
        body = json.dumps({"app": app, "tag": tag, "rollout": rollout, "reason": reason}).encode()
        _, answer = self.clients[host].request("POST", "/deploy", body)
        return job_id_of(answer.get("job"), "the job id of its POST /deploy")

    def job(self, host: str, job_id: str) -> dict[str, Any]:
        job_id_of(job_id, "the job id to follow")
        _, answer = self.clients[host].request("GET", f"/jobs/{job_id}")
        return checked_job(answer)

    def status(self, host: str, app: str) -> dict[str, Any]:
        _, answer = self.clients[host].request("GET", f"/apps/{app}")
        return checked_status(answer)


def unexpected(what: str, value: object) -> UnexpectedAnswer:
    return UnexpectedAnswer(f"{what} is not valid: {printable(repr(value), 60)}")


def job_id_of(value: object, what: str) -> str:
    if not isinstance(value, str) or not JOB_ID_RE.fullmatch(value):
        raise unexpected(what, value)
    return value


def tag_of(value: object, what: str) -> str | None:
    if value is not None and not (isinstance(value, str) and DOCKER_TAG_RE.fullmatch(value)):
        raise unexpected(what, value)
    return value


def text_of(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise unexpected(what, value)
    return value if value is None else printable(value, MAX_TEXT_CHARS)


def checked_job(answer: dict[str, Any]) -> dict[str, Any]:
    """GET /jobs/<id>: its status and reason as short printable text, its tag a Docker tag."""
    return {
        **answer,
        "status": text_of(answer.get("status"), "the job's status"),
        "reason": text_of(answer.get("reason"), "the job's reason"),
        "tag": tag_of(answer.get("tag"), "the job's tag"),
    }


def checked_status(answer: dict[str, Any]) -> dict[str, Any]:
    """GET /apps/<app>: the live tag, and the last job (its id, tag, rollout and status) when there is one."""
    last = answer.get("last_job")
    if last is not None:
        if not isinstance(last, dict):
            raise unexpected("the last job", last)
        last = {
            **last,
            "id": job_id_of(last.get("id"), "the last job's id"),
            "tag": tag_of(last.get("tag"), "the last job's tag"),
            "rollout": text_of(last.get("rollout"), "the last job's rollout"),
            "status": text_of(last.get("status"), "the last job's status"),
            "reason": text_of(last.get("reason"), "the last job's reason"),
        }
    health = answer.get("health")
    if health is not None and not (isinstance(health, dict) and all(isinstance(v, str) for v in health.values())):
        raise unexpected("the health", health)
    return {
        **answer,
        "tag": tag_of(answer.get("tag"), "the live tag"),
        "last_job": last,
        "port_set": text_of(answer.get("port_set"), "the port set"),
        **({"health": {printable(k, 40): printable(v, 40) for k, v in health.items()}} if health else {}),
    }
