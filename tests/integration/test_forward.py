"""Moving an app to a new host: the new host forwards to the old one, under load from a client.

Three machines are network namespaces (tests/support/hosts.py): a client, a new host and an
old host. The deployer runs inside the new host's namespace (`deployer forward`) and inside the
old host's (`deployer forward-return`), each against that namespace's own netfilter and routes.
The app on the old host is the demo server as a plain process, plus one behind a DNAT to a
"container" namespace, which is how a deployer host runs it: the first answers from a local
socket (mangle OUTPUT restores the mark), the second's answers are forwarded (mangle PREROUTING).

The old host's default route is its own uplink, so without the return path its replies to
forwarded clients go there and are lost: the tests show that first, then that every request is
served once the return path is set up.

In the first test both hosts are dual-stack (`[deployer] ipv6`; the new host's Docker network is one of
the tests' own): an IPv4-only forward leaves the IPv6 clients refused, and says so; naming the old host's
IPv6 address too forwards them, keeping their addresses through the return path's IPv6 side, then
masqueraded.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.hosts import Hosts
from support.integration import BRIDGE, NETWORK, REPO, Deployer, demo_app, dual_stack_network, owned_deployer
from support.load import TRAFFIC

pytestmark = pytest.mark.integration

SERVER = REPO / "demo" / "app" / "build" / "server"
TABLE = "202"
# The first test's dual-stack network, of its own: it is only made, no container runs on it.
NETWORK6, BRIDGE6 = "dpltestfwd6", "dpltestfwd6br"
DUAL_STACK = f'network = "{NETWORK6}"\nbridge = "{BRIDGE6}"\nipv6 = true\nipv6_subnet = "fd42:f06d:d0c::/64"'


# --- helpers -----------------------------------------------------------------------------------------


def ensure_server() -> None:
    source = SERVER.parent.parent / "server.c"
    if SERVER.exists() and SERVER.stat().st_mtime >= source.stat().st_mtime:
        return
    SERVER.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-pthread", "-o", f"{SERVER}.tmp", str(source)],
        check=True,
        capture_output=True,
    )
    Path(f"{SERVER}.tmp").replace(SERVER)


def forwarded_app(ports: list[tuple[str, int, int, int, int]], *, bind: str = "127.0.0.1") -> str:
    """The app `web` of the test image on `ports` (protocol, external, container, blue, green), checked on 8080."""
    return demo_app("web", ports=ports, bind=bind, stop_timeout=4, health={"port": 8080, "deadline": 20})


def serve(hosts: Hosts, namespace: str, version: str, http: int, udp: int) -> None:
    hosts.popen(
        namespace,
        ["env", f"HTTP_PORT={http}", f"UDP_PORT={udp}", f"APP_VERSION={version}", "DRAIN_TIMEOUT=1", str(SERVER)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    probe = (
        "import socket,time\nfor _ in range(100):\n    try:\n        socket.create_connection(('127.0.0.1', "
        f"{http}), 0.2).close(); break\n    except OSError: time.sleep(0.05)\nelse: raise SystemExit(1)"
    )
    assert hosts.run(namespace, [sys.executable, "-c", probe]).returncode == 0, f"{version} never listened"


def get(hosts: Hosts, address: str, port: int, timeout: float = 3, source_port: int = 0) -> str:
    """One request from the client; `source_port` pins its port (0: an ephemeral one). An IPv6 address bare."""
    code = (
        "import http.client\n"
        f"c = http.client.HTTPConnection({address!r}, {port}, timeout={timeout}, "
        f"source_address=({'::' if ':' in address else '0.0.0.0'!r}, {source_port}))\n"
        "c.request('GET', '/')\nprint(c.getresponse().read().decode().strip())"
    )
    result = hosts.run(hosts.client, [sys.executable, "-c", code], timeout=timeout + 10)
    if result.returncode != 0:
        return f"FAILED: {result.stderr.strip()[-200:]}"
    version, _, client = result.stdout.strip().partition(" ")
    return f"{version} {client.rsplit(':', 1)[0]}"  # the client's port says nothing


def below_ephemeral(hosts: Hosts) -> int:
    """A client port that no connect() of the client's picks by itself: just below its ephemeral range."""
    low = int(hosts.run(hosts.client, ["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).stdout.split()[0])
    assert low > 1024, low
    return low - 1


# A connect that keeps retrying its SYN (up to 20 s), from a fixed client port; prints the answer.
PENDING_TCP = """
import http.client, sys
c = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]), timeout=20, source_address=("0.0.0.0", int(sys.argv[3])))
c.request("GET", "/")
print(c.getresponse().read().decode().strip())
"""

# One UDP socket on a fixed port, sending every 0.2 s until a datagram is answered (up to 20 s).
PENDING_UDP = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.connect((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.2)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    try:
        s.send(b"req")
        print(s.recv(2048).decode().strip())
        break
    except OSError:
        pass
"""


def wait_for_flow(hosts: Hosts, namespace: str, protocol: str, source_port: int) -> None:
    """Until the host's conntrack has a flow from the client's `source_port`."""
    deadline = time.monotonic() + 10
    while (
        "src="
        not in hosts.run(namespace, ["conntrack", "-L", "-p", protocol, "--orig-port-src", str(source_port)]).stdout
    ):
        assert time.monotonic() < deadline, f"no {protocol} flow from port {source_port} on {namespace}"
        time.sleep(0.05)


class Load:
    """Traffic clients running in the client's namespace, each writing one JSON line per request."""

    def __init__(self, hosts: Hosts, out: Path) -> None:
        self.hosts, self.out = hosts, out
        self.clients: dict[str, subprocess.Popen] = {}

    def start(self, name: str, mode: str, address: str, port: int) -> None:
        argv = [
            sys.executable,
            TRAFFIC,
            mode,
            f"{address}:{port}",
            "--out",
            str(self.out / f"{name}.jsonl"),
            "--pause",
            "0.02",
            "--timeout",
            "1" if mode == "udp" else "5",
            "--duration",
            "120",
        ]
        self.clients[name] = self.hosts.popen(self.hosts.client, argv)

    def stop(self) -> dict[str, list[dict[str, Any]]]:
        for proc in self.clients.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.clients.values():
            proc.wait(timeout=15)
        return {
            name: [json.loads(line) for line in (self.out / f"{name}.jsonl").read_text().splitlines()]
            for name in self.clients
        }


def failed(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if not r.get("ok", r.get("answered"))]


def client_ip_of(record: dict[str, Any]) -> str:
    return record["client"].rsplit(":", 1)[0]


@pytest.fixture
def new_host(host: None, tmp_path: Path) -> Iterator[Deployer]:
    """The new host's deployer: its own chain prefix, state and config (it runs in a namespace)."""
    ensure_server()
    with owned_deployer(tmp_path) as instance:
        yield instance


def deployer_in(
    hosts: Hosts, namespace: str, deployer: Deployer, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess:
    return hosts.run(
        namespace, [sys.executable, "-m", "deployer", "-c", str(deployer.config_path), *args], cwd=REPO, timeout=timeout
    )


def like_a_docker_host(hosts: Hosts, *, docker_user: bool, bridge: str = BRIDGE) -> None:
    """FORWARD policy DROP, as dockerd sets it, and (with docker_user) its DOCKER-USER chain first in FORWARD.

    The new host also gets an empty bridge named like the deployer's bridge: the bridge itself
    is dockerd's, in the root namespace, and the deployer sets route_localnet on it.
    """
    rules = ["*filter", ":FORWARD DROP [0:0]"]
    if docker_user:
        rules += [":DOCKER-USER - [0:0]", "-A FORWARD -j DOCKER-USER", "-A DOCKER-USER -j RETURN"]
    hosts.iptables_restore(hosts.new, "\n".join(rules + ["COMMIT", ""]))
    hosts.run(hosts.new, ["ip", "link", "add", bridge, "type", "bridge"], check=True)
    hosts.sysctl(hosts.new, "net/ipv4/ip_forward", "0")


def deployer_leftovers(hosts: Hosts, namespace: str, prefix: str, *addresses: str) -> list[str]:
    """Anything forwarding leaves behind: chains, rules naming the old host, marks, ip rules, routes of the table;
    in iptables and ip6tables, and in the nftables backend's tables."""
    saved = hosts.save(namespace) + hosts.save(namespace, "ip6tables-save")
    saved += hosts.nft_table(namespace, prefix.lower()) + hosts.nft_table(namespace, prefix.lower(), "ip6")
    found = [
        line
        for line in saved.splitlines()
        if any(f"{prefix}-{name}" in line for name in ("FORWARD", "SNAT", "RETURN"))
        or "CONNMARK" in line
        or any(address in line for address in addresses)
    ]
    for family in ("-4", "-6"):
        rules = hosts.run(namespace, ["ip", family, "rule", "show"]).stdout
        found += [
            f"ip {family} rule: {line}" for line in rules.splitlines() if "fwmark" in line or f"lookup {TABLE}" in line
        ]
        table = hosts.run(namespace, ["ip", family, "route", "show", "table", TABLE]).stdout
        found += [f"ip {family} table {TABLE}: {line}" for line in table.splitlines() if line.strip()]
    return found


# --- source-preserving mode ---------------------------------------------------------------------------


def test_forward_keeping_client_addresses_under_load(new_host: Deployer) -> None:
    with Hosts(container=True, ipv6=True) as hosts, dual_stack_network(new_host, NETWORK6):
        like_a_docker_host(hosts, docker_user=True, bridge=BRIDGE6)
        new_host.configure(
            forwarded_app(
                [
                    ("tcp", 26080, 8080, 26082, 26083),
                    ("tcp", 26081, 8081, 26084, 26085),
                    ("udp", 26080, 9090, 26082, 26083),
                ]
            ),
            settings=DUAL_STACK,
        )
        old_host = Deployer(root=new_host.root / "old", prefix=new_host.prefix)
        old_host.root.mkdir()
        old_host.configure(forwarded_app([("tcp", 26080, 8080, 26082, 26083)]), settings=DUAL_STACK)
        # The app on the old host: port 26080/tcp a local process, 26081/tcp and 26080/udp a container behind DNAT.
        serve(hosts, hosts.old, "old", 26080, 26089)
        serve(hosts, hosts.kube, "old-container", 26081, 26080)
        # The container has no IPv6 address: the old host answers IPv6 clients of 26081/tcp itself.
        serve(hosts, hosts.old, "old", 26081, 26088)
        hosts.iptables_restore(
            hosts.old,
            "\n".join(
                [
                    "*nat",
                    f"-A PREROUTING -p tcp -m tcp --dport 26081 -j DNAT --to-destination {hosts.container_ip}:26081",
                    f"-A PREROUTING -p udp -m udp --dport 26080 -j DNAT --to-destination {hosts.container_ip}:26080",
                    "COMMIT",
                    "",
                ]
            ),
        )

        done = deployer_in(hosts, hosts.new, new_host, "forward", "web", "--to", hosts.old_link)
        assert done.returncode == 0, done.stderr
        assert "IPv6 clients are refused while forwarded" in done.stderr, done.stderr
        assert hosts.run(hosts.new, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "1"
        assert get(hosts, hosts.new_public6, 26080).startswith("FAILED")  # refused: the IPv6 chain is empty
        # Without the return path the old host answers forwarded clients through its own uplink: lost.
        # The attempt leaves a half-open handshake and conntrack entries behind for a minute or two, and a
        # load connection that happened to get the same client port would inherit them; so it comes from
        # a port below the ephemeral range, which the load clients never use.
        port = below_ephemeral(hosts)
        assert get(hosts, hosts.new_public, 26080, timeout=1.5, source_port=port).startswith("FAILED")
        assert get(hosts, hosts.old_public, 26080) == f"old {hosts.client_direct}", "direct clients broke"
        # Two clients already trying when the return path comes: a TCP connect still retrying its SYN,
        # and a UDP client sending from one port. Their flows began unmarked on the old host.
        pending = {
            "tcp": hosts.popen(
                hosts.client,
                [sys.executable, "-c", PENDING_TCP, hosts.new_public, "26080", str(port - 1)],
                stdout=subprocess.PIPE,
                text=True,
            ),
            "udp": hosts.popen(
                hosts.client,
                [sys.executable, "-c", PENDING_UDP, hosts.new_public, "26080", str(port - 2)],
                stdout=subprocess.PIPE,
                text=True,
            ),
        }
        for protocol, source_port in (("tcp", port - 1), ("udp", port - 2)):
            wait_for_flow(hosts, hosts.old, protocol, source_port)

        via = ("--via", hosts.new_link, "--via", hosts.new_link6)  # IPv6 replies return too
        done = deployer_in(hosts, hosts.old, old_host, "forward-return", *via, "--dev", hosts.old_dev)
        assert done.returncode == 0, done.stderr
        assert f"{hosts.new_link} and {hosts.new_link6} (MAC" in done.stdout, done.stdout
        answers = {protocol: proc.communicate(timeout=30)[0].strip() for protocol, proc in pending.items()}
        assert answers == {"tcp": f"old {hosts.client_ip}:{port - 1}", "udp": "old-container req"}, answers

        # IPv6 clients too: the same forward names the old host's IPv6 address as well, and they keep their
        # addresses, their replies coming back through the return path's IPv6 side (the old host's own IPv6
        # default route is its uplink, where they would be lost).
        old6 = hosts.old_link6
        to_both = ("forward", "web", "--to", hosts.old_link, "--to", old6)
        done = deployer_in(hosts, hosts.new, new_host, *to_both)
        assert done.returncode == 0, done.stderr
        assert "IPv6 clients are refused" not in done.stderr and f"and [{old6}]" in done.stdout, done.stdout

        load = Load(hosts, new_host.root)
        load.start("forwarded-new", "http-new", hosts.new_public, 26080)
        load.start("forwarded-keepalive", "http-keepalive", hosts.new_public, 26081)
        load.start("forwarded-udp", "udp", hosts.new_public, 26080)
        load.start("direct", "http-new", hosts.old_public, 26080)
        load.start("forwarded6-new", "http-new", f"[{hosts.new_public6}]", 26080)
        load.start("forwarded6-keepalive", "http-keepalive", f"[{hosts.new_public6}]", 26081)
        time.sleep(4)
        status = deployer_in(hosts, hosts.new, new_host, "status", "web")
        seen = load.stop()

        print(f"requests: { {name: len(records) for name, records in seen.items()} }")
        assert status.returncode == 0, status.stderr
        assert f"mode: forward to {hosts.old_link} and [{old6}]" in status.stdout, status.stdout
        assert "keeping client addresses" in status.stdout and "IPv6: 3 rules, in step with IPv4" in status.stdout
        assert "rules match" in status.stdout
        for name, records in seen.items():
            assert len(records) > 30, f"{name}: too little traffic to judge ({len(records)})"
            assert not failed(records), (
                f"{name}: {len(failed(records))} of {len(records)} failed: {failed(records)[:2]}"
            )
        assert {(r["version"], client_ip_of(r)) for r in seen["forwarded-new"]} == {("old", hosts.client_ip)}
        assert {(r["version"], client_ip_of(r)) for r in seen["forwarded-keepalive"]} == {
            ("old-container", hosts.client_ip)
        }
        assert {r["version"] for r in seen["forwarded-udp"]} == {"old-container"}
        assert {(r["version"], client_ip_of(r)) for r in seen["direct"]} == {("old", hosts.client_direct)}
        for name in ("forwarded6-new", "forwarded6-keepalive"):  # the old host's own process answers both
            assert {(r["version"], client_ip_of(r)) for r in seen[name]} == {("old", f"[{hosts.client_ip6}]")}

        # With --masquerade both families' clients reach the old host as the new host (seen after the repairs).
        done = deployer_in(hosts, hosts.new, new_host, *to_both, "--masquerade")
        assert done.returncode == 0, done.stderr

        # Drift shows in status, each kind on its own: the accept jumps deleted (both families), IPv4
        # forwarding switched off (the app chain is still right), then both app chains flushed. Reconcile
        # repairs them all.
        prefix = new_host.prefix
        hosts.run(hosts.new, ["iptables", "-D", "DOCKER-USER", "-j", f"{prefix}-FORWARD"], check=True)
        hosts.run(hosts.new, ["ip6tables", "-D", "FORWARD", "-j", f"{prefix}-FORWARD"], check=True)  # no DOCKER-USER
        drifted = deployer_in(hosts, hosts.new, new_host, "status", "web").stdout
        assert "RULES DIFFER" in drifted, drifted
        assert "the forward's accept and masquerade rules are missing or changed" in drifted
        assert "the forward's IPv6 accept and masquerade rules are missing or changed" in drifted
        assert "IPv4 forwarding is off" not in drifted
        hosts.sysctl(hosts.new, "net/ipv4/ip_forward", "0")
        assert "IPv4 forwarding is off" in deployer_in(hosts, hosts.new, new_host, "status", "web").stdout
        hosts.run(hosts.new, ["iptables", "-t", "nat", "-F", f"{prefix}-web"], check=True)
        hosts.run(hosts.new, ["ip6tables", "-t", "nat", "-F", f"{prefix}-web"], check=True)
        assert "RULES DIFFER" in deployer_in(hosts, hosts.new, new_host, "status", "web").stdout
        repaired = deployer_in(hosts, hosts.new, new_host, "reconcile", "web")
        assert repaired.returncode == 0, repaired.stderr
        assert "IPv4 forwarding switched on again" in repaired.stdout
        assert f"accept rules of web's forward to {hosts.old_link} and [{old6}] restored" in repaired.stdout
        assert f"rules of web forwarded to {hosts.old_link} again" in repaired.stdout
        repaired_status = deployer_in(hosts, hosts.new, new_host, "status", "web").stdout
        assert "rules match" in repaired_status and "missing or changed" not in repaired_status, repaired_status
        assert "IPv6: 3 rules, in step with IPv4" in repaired_status, repaired_status
        assert get(hosts, hosts.new_public, 26080) == f"old {hosts.new_link}"  # masqueraded, both families
        assert get(hosts, hosts.new_public6, 26080) == f"old [{hosts.new_link6}]"

        # Off on both hosts, and nothing of the deployer's is left.
        done = deployer_in(hosts, hosts.new, new_host, "forward", "web", "--off")
        assert done.returncode == 0, done.stderr
        done = deployer_in(hosts, hosts.old, old_host, "forward-return", "--off")
        assert done.returncode == 0, done.stderr
        assert deployer_leftovers(hosts, hosts.new, new_host.prefix, hosts.old_link, old6) == []
        assert deployer_leftovers(hosts, hosts.old, old_host.prefix, hosts.new_link, hosts.new_link6) == []
        assert hosts.save(hosts.new).count(f":{new_host.prefix}-web ") == 1
        assert not any(line.startswith(f"-A {new_host.prefix}-web ") for line in hosts.save(hosts.new).splitlines())
        assert get(hosts, hosts.old_public, 26080) == f"old {hosts.client_direct}"
        record = json.loads((new_host.root / "state" / "apps" / "web.json").read_text())
        assert (record["mode"], record["mode_detail"]) == ("serving", {})
        assert not (old_host.root / "state" / "forward-return.json").exists()

        audit = deployer_in(hosts, hosts.new, new_host, "audit", "--event", "forward*", "--jsonl")
        events = [json.loads(line)["event"] for line in audit.stdout.splitlines()]
        assert {"forward.started", "forward.finished", "forward-off.started", "forward-off.finished"} <= set(events)
        audit = deployer_in(hosts, hosts.old, old_host, "audit", "--event", "forward-return*", "--jsonl")
        events = [json.loads(line)["event"] for line in audit.stdout.splitlines()]
        assert {"forward-return.finished", "forward-return-off.finished"} <= set(events)
        steps = deployer_in(hosts, hosts.old, old_host, "audit", "--event", "step", "--jsonl")
        [forgotten] = [e for e in map(json.loads, steps.stdout.splitlines()) if e.get("step") == "conntrack"]
        assert forgotten["deleted"] >= 2, forgotten  # the pending TCP handshake and the UDP flow


# --- masquerade, and the cut-over to a real local deploy --------------------------------------------------


def docker_subnet() -> str:
    from deployer.adapters.docker_host import DockerHost

    DockerHost("unix:///var/run/docker.sock").ensure_network(NETWORK, BRIDGE)
    result = subprocess.run(
        ["docker", "network", "inspect", NETWORK, "-f", "{{(index .IPAM.Config 0).Subnet}}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def segments(records: list[dict[str, Any]]) -> list[tuple[str, set[str]]]:
    """Versions in the order clients saw them, with the client addresses each saw."""
    result: list[tuple[str, set[str]]] = []
    for record in sorted(records, key=lambda r: r["t"]):
        if not result or result[-1][0] != record["version"]:
            result.append((record["version"], set()))
        if "client" in record:  # datagrams are answered without one
            result[-1][1].add(client_ip_of(record))
    return result


@pytest.mark.parametrize("backend", ["iptables", "nftables"])
def test_masquerade_then_cut_over_to_a_local_deploy_and_back_without_a_failed_request(
    new_host: Deployer, images: Any, backend: str
) -> None:
    """The new host's deployer deploys a real container of the machine's dockerd, from its own namespace.

    dockerd lives in the root namespace, so the new host reaches its containers over a veth to
    it (as a host reaches its own Docker bridge), and the app publishes its set ports on the
    root end of that veth, where the health checks reach them. The flip is the same: the app
    chain goes from the DNAT to the old host to the DNAT to the container, in one transaction.
    """
    with Hosts(root_link=True) as hosts:
        like_a_docker_host(hosts, docker_user=False)
        subnet = docker_subnet()
        hosts.run(hosts.new, ["ip", "route", "add", subnet, "via", hosts.root_ip], check=True)
        # What Docker's own FORWARD rules do on a real host: accept traffic to and from its containers.
        hosts.iptables_restore(
            hosts.new, "*filter\n-A FORWARD -o to-root -j ACCEPT\n-A FORWARD -i to-root -j ACCEPT\nCOMMIT\n"
        )
        new_host.configure(
            forwarded_app([("tcp", 26180, 8080, 26181, 26182), ("udp", 26180, 9090, 26181, 26182)], bind=hosts.root_ip),
            settings=f'backend = "{backend}"',
        )
        serve(hosts, hosts.old, "old", 26180, 26180)

        def step(*args: str) -> float:
            started = time.monotonic()
            done = deployer_in(hosts, hosts.new, new_host, *args)
            assert done.returncode == 0, f"deployer {' '.join(args)}: {done.stderr[-2000:]}"
            return time.monotonic() - started

        took = {"forward": step("forward", "web", "--to", hosts.old_link, "--masquerade")}
        load = Load(hosts, new_host.root)
        load.start("new", "http-new", hosts.new_public, 26180)
        load.start("udp", "udp", hosts.new_public, 26180)
        time.sleep(1.5)
        took["deploy"] = step("deploy", "web", "v1")
        time.sleep(1.5)
        took["forward-again"] = step("forward", "web", "--to", hosts.old_link, "--masquerade")
        time.sleep(1.5)
        status = deployer_in(hosts, hosts.new, new_host, "status", "web").stdout
        iptables_nat = hosts.run(hosts.new, ["iptables-save", "-t", "nat"], check=True).stdout
        table = hosts.nft_table(hosts.new, new_host.prefix.lower())
        # The masquerade towards the old host is in the nat rules of the backend the config names, only there.
        assert (f"{new_host.prefix}-SNAT" in iptables_nat) == (backend == "iptables")
        assert (f"ip daddr {hosts.old_link} tcp dport 26180 ct status dnat masquerade" in table) == (
            backend == "nftables"
        )
        took["off"] = step("forward", "web", "--off")
        time.sleep(1.5)
        seen = load.stop()
        audit = deployer_in(hosts, hosts.new, new_host, "audit", "--event", "step", "--limit", "0", "--jsonl")
        commits = [
            json.loads(line).get("committed_ms")
            for line in audit.stdout.splitlines()
            if json.loads(line).get("step") == "flip"
        ]
        print(
            f"durations: { {k: round(v, 2) for k, v in took.items()} }, requests: "
            f"{ {k: len(v) for k, v in seen.items()} }, unanswered datagrams: {len(failed(seen['udp']))}, "
            f"flip commits (ms, newest first): {commits}"
        )

        assert not failed(seen["new"]), f"{len(failed(seen['new']))} failed: {failed(seen['new'])[:3]}"
        assert [(version, clients) for version, clients in segments(seen["new"])] == [
            ("old", {hosts.new_link}),
            ("v1", {hosts.client_ip}),
            ("old", {hosts.new_link}),
            ("v1", {hosts.client_ip}),
        ]
        unanswered = failed(seen["udp"])
        assert len(unanswered) <= 3, f"{len(unanswered)} datagrams unanswered over 3 moves: {unanswered[:3]}"
        assert [v for v, _ in segments([r for r in seen["udp"] if r["answered"]])] == ["old", "v1", "old", "v1"]
        assert f"mode: forward to {hosts.old_link}" in status and "masquerading clients" in status
        assert "v1 on blue" in status

        after = deployer_in(hosts, hosts.new, new_host, "status", "web").stdout
        assert "v1 on blue" in after and "rules match" in after and "mode:" not in after
        again = deployer_in(hosts, hosts.new, new_host, "forward", "web", "--off")
        assert again.returncode == 0 and "not forwarding; nothing to remove" in again.stdout
        assert deployer_leftovers(hosts, hosts.new, new_host.prefix, hosts.old_link) == []
        record = json.loads((new_host.root / "state" / "apps" / "web.json").read_text())
        assert (record["mode"], record["active"]["tag"]) == ("serving", "v1")


# --- preflight refusals -----------------------------------------------------------------------------------


def test_preflight_refusals_change_nothing(new_host: Deployer) -> None:
    with Hosts() as hosts:
        like_a_docker_host(hosts, docker_user=True)
        new_host.configure(forwarded_app([("tcp", 26280, 8080, 26281, 26282)]))
        old_host = Deployer(root=new_host.root / "old", prefix=new_host.prefix)
        old_host.root.mkdir()
        old_host.configure(forwarded_app([("tcp", 26280, 8080, 26281, 26282)]))
        spare = hosts.subnets["e"]  # routed nowhere yet

        def snapshot(namespace: str) -> tuple[list[str], str]:
            rules = [
                re.sub(r"\[\d+:\d+\]", "", line)
                for line in hosts.save(namespace).splitlines()
                if not line.startswith("#")
            ]
            return rules, hosts.run(namespace, ["ip", "rule"]).stdout

        before = {ns: snapshot(ns) for ns in (hosts.new, hosts.old)}

        def refused(namespace: str, deployer: Deployer, *args: str, code: int = 1) -> str:
            done = deployer_in(hosts, namespace, deployer, *args)
            assert done.returncode == code, f"{args}: exit {done.returncode}: {done.stdout} {done.stderr}"
            return done.stderr

        assert "is not an IPv4 or IPv6 address" in refused(
            hosts.new, new_host, "forward", "web", "--to", "198.18.0.256", code=2
        )
        assert "has no external port 1234" in refused(
            hosts.new, new_host, "forward", "web", "--to", hosts.old_link, "--port", "1234=80", code=2
        )
        assert f"no route to {spare[5]}" in refused(hosts.new, new_host, "forward", "web", "--to", str(spare[5]))
        assert "is an address of this host" in refused(hosts.new, new_host, "forward", "web", "--to", hosts.new_public)
        message = refused(hosts.new, new_host, "forward", "web", "--to", hosts.old_link)
        assert f"{hosts.old_link}:26280/tcp does not accept connections from this host (Connection refused)" in message
        hosts.run(hosts.new, ["ip", "route", "add", str(spare), "via", hosts.old_link], check=True)
        message = refused(hosts.new, new_host, "forward", "web", "--to", str(spare[5]))
        assert f"is reached through the gateway {hosts.old_link} on {hosts.new_dev}" in message
        assert "use --masquerade" in message

        def return_refusal(*args: str) -> str:
            return refused(hosts.old, old_host, "forward-return", *args)

        via = ["--via", hosts.new_link]
        assert "there is no interface 'eth9'" in return_refusal(*via, "--dev", "eth9")
        hosts.sysctl(hosts.old, f"net/ipv4/conf/{hosts.old_dev}/rp_filter", "1")
        assert f"net.ipv4.conf.{hosts.old_dev}.rp_filter=1" in return_refusal(*via, "--dev", hosts.old_dev)
        hosts.sysctl(hosts.old, f"net/ipv4/conf/{hosts.old_dev}/rp_filter", "0")
        assert f"{hosts.client_direct} is not on {hosts.old_dev}'s link" in return_refusal(
            "--via", hosts.client_direct, "--dev", hosts.old_dev
        )
        silent = str(hosts.subnets["b"][9])
        assert f"{silent} does not answer on {hosts.old_dev}" in return_refusal("--via", silent, "--dev", hosts.old_dev)
        hosts.run(hosts.old, ["ip", "rule", "add", "priority", "202", "lookup", "100"], check=True)
        assert "already uses priority 202" in return_refusal(*via, "--dev", hosts.old_dev)
        hosts.run(hosts.old, ["ip", "rule", "del", "priority", "202", "lookup", "100"], check=True)
        hosts.run(
            hosts.old, ["ip", "route", "add", "198.19.255.0/24", "via", hosts.new_link, "table", TABLE], check=True
        )
        assert f"routing table {TABLE} is in use" in return_refusal(*via, "--dev", hosts.old_dev)
        hosts.run(hosts.old, ["ip", "route", "flush", "table", TABLE], check=True)

        # Nothing was applied anywhere: rules, ip rules, forwarding, records.
        hosts.run(hosts.new, ["ip", "route", "del", str(spare)], check=True)
        for namespace in (hosts.new, hosts.old):
            assert snapshot(namespace) == before[namespace]
        assert hosts.run(hosts.new, ["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip() == "0"
        assert not (new_host.root / "state" / "apps" / "web.json").exists()
        assert not (old_host.root / "state" / "forward-return.json").exists()

        # Set up once, a second new host is refused until --off.
        done = deployer_in(hosts, hosts.old, old_host, "forward-return", *via, "--dev", hosts.old_dev)
        assert done.returncode == 0, done.stderr
        assert f"already return via {hosts.new_link}" in return_refusal(
            "--via", str(hosts.subnets["b"][3]), "--dev", hosts.old_dev
        )
        # Uninstall takes the return path away too.
        done = deployer_in(hosts, hosts.old, old_host, "uninstall", "--yes")
        assert done.returncode == 0, done.stderr
        assert "return path" in done.stdout
        assert deployer_leftovers(hosts, hosts.old, old_host.prefix, hosts.new_link) == []
        assert not (old_host.root / "state" / "forward-return.json").exists()
