"""Real deploys leave the exact audit trail an operator reviews: who, which steps, how long, what failed.

The engine is built the way the CLI and the server build it (runtime.build_engine), so these
tests also prove that the audit sink is wired in. Ports 23000-23999.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from deployer.audit import AuditLog, Query
from deployer.errors import HealthCheckFailed
from deployer.wiring import build_engine
from support.integration import CLI_ACTOR, demo_app

pytestmark = pytest.mark.integration

SECRET = "s3cret-registry-pass-4b1d"
FIRST_DEPLOY = [
    ("deploy.started", None, None),
    ("step", "pull", "ok"),
    ("step", "start", "ok"),
    ("step", "health", "ok"),
    ("step", "flip", "ok"),
    ("step", "record", "ok"),
    ("step", "conntrack", "ok"),
    ("deploy.finished", None, "ok"),
]
# An upgrade's flip leaves the old rules shadowed behind the new ones; its tidy step removes them.
UPGRADE = FIRST_DEPLOY[:-1] + [
    ("step", "tidy", "ok"),
    ("step", "drain", "ok"),
    ("step", "stop", "ok"),
    ("deploy.finished", None, "ok"),
]
FAILED_HEALTH = [
    ("deploy.started", None, None),
    ("step", "pull", "ok"),
    ("step", "start", "ok"),
    ("step", "health", "failed"),
    ("step", "remove-new", "ok"),
    ("deploy.failed", None, "failed"),
]


def configure(deployer, *, health_status: int = 200):
    (deployer.root / "registry-password").write_text(SECRET + "\n")
    return deployer.configure(
        demo_app(
            "web",
            external=23000,
            blue=23001,
            green=23002,
            env={"HEALTH_STATUS": str(health_status)},
            health={"deadline": 2},
        ),
        settings='[registries."127.0.0.1:5000"]\nusername = "ci"\npassword_file = "registry-password"\n',
    )


def trail(entries) -> list[tuple]:
    return [(e.event, e.get("step"), e.get("outcome")) for e in entries]


def secret_absent(deployer, *texts: str) -> None:
    stored = b"".join(p.read_bytes() for p in (deployer.root / "state" / "audit").glob("audit.db*"))
    assert stored  # the log is where this looks
    assert SECRET.encode() not in stored
    for text in texts:
        assert SECRET not in text


def test_deploys_and_a_failed_health_gate_leave_the_exact_audit_trail(deployer):
    engine = build_engine(configure(deployer))
    engine.deploy("web", "v1", actor="github:octocat", job="j-1")
    engine.deploy("web", "v2", actor="key:ops", job="j-2")
    with pytest.raises(HealthCheckFailed):
        build_engine(configure(deployer, health_status=500)).deploy("web", "v1", actor="cli:ann", job="j-3")

    log = AuditLog.for_state_dir(deployer.root / "state")
    entries = log.query(Query(limit=None, oldest_first=True))
    assert trail(entries) == FIRST_DEPLOY + UPGRADE + FAILED_HEALTH
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    jobs = [e.get("job") for e in entries]
    assert jobs == ["j-1"] * len(FIRST_DEPLOY) + ["j-2"] * len(UPGRADE) + ["j-3"] * len(FAILED_HEALTH)
    actors = {job: {e.get("actor") for e in entries if e.get("job") == job} for job in ("j-1", "j-2", "j-3")}
    assert actors == {"j-1": {"github:octocat"}, "j-2": {"key:ops"}, "j-3": {"cli:ann"}}
    assert {e.get("app") for e in entries} == {"web"}

    started, finished = entries[0], entries[len(FIRST_DEPLOY) - 1]
    assert (started.get("tag"), finished.get("tag"), finished.get("set")) == ("v1", "v1", "blue")
    assert finished.get("digest", "").startswith("sha256:")
    for step in (e for e in entries if e.event == "step"):
        assert step.get("duration_ms") >= 0
        assert datetime.fromisoformat(step.get("started_at")) <= datetime.fromisoformat(step.ts)
    health = next(e for e in log.timeline("j-1") if e.get("step") == "health")
    assert health.get("probes") >= 2  # the gate asked for two successes
    failed = log.timeline("j-3")
    assert failed[-1].get("error_type") == "HealthCheckFailed"
    assert failed[-1].get("tag") == "v1" and "health" in failed[-1].get("error")
    assert trail(log.query(Query(outcome="failed", limit=None, oldest_first=True))) == [
        ("step", "health", "failed"),
        ("deploy.failed", None, "failed"),
    ]

    assert log.verify().ok and log.verify().checked == len(entries)
    secret_absent(deployer, json.dumps([e.as_dict() for e in entries]))


def test_cli_deploy_is_audited_and_reviewable_from_the_cli(deployer):
    configure(deployer)
    deployed = deployer.cli("deploy", "web", "v1")
    assert deployed.returncode == 0, deployed.stderr

    listed = deployer.cli("audit", "--jsonl", "--limit", "0")
    assert listed.returncode == 0, listed.stderr
    entries = [json.loads(line) for line in listed.stdout.splitlines()][::-1]
    assert [(e["event"], e.get("step"), e.get("outcome")) for e in entries] == FIRST_DEPLOY
    assert {e["actor"] for e in entries} == {CLI_ACTOR}
    assert all("job" not in e for e in entries)  # a CLI deploy has no job id: `show` takes the seq

    shown = deployer.cli("audit", "show", "1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == f"deploy of web v1 by {CLI_ACTOR} (entries 1-8)"
    assert [line.split()[2] for line in lines[2:-1]] == [
        "deploy.started",
        "pull",
        "start",
        "health",
        "flip",
        "record",
        "conntrack",
        "deploy.finished",
    ]
    assert lines[-1].startswith("total ") and lines[-1].endswith(" s, deploy.finished ok")

    verified = deployer.cli("audit", "verify")
    assert (verified.returncode, verified.stdout.split(";")[0]) == (0, "audit log intact: 8 entries checked")
    table = deployer.cli("audit", "--app", "web", "--event", "deploy.*", "--since", "1h")
    assert [line.split()[3] for line in table.stdout.splitlines()[1:]] == ["deploy.finished", "deploy.started"]
    secret_absent(deployer, deployed.stdout, deployed.stderr, listed.stdout, shown.stdout, table.stdout)
