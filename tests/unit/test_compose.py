"""compose.yaml keeps the privilege split: only the worker holds the Docker socket and netfilter; the host's side of
every path, the image and its base are variables with the production defaults (tests/integration/test_compose_run.py
runs it)."""

from __future__ import annotations

import re
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
    assert sorted(v.rsplit(":", 1)[1] for v in writable) == [
        "/var/lib/deployer/state/audit",
        "/var/lib/deployer/state/queue",
    ]


def test_the_worker_holds_docker_and_the_hosts_netfilter():
    worker = SERVICES["worker"]
    assert worker["volumes"] == [
        "/var/run/docker.sock:/var/run/docker.sock",
        "${DEPLOYER_ETC:-/etc/deployer}:/etc/deployer:ro",
        "${DEPLOYER_VAR:-/var/lib/deployer}:/var/lib/deployer",
    ]
    assert worker["network_mode"] == "host" and worker["privileged"] is True
    assert worker["command"][-1] == "worker"


def test_the_image_has_the_netfilter_tools_and_the_receivers_user():
    dockerfile = (REPO / "Dockerfile").read_text()
    for tool in ("iptables", "conntrack", "iproute2"):
        assert tool in dockerfile
    assert "--uid 990" in dockerfile and SERVICES["receiver"]["user"] == "990:990"


def test_host_paths_image_and_port_are_variables_with_the_production_defaults():
    receiver = SERVICES["receiver"]
    assert receiver["volumes"] == [
        "${DEPLOYER_ETC:-/etc/deployer}:/etc/deployer:ro",
        "${DEPLOYER_VAR:-/var/lib/deployer}/state/queue:/var/lib/deployer/state/queue",
        "${DEPLOYER_VAR:-/var/lib/deployer}/state/audit:/var/lib/deployer/state/audit",
    ]
    assert receiver["ports"] == ["127.0.0.1:${DEPLOYER_RECEIVER_PORT:-8000}:8000"]
    for service in SERVICES.values():
        assert service["image"] == "${DEPLOYER_IMAGE:-deployer:local}"
        assert service["build"] == {
            "context": ".",
            "args": {"BASE": "${DEPLOYER_BASE:-debian:bookworm-slim}", "OFFLINE": "${DEPLOYER_OFFLINE:-false}"},
        }


def test_the_dockerfile_takes_its_base_and_the_offline_switch_as_arguments_and_uses_debians_python():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=debian:bookworm-slim\nFROM \$\{BASE\}\nARG OFFLINE=false$", dockerfile, re.M)
    assert "python3 python3-venv" in dockerfile and "--no-install-recommends" in dockerfile
    assert "--no-index --find-links /src/wheelhouse deployer" in dockerfile
    # The build context holds only what the image takes, the wheelhouse included; git keeps only its README.
    assert (REPO / ".dockerignore").read_text().splitlines()[0] == "*"
    assert "!wheelhouse/" in (REPO / ".dockerignore").read_text().splitlines()
    assert (REPO / "wheelhouse" / "README.md").is_file()


def test_the_production_page_names_every_variable_with_its_default():
    variables = dict(re.findall(r"\$\{(DEPLOYER_[A-Z_]+):-([^}]*)\}", (REPO / "compose.yaml").read_text()))
    assert len(variables) == 6
    page = (REPO / "docs" / "production.md").read_text()
    section = page[page.index("\n## Compose\n") : page.index("\n## What restarts what\n")]
    for name, default in variables.items():
        assert f"`{name}` (`{default}`)" in section, name
    assert "DEPLOYER_BASE=debian-local:bookworm DEPLOYER_OFFLINE=true docker-compose build" in section
