"""What `rollout --wait` and `fleet status` print of a host's words: never a control character.

A host's reason, error or job text could carry an escape sequence that rewrites the operator's screen or forges
a line; each is printed escaped (`\\x1b`, `\\n`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from deployer.cli import fleet as fleet_cli
from deployer.cli.main import main
from deployer.queue.model import Job, JobKind
from support.http_answers import Server, answering_servers, send

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")  # every control character but the line's own \n


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    with answering_servers() as start:
        yield start


HOSTILE = "ok\x1b[2J\x1b]0;owned\x07\nforged: v9 is live\r\x9b\u202e"


@dataclass
class RecordedJobs:
    job: Job
    recorded: list[dict[str, Any]] = field(default_factory=list)

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        return self.recorded

    def get(self, job_id: str) -> Job:
        return self.job


def test_rollout_wait_escapes_what_hosts_said(capsys):
    job = Job(
        id="job-00000000000000aa",
        app="web",
        tag="v2",
        kind=JobKind.ROLLOUT,
        actor="cli:ops",
        status="failed",
        reason=f"rollout of web v2 stopped: host h2: its deploy job job-0000000000000001 failed: {HOSTILE}",
    )
    queue = SimpleNamespace(
        jobs=RecordedJobs(
            job,
            [
                {"name": "rollout.planned", "detail": {"batches": [["h1"], ["h2"]]}},
                {
                    "name": "rollout.host",
                    "detail": {
                        "host": "h2",
                        "state": "failed",
                        "tag": "v2",
                        "reason": HOSTILE,
                        "host_job": "job-0000000000000001",
                    },
                },
            ],
        )
    )
    assert fleet_cli.follow(queue, job, timeout=1) == 1  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert not CONTROL.search(out + err)
    assert out.count("\n") == 2 and err.count("\n") == 1  # no forged line
    assert "ok\\x1b[2J\\x1b]0;owned\\x07\\nforged: v9 is live" in out


@pytest.mark.parametrize("as_json", [False, True])
def test_fleet_status_escapes_a_hosts_error_and_health(tmp_path: Path, serve, capsys, as_json):
    refusing = serve(send(500, json.dumps({"error": HOSTILE}).encode()))
    odd = serve(
        send(
            200,
            json.dumps(
                {
                    "tag": "v2",
                    "port_set": "blue\x1b[31m",
                    "health": {"worker\x07": HOSTILE},
                    "last_job": {"id": "job-00000000000000bb", "status": HOSTILE},
                }
            ).encode(),
        )
    )
    secret = tmp_path / "secret"
    secret.write_text("fleet-secret-0123456789abcdef\n")
    path = tmp_path / "deployer.toml"
    path.write_text(
        f'[deployer]\nstate_dir = "{tmp_path / "state"}"\n[fleet]\napps = ["web"]\n'
        + "".join(
            f'[[fleet.hosts]]\nname = "{name}"\nurl = "{url}"\nkey_id = "fleet"\nsecret_file = "{secret}"\n'
            for name, url in (("h1", refusing.url), ("h2", odd.url))
        )
    )
    assert main(["-c", str(path), "fleet", "status", "web", *(["--json"] if as_json else [])]) == 1
    out, err = capsys.readouterr()
    assert not CONTROL.search(out + err)
    if not as_json:
        assert len(out.splitlines()) == 2
        assert "web h1: does not answer: the server refused the request (500): ok\\x1b[2J" in out
