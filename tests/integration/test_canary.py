"""Canary releases on the real engine, netfilter, conntrack and dockerd: the split's share over many clients, the
sticky split, promote and abort under load, the watchdog's abort, and a crash right after the split committed.

Clients come from an outside namespace (nat PREROUTING) with 64 source addresses of its own /24 (198.18.0.0/15,
checked against the host's addresses first), and from the host itself (OUTPUT).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections import Counter

import pytest

from deployer.audit import AuditLog, Query
from deployer.host.state import StateStore
from deployer.plan import canary
from support.integration import REPO, demo_app, host_address, run
from support.load import Background, Load

pytestmark = pytest.mark.integration

SPREAD = str(REPO / "tests" / "support" / "spread.py")
FLOWS = 5000
SOURCES = 64


def many_sources(outside) -> list[str]:
    """64 more addresses for the outside client, in its own /24, none of them on the host already."""
    taken = run(["ip", "-4", "-o", "addr", "show"]).stdout + run(["ip", "-4", "route", "show", "table", "all"]).stdout
    subnet = ipaddress.ip_network(outside.subnet)
    assert subnet.subnet_of(ipaddress.ip_network("198.18.0.0/15"))
    addresses = [str(a) for a in list(subnet.hosts())[2 : 2 + SOURCES]]
    for address in addresses:
        assert f" {address}/" not in taken and f"{address} " not in taken, f"{address} is in use on this host"
        outside.run(["ip", "addr", "add", f"{address}/32", "dev", outside.name + "-n"], check=True)
    return addresses


def spread(outside, port: int, protocol: str, sources: list[str], count: int = FLOWS) -> dict:
    result = outside.run(
        ["python3", SPREAD, outside.host_ip, str(port), protocol, str(count), ",".join(sources)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    report = json.loads(result.stdout)
    assert report["failures"] == 0, f"{protocol}: {report['failures']} flows failed, first: {report['failed']}"
    return report[protocol]


def share(seen: dict, version: str) -> float:
    total = sum(sum(v.values()) for v in seen.values())
    return 100 * sum(v.get(version, 0) for v in seen.values()) / total


def audit(deployer, event: str) -> list[dict]:
    return [
        e.as_dict()
        for e in AuditLog.for_state_dir(deployer.root / "state").query(
            Query(event=(event,), oldest_first=True, limit=None)
        )
    ]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_a_per_connection_split_gives_the_canary_its_share_of_new_tcp_connections_and_udp_flows(
    deployer, outside, images, backend
):
    images.ensure("v1", "v2")
    deployer.configure(
        demo_app("cs", external=26100, blue=26101, green=26102, udp=(26103, 26104, 26105)),
        settings=f'backend = "{backend}"',
    )
    assert deployer.cli("deploy", "cs", "v1").returncode == 0
    started = deployer.cli("deploy", "cs", "v2", "--canary", "10")
    assert started.returncode == 0, started.stderr
    assert "canary v2 on green" in started.stdout
    sources = many_sources(outside)
    figures = {}
    for weight in (10, 50):
        if weight != 10:
            changed = deployer.cli("canary", "cs", str(weight))
            assert changed.returncode == 0, changed.stderr
        for protocol, port in (("tcp", 26100), ("udp", 26103)):
            seen = spread(outside, port, protocol, sources)
            figures[f"{protocol} {weight}"] = round(share(seen, "v2"), 2)
            assert len(seen) == SOURCES
            assert abs(share(seen, "v2") - weight) <= 3, f"{protocol} at {weight}%: {share(seen, 'v2'):.2f}% to v2"
    print(json.dumps(figures))
    status = deployer.cli("status", "cs").stdout
    assert "mode: canary v2 on green" in status and "takes 50% per new connection" in status
    assert "live flows: v1 (blue" in status
    assert sorted(c.labels["deployer.tag"] for c in deployer.containers("cs")) == ["v1", "v2"]


def pick_seed(sources: list[str]) -> int:
    """A seed whose sticky split, as the model of the kernel's hash predicts it, is within 3 points at 10 and 50."""
    for seed in range(1, 100000):
        if all(
            abs(100 * sum(canary.sticky_to_canary(a, w, seed) for a in sources) / len(sources) - w) <= 3
            for w in (10, 50)
        ):
            return seed
    raise AssertionError("no seed splits these addresses evenly")


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_a_sticky_split_keeps_every_client_address_on_the_instance_the_hash_model_predicts(
    deployer, outside, images, backend
):
    images.ensure("v1", "v2")
    deployer.configure(
        demo_app("cy", external=26200, blue=26201, green=26202, udp=(26203, 26204, 26205)),
        settings=f'backend = "{backend}"',
    )
    assert deployer.cli("deploy", "cy", "v1").returncode == 0
    sources = many_sources(outside)
    seed = pick_seed(sources)
    started = deployer.cli("deploy", "cy", "v2", "--canary", "10", "--sticky", "--seed", str(seed))
    assert started.returncode == 0, started.stderr
    for weight in (10, 50):
        if weight != 10:
            assert deployer.cli("canary", "cy", str(weight)).returncode == 0
        for protocol, port in (("tcp", 26200), ("udp", 26203)):
            seen = spread(outside, port, protocol, sources, count=SOURCES * 20)
            mixed = {a: dict(v) for a, v in seen.items() if len(v) != 1}
            assert not mixed, f"{protocol} at {weight}%: addresses served by both instances: {mixed}"
            wrong = [a for a, v in seen.items() if ("v2" in v) != canary.sticky_to_canary(a, weight, seed)]
            assert not wrong, f"{protocol} at {weight}%: the kernel placed {wrong} unlike the model"
            assert abs(share(seen, "v2") - weight) <= 3


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_killed_right_after_the_canary_committed_both_serve_and_reconcile_keeps_the_split(
    deployer, outside, images, backend
):
    images.ensure("v1", "v2")
    deployer.configure(demo_app("ck", external=26300, blue=26301, green=26302), settings=f'backend = "{backend}"')
    assert deployer.cli("deploy", "ck", "v1").returncode == 0
    # The post-flip hook runs right after the split is committed and recorded: it SIGKILLs the deployer.
    deployer.hook("post-flip", 'kill -KILL "$PPID"\n')
    killed = deployer.cli("deploy", "ck", "v2", "--canary", "50")
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    (deployer.root / "hooks" / "post-flip").unlink()
    split = deployer.nat_of(backend).rules(f"{deployer.prefix}-ck")
    assert "--probability 0.50000000000" in split[0] and len(split) == 2
    sources = many_sources(outside)[:8]
    assert set(share_versions(spread(outside, 26300, "tcp", sources, count=200))) == {"v1", "v2"}
    repaired = deployer.cli("reconcile", "ck")
    assert repaired.returncode == 0, repaired.stderr
    assert "nothing to repair" in repaired.stdout
    assert deployer.nat_of(backend).rules(f"{deployer.prefix}-ck") == split
    assert sorted(c.labels["deployer.tag"] for c in deployer.containers("ck")) == ["v1", "v2"]
    assert set(share_versions(spread(outside, 26300, "tcp", sources, count=200))) == {"v1", "v2"}


