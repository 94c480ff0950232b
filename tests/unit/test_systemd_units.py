"""The shipped systemd units (deploy/systemd) parse, restart what dies and keep the README's hardening.

`systemd-analyze verify` checks each unit in a scratch root that holds systemd's own units and the
venv's executables (it refuses an ExecStart it cannot find), and prints any value it ignored.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
NAMES = [
    "deployer-serve.service",
    "deployer-receiver.service",
    "deployer-worker.service",
    "deployer-watch.service",
    "deployer-cluster.service",
]
SOCKETS = ["deployer-receiver.socket"]  # held by systemd, so it outlives the service it starts
# The watchdog and the cluster agent come back whatever their exit status: while either is down, failover or the
# rules that follow keepalived stop, and nothing else says so.
RESTART = {
    "deployer-serve.service": "on-failure",
    "deployer-receiver.service": "on-failure",
    "deployer-worker.service": "on-failure",
    "deployer-watch.service": "always",
    "deployer-cluster.service": "always",
}
VENV_BIN = "/opt/deployer/.venv/bin/"


def sections(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(UNITS / name)
    return parser


@pytest.fixture
def systemd_analyze():
    found = shutil.which("systemd-analyze")
    if found is None:
        message = "systemd-analyze is missing: scripts/install-deps installs Debian's systemd package"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_every_unit_verifies_without_a_warning(tmp_path, systemd_analyze):
    root = tmp_path / "root"
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / VENV_BIN.strip("/")).mkdir(parents=True)
    for tool in ("deployer", "gunicorn"):
        path = root / VENV_BIN.strip("/") / tool
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    for name in NAMES + SOCKETS:
        shutil.copy(UNITS / name, root / "etc/systemd/system" / name)
    shown = subprocess.run(
        [
            systemd_analyze,
            "verify",
            "--man=no",
            "--generators=no",
            f"--root={root}",
            *(f"/etc/systemd/system/{name}" for name in NAMES + SOCKETS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (shown.returncode, shown.stdout + shown.stderr) == (0, "")


@pytest.mark.parametrize("name", NAMES)
def test_a_unit_restarts_what_dies_and_runs_from_the_venv(name):
    service = sections(name)["Service"]
    assert service["Restart"] == RESTART[name]
    assert service["ExecStart"].startswith(VENV_BIN)


def test_the_receiver_keeps_the_hardening_and_the_threaded_worker():
    service = sections("deployer-receiver.service")["Service"]
    assert (service["User"], service["Group"], service["UMask"]) == ("deployer", "deployer", "0007")
    assert (service["NoNewPrivileges"], service["ProtectSystem"], service["PrivateTmp"]) == ("yes", "strict", "yes")
    assert service["ReadWritePaths"].split() == ["/var/lib/deployer/state/queue", "/var/lib/deployer/state/audit"]
    assert "--worker-class deployer.adapters.http_worker.DeadlineThreadWorker" in service["ExecStart"]


def test_the_receiver_takes_its_socket_from_systemd_which_keeps_it_across_restarts():
    socket_unit = sections("deployer-receiver.socket")
    assert socket_unit["Socket"]["ListenStream"] == "127.0.0.1:8000"  # [server] listen's default
    assert socket_unit["Socket"]["Backlog"] == "2048"
    assert socket_unit["Install"]["WantedBy"] == "sockets.target"
    receiver = sections("deployer-receiver.service")
    assert receiver["Unit"]["Requires"] == "deployer-receiver.socket"
    assert "deployer-receiver.socket" in receiver["Unit"]["After"].split()
    assert "--bind" not in receiver["Service"]["ExecStart"]  # gunicorn takes LISTEN_FDS, binds nothing itself


def test_the_worker_lets_a_running_deploy_finish():
    service = sections("deployer-worker.service")["Service"]
    assert (service["KillMode"], service["TimeoutStopSec"]) == ("mixed", "120")
    assert "User" not in service  # Docker and netfilter need root


@pytest.mark.parametrize(
    ("name", "command"), [("deployer-watch.service", "watch"), ("deployer-cluster.service", "cluster run")]
)
def test_the_watchdog_and_the_agent_each_stop_their_own_children(name, command):
    service = sections(name)["Service"]
    assert service["ExecStart"] == f"{VENV_BIN}deployer -c /etc/deployer/deployer.toml {command}"
    assert service["KillMode"] == "mixed"  # SIGTERM to the command only: it drops its rules first
    assert "User" not in service  # netfilter needs root


def test_the_cluster_agent_keeps_network_capabilities_only():
    service = sections("deployer-cluster.service")["Service"]
    assert set(service["CapabilityBoundingSet"].split()) == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_NICE"}
    assert (service["NoNewPrivileges"], service["ProtectSystem"], service["PrivateTmp"]) == ("yes", "strict", "yes")
    assert service["ReadWritePaths"].split() == ["/var/lib/deployer/state", "/run"]
