"""A deploy, a sticky canary and its promotion under IPv6 and IPv4 load at once on a dual-stack host
(`[deployer] ipv6 = true`): nothing dropped, and every client on the side the hash model names.

The instances run on a dual-stack Docker network of the test's own. IPv6 clients come from an outside namespace
(PREROUTING) and from the host itself over the host's own IPv6 address (OUTPUT), with new connections, keep-alive
and a UDP stream, while IPv4 clients from outside and over 127.0.0.1 run beside them. No request fails; every
connection is served by the release the moment it opened calls for (during the canary, the side the model of the
kernel's hash predicts for its source address), and the IPv6 clients' source addresses reach the app unchanged.
During the canary, 64 more IPv6 sources (one per /32: the sticky split hashes an IPv6 source's first 32 bits)
each land, over TCP and UDP, on the instance the model predicts. A connection to [::1] is refused at once rather
than left hanging (IPv6 has no route_localnet: plan/rules.py).

Then the watchdog's process serves maintenance to both families from one responder socket, and (on one backend)
fails over to the page under IPv6 load when the instance dies and back when it returns. Last, the IPv6 chain is
broken by hand and reconcile repairs it from the IPv4 one, as after a crash between the two families' commits.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployer.audit import AuditLog, Query
from deployer.host import canary as canary_ops
from deployer.host.engine import CanaryStart
from deployer.host.state import StateStore
from deployer.plan import canary, rules
from deployer.wiring import build_netfilter6
from support import netns
from support.integration import REPO, Deployer, demo_app, dual_stack_network, run
from support.load import TRAFFIC, Background, Load, read_records, statuses, stop_clients

pytestmark = pytest.mark.integration

NETWORK6, BRIDGE6 = "dpltest6", "dpltest6br"
SUBNET6 = "fd42:7e57:d0c::/64"  # the instances' (ENVIRONMENT: fd00::/64 is the machine's own)
OUTSIDE6 = "fd42:7e57:a::/64"  # the outside namespace's link
SOURCES6 = "fd5e::/16"  # the canary's 64 sources in the outside namespace, routed there by the host
PORT, BLUE, GREEN, UDP = 18300, 18301, 18302, (18303, 18304, 18305)
RESPONDER = 18390
WEIGHT = 50
SPREAD = str(REPO / "tests" / "support" / "spread.py")


def clients(outside: netns.OutsideClient, out: Path) -> list[tuple[str, str, subprocess.Popen]]:
    """Both families' clients: (name, the source address the app sees and the split hashes, process)."""
    plans = [
        ("outside6-new", f"[{outside.host_ip6}]:{PORT}", "http-new", outside.client_ip6),
        ("outside6-keepalive", f"[{outside.host_ip6}]:{PORT}", "http-keepalive", outside.client_ip6),
        ("outside6-udp", f"[{outside.host_ip6}]:{UDP[0]}", "udp", outside.client_ip6),
        ("host6-new", f"[{outside.host_ip6}]:{PORT}", "http-new", None),
        ("host6-keepalive", f"[{outside.host_ip6}]:{PORT}", "http-keepalive", None),
        ("host6-udp", f"[{outside.host_ip6}]:{UDP[0]}", "udp", None),
        ("outside4-new", f"{outside.host_ip}:{PORT}", "http-new", outside.client_ip),
        ("loopback4-udp", f"127.0.0.1:{UDP[0]}", "udp", None),
    ]
    started = []
    for name, target, mode, inside in plans:
        argv = [sys.executable, TRAFFIC, mode, target, "--out", str(out / f"{name}.jsonl"), "--pause", "0.02"]
        argv += ["--timeout", "1" if mode == "udp" else "5", "--duration", "120"]
        # A client on the host connects from the address it connects to (the host's own), or from 127.0.0.1.
        source = inside or ("127.0.0.1" if target.startswith("127.") else outside.host_ip6)
        started.append((name, source, outside.popen(argv) if inside else subprocess.Popen(argv)))
    return started


def canary_sources(outside: netns.OutsideClient) -> list[str]:
    """64 IPv6 addresses of the outside namespace, each in a /32 of its own, and the host's route back to them."""
    assert "fd5e:" not in run(["ip", "-6", "route", "show", "table", "all"]).stdout, f"{SOURCES6} is in use here"
    sources = [f"fd5e:{n * 1021:x}::2" for n in range(1, 65)]
    commands = "".join(f"addr add {a}/128 dev {outside.name}-n nodad\n" for a in sources)
    outside.run(["ip", "-batch", "-"], input=commands, text=True, check=True)
    run(["ip", "-6", "route", "add", SOURCES6, "via", outside.client_ip6, "dev", outside.host_if], check=True)
    return sources