def share_versions(seen: dict) -> Counter:
    """Flows per release, over all source addresses."""
    total: Counter = Counter()
    for versions in seen.values():
        total.update(versions)
    return total


@pytest.mark.parametrize(
    "ending, backend", [("promote", "iptables"), ("abort", "iptables"), ("promote", "nftables"), ("abort", "nftables")]
)
def test_promote_and_abort_under_load_drop_nothing(deployer, outside, images, tmp_path, ending, backend):
    images.ensure("v1", "v2")
    deployer.configure(
        demo_app(
            "cp",
            external=26400,
            blue=26401,
            green=26402,
            udp=(26403, 26404, 26405),
            drain=1.0,  # the keep-alive clients hold the old instance's connections: each ending waits all of it
            stop_timeout=6,
            env={"DRAIN_TIMEOUT": "4"},
        ),
        settings=f'backend = "{backend}"',
    )
    assert deployer.cli("deploy", "cp", "v1").returncode == 0
    assert deployer.cli("deploy", "cp", "v2", "--canary", "30").returncode == 0
    with Load(tmp_path / "load") as load:
        load.start("outside-new", "http-new", f"{outside.host_ip}:26400", popen=outside.popen)
        load.start("outside-keepalive", "http-keepalive", f"{outside.host_ip}:26400", popen=outside.popen)
        load.start("outside-udp", "udp", f"{outside.host_ip}:26403", popen=outside.popen, timeout=1)
        load.start("loopback-new", "http-new", "127.0.0.1:26400")
        load.start("host-keepalive", "http-keepalive", f"{host_address()}:26400")
        load.start("loopback-udp", "udp", "127.0.0.1:26403", timeout=1)
        time.sleep(1.5)
        moved = deployer.cli(ending, "cp")
        assert moved.returncode == 0, moved.stderr
        done = time.time()
        time.sleep(1.5)
        load.stop()
        records = {name: load.records(name) for name in load.clients}
    survivor = "v2" if ending == "promote" else "v1"
    for name, rows in records.items():
        assert len(rows) > 50, f"{name}: too little traffic ({len(rows)})"
        if name.endswith("udp"):
            unanswered = [r for r in rows if not r["answered"]]
            assert len(unanswered) <= 1, f"{name}: {len(unanswered)} unanswered datagrams: {unanswered[:3]}"
            assert {r["version"] for r in rows if r["answered"] and r["t"] > done} == {survivor}
            continue
        failed = [r for r in rows if not r["ok"]]
        assert not failed, f"{name}: {len(failed)} failed requests, first: {failed[:3]}"
        if name.endswith("new"):
            assert {r["version"] for r in rows if r["conn_t"] > done} == {survivor}
    assert [c.labels["deployer.tag"] for c in deployer.containers("cp")] == [survivor]
    assert [e["outcome"] for e in audit(deployer, f"{ending}.finished")] == ["ok"]
    state = json.loads(deployer.cli("status", "cp", "--json").stdout)[0]
    assert state["mode"] == "serving" and state["active"]["tag"] == survivor and state["rules_match"]


