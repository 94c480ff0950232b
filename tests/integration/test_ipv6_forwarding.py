"""IPv6 forwarding turned on by `ensure_ipv6_forwarding` keeps a default route learnt from router advertisements;
turned on with accept_ra left at 1, the route is gone and later advertisements are ignored.

The bed: a "router" namespace running radvd on two veths, each to a "host" namespace (accept_ra=1, forwarding=0)
that learns its default route from the advertisements. radvd's Mobile IPv6 limits (`AdvIntervalOpt on`) allow an
advertisement every 0.3 to 0.5 s, so a route of 2 s lifetime outlives its first lifetime only if it is renewed.
Nothing here touches the machine's own namespace: addresses and routes stay inside the three namespaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from support.integration import REPO, missing, run

PREFIX = "fd42:ad::/64"  # fd00::/64 is eth0's on these machines
LIFETIME = 2  # AdvDefaultLifetime, seconds: its minimum is MaxRtrAdvInterval, and it takes whole seconds
UPLINK = "r6h"  # the host namespaces' interface to the router


def ip(*args: str) -> str:
    result = run(["ip", *args])
    if result.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def in_namespace(name: str, script: str) -> str:
    result = run(["ip", "netns", "exec", name, "sh", "-ec", script])
    if result.returncode != 0:
        raise AssertionError(f"in {name}: {script}: {result.stderr.strip()}")
    return result.stdout


def default_routes(name: str) -> list[dict[str, Any]]:
    return json.loads(ip("-n", name, "-j", "-6", "route", "show", "default") or "[]")


def sysctl(name: str, key: str) -> str:
    return in_namespace(name, f"cat /proc/sys/net/ipv6/conf/{key}").strip()


def advertisements_received(name: str) -> int:
    """The interface's count of router advertisements in: it counts those the kernel then ignores too."""
    for line in in_namespace(name, f"cat /proc/net/dev_snmp6/{UPLINK}").splitlines():
        fields = line.split()
        if fields[:1] == ["Icmp6InRouterAdvertisements"]:
            return int(fields[1])
    raise AssertionError(f"{name} has no Icmp6InRouterAdvertisements counter")