def even_seed(sources: list[str]) -> int:
    """A seed whose sticky split of these sources, as the model predicts it, is within 3 points of WEIGHT."""
    return next(
        seed
        for seed in range(1, 100000)
        if abs(100 * sum(canary.sticky_to_canary(a, WEIGHT, seed) for a in sources) / len(sources) - WEIGHT) <= 3
    )


def spread(outside: netns.OutsideClient, protocol: str, sources: list[str]) -> dict[str, dict[str, int]]:
    """Ten new flows from each source; {source: {version: count}}."""
    port = PORT if protocol == "tcp" else UDP[0]
    argv = ["python3", SPREAD, outside.host_ip6, str(port), protocol, str(10 * len(sources)), ",".join(sources)]
    report = json.loads(outside.run(argv, capture_output=True, text=True, check=True, timeout=120).stdout)
    assert report["failures"] == 0, f"{protocol}: {report['failures']} flows failed, first: {report['failed']}"
    return report[protocol]


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_a_deploy_and_a_sticky_canary_under_ipv6_and_ipv4_load_then_failover_and_a_repaired_ipv6_chain(
    deployer, images, tmp_path, backend
):
    tags = ["v1", "v2", "v3"]
    images.ensure(*tags)
    with dual_stack_network(deployer, NETWORK6), netns.OutsideClient(ipv6=OUTSIDE6) as outside:
        deployer.configure(
            demo_app(
                "six",
                external=PORT,
                blue=BLUE,
                green=GREEN,
                udp=UDP,
                drain=0.5,
                stop_timeout=6,
                extra="[apps.six.watchdog]\ninterval = 0.3\nfailures = 3\nrecoveries = 3\n",
            ),
            settings=(
                f'network = "{NETWORK6}"\nbridge = "{BRIDGE6}"\nipv6 = true\nipv6_subnet = "{SUBNET6}"\n'
                f'maintenance_port = {RESPONDER}\nbackend = "{backend}"\n[server]\nuser = "root"'
            ),
        )
        engine = deployer.engine()
        engine.deploy("six", tags[0], actor="test")
        assert Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip() == "1"  # outside clients need it
        ip6 = build_netfilter6(deployer.config())  # ip6tables, or the nftables backend's table ip6
        assert ip6 is not None
        chain = f"{deployer.prefix}-six"
        assert rules.dnat_destinations(ip6.list_chain(chain) or []) <= {
            c.address6(NETWORK6) for c in deployer.containers("six")
        }

        started_at = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("::1", PORT), timeout=5)
        assert time.monotonic() - started_at < 1

        sources = canary_sources(outside)
        seed = even_seed(sources)
        out = tmp_path / "traffic"
        out.mkdir()
        started = clients(outside, out)
        moments: list[tuple[float, float]] = []  # (asked, done) of the flip, the canary's start and its promotion
        try:
            time.sleep(1.0)
            moments.append((time.time(), 0.0))
            engine.deploy("six", tags[1], actor="test")
            moments[-1] = (moments[-1][0], time.time())
            moments.append((time.time(), 0.0))
            engine.deploy("six", tags[2], actor="test", canary_split=CanaryStart(WEIGHT, sticky=True, seed=seed))
            moments[-1] = (moments[-1][0], time.time())
            for protocol in ("tcp", "udp"):
                seen = spread(outside, protocol, sources)
                assert len(seen) == len(sources), f"{protocol}: {len(seen)} sources answered"
                mixed = {a: dict(v) for a, v in seen.items() if len(v) != 1}
                assert not mixed, f"{protocol}: sources served by both instances: {mixed}"
                wrong = [a for a, v in seen.items() if ("v3" in v) != canary.sticky_to_canary(a, WEIGHT, seed)]
                assert not wrong, f"{protocol}: the kernel placed {wrong} unlike the model"
            time.sleep(0.5)
            moments.append((time.time(), 0.0))
            canary_ops.promote(engine, "six", actor="test")
            moments[-1] = (moments[-1][0], time.time())
            time.sleep(1.0)
        finally:
            stop_clients([(name, process) for name, _, process in started])

        def allowed(moment: float, source: str) -> set[str]:
            """The releases a connection opened at `moment` from `source` may be served by."""
            (flip_asked, flip_done), (canary_asked, canary_done), (promote_asked, promote_done) = moments
            split = {"v3" if canary.sticky_to_canary(source, WEIGHT, seed) else "v2"}
            if moment < flip_asked:
                return {"v1"}
            if moment <= flip_done:
                return {"v1", "v2"}
            if moment < canary_asked:
                return {"v2"}
            if moment <= canary_done:
                return {"v2"} | split
            if moment < promote_asked:
                return split
            return split | {"v3"} if moment <= promote_done else {"v3"}

        for name, source, _ in started:
            records = read_records(out / f"{name}.jsonl")
            assert len(records) > 30, f"{name}: too little traffic to judge ({len(records)} requests)"
            if name.endswith("udp"):
                unanswered = [r for r in records if not r["answered"]]
                assert len(unanswered) <= len(moments), f"{name}: {len(unanswered)} unanswered: {unanswered[:3]}"
                continue
            failed = [r for r in records if not r["ok"]]
            assert not failed, f"{name}: {len(failed)} failed requests, first: {failed[:3]}"
            wrong = [r for r in records if r["version"] not in allowed(r["conn_t"], source)]
            assert not wrong, f"{name}: connections served by a release their moment does not call for: {wrong[:3]}"
            if name == "outside6-new":  # the client's own IPv6 address reaches the app
                assert {r["client"].rpartition(":")[0] for r in records} == {f"[{outside.client_ip6}]"}
        assert [c.labels["deployer.tag"] for c in deployer.containers("six")] == ["v3"]

        # The watchdog's process: one responder socket of both families; each family's REDIRECT reaches it, and it
        # tells the app by the original port, an IPv6 client's too.
        argv = [sys.executable, "-m", "deployer", "-c", str(deployer.config_path), "watch"]
        with Background(argv, tmp_path / "watch.log", cwd=REPO) as watch:
            watch.wait_for(f"maintenance responder on port {RESPONDER}")
            assert deployer.cli("maintenance", "on", "six").returncode == 0
            for target in (f"[{outside.host_ip6}]", outside.host_ip):
                page = outside.run(
                    ["curl", "-sS", "-D", "-", f"http://{target}:{PORT}/"], capture_output=True, text=True
                )
                assert page.stdout.startswith("HTTP/1.1 503") and "X-Deployer-Maintenance: six" in page.stdout, page
            assert deployer.cli("maintenance", "off", "six").returncode == 0
            if backend == "iptables":  # the same REDIRECT on both backends: failover once is enough
                fail_over_and_back(deployer, outside, tmp_path, watch)
        back = outside.run(["curl", "-sS", f"http://[{outside.host_ip6}]:{PORT}/"], capture_output=True, text=True)
        assert back.stdout.startswith(tags[-1]), back

        # A crash between the two families' commits, or a hand: the IPv6 chain points at nothing. Reconcile
        # rewrites it from the IPv4 one, which the record calls for.
        good = ip6.list_chain(chain)
        ip6.restore(f"*nat\n:{chain} - [0:0]\nCOMMIT\n")
        [status] = engine.status("six")
        assert not status.rules_match
        repairs = deployer.engine().reconcile("six", actor="test")
        assert any(r.startswith("IPv6 rules of six pointed at") for r in repairs), repairs
        assert ip6.list_chain(chain) == good


