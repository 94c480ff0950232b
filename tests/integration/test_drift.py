"""Drift: the live state changed behind the deployer's back, and `reconcile` repairs it."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from support.integration import REPO, demo_app, http_get, run, udp_ask

pytestmark = pytest.mark.integration


def status(deployer) -> dict:
    return json.loads(deployer.cli("status", "drift", "--json").stdout)[0]


def flush_chain(backend: str, prefix: str, chain: str) -> None:
    """The app's rules removed by hand: its chain flushed, or on nftables its elements, in the maps."""
    if backend == "iptables":
        assert run(["iptables", "-w", "-t", "nat", "-F", chain]).returncode == 0
        return
    for name in ("tcp-ports", "udp-ports"):
        assert run(["nft", "flush", "map", "ip", prefix.lower(), name]).returncode == 0


def delete_local_jump(backend: str, prefix: str) -> None:
    """The jump from PREROUTING into the deployer's chains, removed by hand."""
    if backend == "iptables":
        jump = ["-m", "addrtype", "--dst-type", "LOCAL", "-j", prefix]
        assert run(["iptables", "-w", "-t", "nat", "-D", "PREROUTING", *jump]).returncode == 0
        return
    listing = run(["nft", "-a", "list", "chain", "ip", prefix.lower(), "PREROUTING"]).stdout
    (handle,) = [line.rsplit(" ", 1)[1] for line in listing.splitlines() if f"jump {prefix} # handle" in line]
    assert run(["nft", "delete", "rule", "ip", prefix.lower(), "PREROUTING", "handle", handle]).returncode == 0


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_flushed_chain_and_removed_jump_are_repaired(deployer, outside, backend):
    deployer.configure(
        demo_app("drift", external=18300, blue=18301, green=18302, udp=(18303, 18304, 18305)),
        settings=f'backend = "{backend}"',
    )
    assert deployer.cli("deploy", "drift", "v1").returncode == 0
    chain = f"{deployer.prefix}-drift"

    flush_chain(backend, deployer.prefix, chain)
    assert status(deployer)["rules_match"] is False
    assert "RULES DIFFER" in deployer.cli("status", "drift").stdout
    with pytest.raises(OSError):
        http_get("127.0.0.1", 18300, timeout=2)

    repaired = deployer.cli("reconcile")
    assert repaired.returncode == 0 and "rules of drift pointed at blue" in repaired.stdout
    assert status(deployer)["rules_match"] is True
    assert http_get("127.0.0.1", 18300).startswith("v1 ")
    assert udp_ask("127.0.0.1", 18303, "x") == "v1 x"

    # The jump from PREROUTING removed by hand: outside clients lose the app, reconcile restores it.
    delete_local_jump(backend, deployer.prefix)
    probe = [
        "python3",
        "-c",
        f"import urllib.request; print(urllib.request.urlopen("
        f"'http://{outside.host_ip}:18300/', timeout=2).read().decode())",
    ]
    assert outside.run(probe, capture_output=True, text=True).returncode != 0
    assert status(deployer)["rules_match"] is False
    repaired = deployer.cli("reconcile", "drift")
    assert repaired.returncode == 0, repaired.stderr
    assert outside.run(probe, capture_output=True, text=True, check=True).stdout.startswith("v1 ")
    assert "nothing to repair" in deployer.cli("reconcile", "drift").stdout


def restart_dockerd() -> None:
    """Stop dockerd the way an operator's restart does (SIGTERM, containers stop), then start it again."""
    pids = run(["pgrep", "-x", "dockerd"]).stdout.split()
    for pid in pids:
        run(["kill", "-TERM", pid])
    deadline = time.monotonic() + 60
    while run(["pgrep", "-x", "dockerd"]).stdout.strip() and time.monotonic() < deadline:
        time.sleep(0.2)
    started = subprocess.run([str(REPO / "scripts" / "ensure-dockerd")], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr


def test_dockerd_restart_is_repaired(deployer, outside):
    deployer.configure(demo_app("drift", external=18310, blue=18311, green=18312, udp=(18313, 18314, 18315)))
    assert deployer.cli("deploy", "drift", "v1").returncode == 0
    before = status(deployer)["active"]

    restart_dockerd()
    # The restart policy brings the instance back; its address may be another one now.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        containers = deployer.containers("drift")
        if containers and containers[0].status == "running":
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the instance did not come back after the dockerd restart")

    repaired = deployer.cli("reconcile")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    after = status(deployer)
    assert after["rules_match"] is True
    assert after["active"]["container_id"] == before["container_id"]
    assert http_get("127.0.0.1", 18310).startswith("v1 ")
    assert udp_ask("127.0.0.1", 18313, "y") == "v1 y"
    seen = outside.run(
        [
            "python3",
            "-c",
            f"import urllib.request; print(urllib.request.urlopen("
            f"'http://{outside.host_ip}:18310/', timeout=5).read().decode())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert seen.split()[1].split(":")[0] == outside.client_ip
    # And the next deploy works on the restarted daemon.
    assert deployer.cli("deploy", "drift", "v2").returncode == 0
    assert http_get("127.0.0.1", 18310).startswith("v2 ")