def test_a_canary_killed_mid_canary_is_aborted_by_the_watchdog_with_the_reason(deployer, outside, images, tmp_path):
    images.ensure("v1", "v2")
    interval, failures = 0.3, 3
    deployer.configure(
        demo_app(
            "cw",
            external=26500,
            blue=26501,
            green=26502,
            extra=f"[apps.cw.watchdog]\ninterval = {interval}\nfailures = {failures}\n",
        ),
        settings='maintenance_port = 26590\n[server]\nuser = "root"',  # the responder reads root's tmp_path
    )
    assert deployer.cli("deploy", "cw", "v1").returncode == 0
    assert deployer.cli("deploy", "cw", "v2", "--canary", "50").returncode == 0
    store = StateStore(deployer.root / "state")
    canary_id = canary.Split.of(store.load("cw")).canary.container_id
    argv = [sys.executable, "-m", "deployer", "-c", str(deployer.config_path), "watch"]
    with Background(argv, tmp_path / "watch.log", cwd=REPO) as watch:
        watch.wait_for("watching cw")
        time.sleep(1.0)
        assert subprocess.run(["docker", "kill", canary_id], capture_output=True).returncode == 0
        killed = time.monotonic()  # once the kill is in place: the CLI's round trip is not the watchdog's
        while store.load("cw").mode == "canary":
            assert time.monotonic() - killed < 15, watch.output()
            time.sleep(0.05)
        aborted_after = time.monotonic() - killed
        sources = many_sources(outside)[:8]
        seen = spread(outside, 26500, "tcp", sources, count=200)
    # The threshold: `failures` probes `interval` apart, each up to its 1 s timeout, and the transaction.
    assert aborted_after <= failures * (interval + 1) + 1, aborted_after
    assert share_versions(seen) == Counter({"v1": 200})
    (started,) = audit(deployer, "abort.started")
    assert started["actor"] == "watchdog"
    assert started["reason"].startswith(f"the canary failed {failures} health checks in a row; last: ")
    assert [e["outcome"] for e in audit(deployer, "abort.finished")] == ["ok"]
    assert [c.labels["deployer.tag"] for c in deployer.containers("cw")] == ["v1"]
