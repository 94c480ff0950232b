"""compose.yaml keeps the privilege split: only the worker holds the Docker socket and netfilter."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]


def test_the_receiver_runs_unprivileged_without_docker_or_capabilities():
    receiver = SERVICES["receiver"]
    uid = receiver["user"].split(":")[0]
    assert uid not in ("0", "root")
    assert receiver["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in receiver["security_opt"]
    assert not receiver.get("privileged") and receiver.get("network_mode") != "host"
    assert not any("docker.sock" in volume for volume in receiver["volumes"])
    assert receiver["read_only"] is True
    assert receiver["command"][-1] == "deployer.receiver.web:create_app()"


def test_the_receiver_may_write_only_the_queue_and_the_audit_folders():
    writable = [v for v in SERVICES["receiver"]["volumes"] if not v.endswith(":ro")]
    assert sorted(v.split(":")[1] for v in writable) == [
        "/var/lib/deployer/state/audit",
        "/var/lib/deployer/state/queue",
    ]


def test_the_worker_holds_docker_and_the_hosts_netfilter():
    worker = SERVICES["worker"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in worker["volumes"]
    assert worker["network_mode"] == "host" and worker["privileged"] is True
    assert worker["command"][-1] == "worker"


def test_the_image_has_the_netfilter_tools_and_the_receivers_user():
    dockerfile = (REPO / "Dockerfile").read_text()
    for tool in ("iptables", "conntrack", "iproute2"):
        assert tool in dockerfile
    assert "--uid 990" in dockerfile and SERVICES["receiver"]["user"] == "990:990"
