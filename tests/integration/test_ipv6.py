"""Deploys under IPv6 and IPv4 load at once on a dual-stack host (`[deployer] ipv6 = true`): nothing dropped.

The instances run on a dual-stack Docker network of the test's own. IPv6 clients come from an outside namespace
(PREROUTING) and from the host itself over the host's own IPv6 address (OUTPUT), with new connections, keep-alive
and a UDP stream, while IPv4 clients from outside and over 127.0.0.1 run beside them. Every connection opened
after a flip is served by the new release, no request fails, and the IPv6 clients' source addresses reach the app
unchanged. A connection to [::1] is refused at once rather than left hanging (IPv6 has no route_localnet:
plan/rules.py). In maintenance, both families get the app's page from one responder socket. Then the IPv6 chain is broken by hand and reconcile repairs it from the IPv4 one, as after a crash
between the two families' commits.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deployer.plan import rules
from deployer.wiring import build_netfilter6
from support import netns
from support.integration import BRIDGE6, NETWORK6, REPO, demo_app, dual_stack_network
from support.load import TRAFFIC, Background, read_records, stop_clients

pytestmark = pytest.mark.integration

SUBNET6 = "fd42:7e57:d0c::/64"  # the instances' (ENVIRONMENT: fd00::/64 is the machine's own)
OUTSIDE6 = "fd42:7e57:a::/64"  # the outside namespace's link
PORT, BLUE, GREEN, UDP = 18300, 18301, 18302, (18303, 18304, 18305)
RESPONDER = 18390
DEPLOYS = 2


def clients(outside: netns.OutsideClient, out: Path) -> list[tuple[str, subprocess.Popen]]:
    """Both families' clients: (name, target, mode, in the namespace)."""
    plans = [
        ("outside6-new", f"[{outside.host_ip6}]:{PORT}", "http-new", True),
        ("outside6-keepalive", f"[{outside.host_ip6}]:{PORT}", "http-keepalive", True),
        ("outside6-udp", f"[{outside.host_ip6}]:{UDP[0]}", "udp", True),
        ("host6-new", f"[{outside.host_ip6}]:{PORT}", "http-new", False),
        ("host6-keepalive", f"[{outside.host_ip6}]:{PORT}", "http-keepalive", False),
        ("host6-udp", f"[{outside.host_ip6}]:{UDP[0]}", "udp", False),
        ("outside4-new", f"{outside.host_ip}:{PORT}", "http-new", True),
        ("loopback4-udp", f"127.0.0.1:{UDP[0]}", "udp", False),
    ]
    started = []
    for name, target, mode, inside in plans:
        argv = [sys.executable, TRAFFIC, mode, target, "--out", str(out / f"{name}.jsonl"), "--pause", "0.02"]
        argv += ["--timeout", "1" if mode == "udp" else "5", "--duration", "120"]
        started.append((name, outside.popen(argv) if inside else subprocess.Popen(argv)))
    return started


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_deploys_under_ipv6_and_ipv4_load_drop_nothing_and_reconcile_repairs_the_ipv6_chain(
    deployer, images, tmp_path, backend
):
    tags = [f"v{n}" for n in range(1, DEPLOYS + 2)]
    images.ensure(*tags)
    with dual_stack_network(deployer), netns.OutsideClient(ipv6=OUTSIDE6) as outside:
        deployer.configure(
            demo_app("six", external=PORT, blue=BLUE, green=GREEN, udp=UDP, drain=0.5, stop_timeout=6),
            settings=(
                f'network = "{NETWORK6}"\nbridge = "{BRIDGE6}"\nipv6 = true\nipv6_subnet = "{SUBNET6}"\n'
                f'maintenance_port = {RESPONDER}\nbackend = "{backend}"'
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

        out = tmp_path / "traffic"
        out.mkdir()
        started = clients(outside, out)
        try:
            time.sleep(1.0)
            for tag in tags[1:]:
                engine.deploy("six", tag, actor="test")
            time.sleep(1.0)
        finally:
            stop_clients(started)

        flips = [e["wall"] for e in deployer.events if e["event"] == "step" and e["step"] == "flip"][1:]
        in_flight = [
            (e["wall"] - e["duration_ms"] / 1000 - 0.01, e["wall"])
            for e in deployer.events
            if e["event"] == "step" and e["step"] == "flip"
        ][1:]
        assert len(flips) == DEPLOYS

        def live_tag(moment: float) -> str:
            return tags[sum(1 for flip in flips if flip <= moment)]

        for name, _ in started:
            records = read_records(out / f"{name}.jsonl")
            assert len(records) > 30, f"{name}: too little traffic to judge ({len(records)} requests)"
            if name.endswith("udp"):
                unanswered = [r for r in records if not r["answered"]]
                assert len(unanswered) <= DEPLOYS, f"{name}: {len(unanswered)} datagrams unanswered: {unanswered[:3]}"
                continue
            failed = [r for r in records if not r["ok"]]
            assert not failed, f"{name}: {len(failed)} failed requests, first: {failed[:3]}"
            wrong = [
                r
                for r in records
                if r["version"] != live_tag(r["conn_t"]) and not any(a < r["conn_t"] <= b for a, b in in_flight)
            ]
            assert not wrong, f"{name}: connections opened after a flip were served by an old release: {wrong[:3]}"
            if name == "outside6-new":  # the client's own IPv6 address reaches the app
                assert {r["client"].rpartition(":")[0] for r in records} == {f"[{outside.client_ip6}]"}

        # Maintenance: one responder socket of both families; each family's REDIRECT reaches it, and it tells the
        # app by the original port, an IPv6 client's too.
        argv = [sys.executable, "-m", "deployer", "-c", str(deployer.config_path), "maintenance-server"]
        with Background(argv, tmp_path / "responder.log", cwd=REPO) as server:
            server.wait_for(f"maintenance responder on port {RESPONDER}")
            assert deployer.cli("maintenance", "on", "six").returncode == 0
            for target in (f"[{outside.host_ip6}]", outside.host_ip):
                page = outside.run(
                    ["curl", "-sS", "-D", "-", f"http://{target}:{PORT}/"], capture_output=True, text=True
                )
                assert page.stdout.startswith("HTTP/1.1 503") and "X-Deployer-Maintenance: six" in page.stdout, page
            assert deployer.cli("maintenance", "off", "six").returncode == 0
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