def fail_over_and_back(deployer: Deployer, outside: netns.OutsideClient, tmp_path: Path, watch: Background) -> None:
    """The instance dies under IPv6 load: its clients get the page, not a refusal, and the release when it returns."""
    store = StateStore(deployer.root / "state")
    container = store.load("six").active.container_id

    def wait_mode(mode: str) -> None:
        deadline = time.monotonic() + 20
        while store.load("six").mode != mode:
            assert time.monotonic() < deadline, f"six never reached mode {mode}:\n{watch.output()}"
            time.sleep(0.05)

    with Load(tmp_path / "failover") as load:
        load.start("outside6", "http-new", f"[{outside.host_ip6}]:{PORT}", popen=outside.popen)
        load.start("host6", "http-new", f"[{outside.host_ip6}]:{PORT}")
        time.sleep(0.5)
        assert subprocess.run(["docker", "kill", container], capture_output=True).returncode == 0
        killed = time.time()
        wait_mode("maintenance")
        time.sleep(1.0)
        assert subprocess.run(["docker", "start", container], capture_output=True).returncode == 0
        wait_mode("serving")
        time.sleep(1.0)
        load.stop()
        for name in ("outside6", "host6"):
            records = load.records(name)
            assert not [r for r in records if "refused" in r.get("error", "").lower()], name
            errors = [r for r in records if "error" in r]  # only a request the instance had in hand when it died
            assert len(errors) <= 1 and all(r["t"] <= killed for r in errors), (name, errors)
            assert statuses([r for r in records if "error" not in r]) == "200 503 200", name
    events = AuditLog.for_state_dir(deployer.root / "state").query(
        Query(event=("failover.*",), oldest_first=True, limit=None)
    )
    assert [(e.as_dict()["event"], e.as_dict()["outcome"]) for e in events] == [
        ("failover.on", "ok"),
        ("failover.off", "ok"),
    ]