class RouterBed:
    """The router namespace with radvd, and one host namespace per name in `hosts`."""

    def __init__(self, folder: Path, hosts: tuple[str, ...]) -> None:
        token = secrets.token_hex(3)
        self.router = f"dpt-{token}-r"
        self.hosts = {role: f"dpt-{token}-{role[0]}" for role in hosts}
        self.folder = folder
        self.radvd: subprocess.Popen[str] | None = None

    def build(self) -> None:
        for name in (self.router, *self.hosts.values()):
            ip("netns", "add", name)
            # No duplicate address detection, so link-local addresses, and the advertisements, come at once.
            in_namespace(
                name,
                "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; ip link set lo up",
            )
        in_namespace(self.router, "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")  # radvd needs it
        interfaces = []
        for index, host in enumerate(self.hosts.values()):
            in_namespace(
                host,
                "for key in all default; do echo 1 > /proc/sys/net/ipv6/conf/$key/accept_ra; "
                "echo 0 > /proc/sys/net/ipv6/conf/$key/forwarding; done",
            )
            port = f"r6r{index}"
            ip("-n", self.router, "link", "add", port, "type", "veth", "peer", "name", UPLINK, "netns", host)
            ip("-n", self.router, "link", "set", port, "up")
            ip("-n", host, "link", "set", UPLINK, "up")
            interfaces.append(port)
        config = self.folder / "radvd.conf"
        config.write_text(
            "".join(
                f"interface {port} {{\n"
                "  AdvSendAdvert on;\n"
                "  AdvIntervalOpt on;\n"
                "  MinRtrAdvInterval 0.3;\n"
                "  MaxRtrAdvInterval 0.5;\n"
                "  MinDelayBetweenRAs 0.3;\n"
                f"  AdvDefaultLifetime {LIFETIME};\n"
                f"  prefix {PREFIX} {{ AdvOnLink on; AdvAutonomous on; }};\n"
                "};\n"
                for port in interfaces
            )
        )
        config.chmod(0o644)
        self.radvd = subprocess.Popen(
            ["ip", "netns", "exec", self.router, "radvd", "--nodaemon", "-C", str(config),
             "-p", str(self.folder / "radvd.pid"), "-m", "stderr"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

    def wait_for_routes(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        waiting = list(self.hosts.values())
        while waiting and time.monotonic() < deadline:
            waiting = [name for name in waiting if not ra_route(name)]
            if self.radvd is not None and self.radvd.poll() is not None:
                raise AssertionError(f"radvd stopped: {self.radvd.stderr.read() if self.radvd.stderr else ''}")
            time.sleep(0.05)
        assert not waiting, f"no default route from the advertisements in {waiting} within {timeout:g}s"

    def close(self) -> None:
        if self.radvd is not None and self.radvd.poll() is None:
            self.radvd.terminate()  # by its own pid: `ip netns exec` execs radvd in its place
            try:
                self.radvd.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.radvd.kill()
                self.radvd.wait()
        for name in (self.router, *self.hosts.values()):
            run(["ip", "netns", "del", name])


def ra_route(name: str) -> dict[str, Any] | None:
    return next((route for route in default_routes(name) if route.get("protocol") == "ra"), None)


def renewed(route: dict[str, Any] | None) -> bool:
    """`ip` prints whole seconds left: more than 0 is a second or more."""
    return route is not None and route.get("expires", 0) > 0


@pytest.fixture
def bed(tmp_path: Path) -> Iterator[RouterBed]:
    if os.geteuid() != 0:
        missing("the IPv6 forwarding test needs root (network namespaces)")
    if shutil.which("radvd") is None:
        missing("radvd is not installed (run scripts/install-deps)")
    used = [route["dst"] for route in json.loads(ip("-j", "-6", "route", "show", "table", "all") or "[]")]
    assert not [
        dst for dst in used if dst != "default" and ipaddress.ip_network(dst).overlaps(ipaddress.ip_network(PREFIX))
    ], f"{PREFIX} is in use on this machine"
    made = RouterBed(tmp_path, ("safe", "unsafe"))
    try:
        made.build()
        made.wait_for_routes()
        yield made
    finally:
        made.close()


def test_forwarding_keeps_the_default_route_only_where_accept_ra_is_2(bed: RouterBed):
    safe, unsafe = bed.hosts["safe"], bed.hosts["unsafe"]
    ensure = (
        "import json; from deployer.adapters.ipv6_sysctls import Ipv6Sysctls; "
        "from deployer.host.ipv6_forwarding import ensure_ipv6_forwarding; "
        "print(json.dumps(ensure_ipv6_forwarding(Ipv6Sysctls(), fix=True, skip=['deployer0'])))"
    )
    result = run(
        ["ip", "netns", "exec", safe, sys.executable, "-c", ensure],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr
    turned_on = time.monotonic()
    in_namespace(unsafe, "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding")  # the unsafe way: accept_ra stays 1
    ignored_before = advertisements_received(unsafe)

    assert [line.split(" ", 1)[0] for line in json.loads(result.stdout)] == [
        f"net.ipv6.conf.{UPLINK}.accept_ra=2",
        "net.ipv6.conf.all.forwarding=1",
    ]
    assert (sysctl(safe, "all/forwarding"), sysctl(safe, f"{UPLINK}/accept_ra")) == ("1", "2")
    assert ra_route(safe), "turning forwarding on deleted the route though accept_ra is 2"
    # The kernel deletes the RA-learnt default routes of interfaces whose accept_ra is not 2 at once.
    assert ra_route(unsafe) is None

    # Past the first route's whole lifetime, the safe host's route has time left only if an advertisement renewed
    # it (an expired route may still be listed until the kernel's garbage collection, with "expires" 0 or less).
    time.sleep(max(0.0, turned_on + LIFETIME + 0.3 - time.monotonic()))
    deadline = time.monotonic() + 2  # a slow radvd on a busy machine: only a failure waits this long
    while not renewed(route := ra_route(safe)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert renewed(route), f"the default route was not renewed: advertisements were ignored ({route})"
    assert route is not None and route["dev"] == UPLINK
    # The unsafe host received advertisements meanwhile, and ignored them: no route came back.
    assert advertisements_received(unsafe) > ignored_before
    assert ra_route(unsafe) is None, default_routes(unsafe)
