"""Three machines from network namespaces, for moving an app from one host to another.

    client ──(a)── new ──(b)── old
       └──────────(c)──────────┘

- (a) the client's link to the new host: the client's default route goes through it;
- (b) the layer-2 link between the new and the old host (a veth pair: each side has the
  other's MAC in its neighbour table);
- (c) the old host's own uplink: clients whose DNS still names the old host come this way, and
  it is the old host's default route, so replies it sends without help go here, not through
  the new host.

Optionally the old host runs its app behind a DNAT to a "container" namespace (as a deployer
host does), and the new host gets a link to the root namespace through which it reaches the
containers of the machine's dockerd (`root_link`).

Every subnet is a free /24 of 198.18.0.0/15, chosen under the same lock as OutsideClient's. With
`ipv6`, links (a), (b) and (c) get IPv6 addresses too, from fd42:f06d::/48 (the machine's own is fd00::/64;
no other test uses it, and each namespace has routes of its own), with the same default routes.
Everything is removed on exit, on failure too: processes, namespaces, the root veth and route.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import random
import secrets
import subprocess
from collections.abc import Sequence
from typing import Any

from support import netns
from support.beds import Bed

PREFIX = netns.DEFAULT_PREFIX  # so a killed run's leftovers go with the session cleanup
LINKS6 = {"a": "fd42:f06d:a::", "b": "fd42:f06d:b::", "c": "fd42:f06d:c::"}


def ip(*args: str, check: bool = True) -> str:
    return netns._ip(*args, check=check)


class Hosts(Bed):
    def __init__(self, *, container: bool = False, root_link: bool = False, ipv6: bool = False) -> None:
        token = secrets.token_hex(3)
        self.client, self.new, self.old = (f"{PREFIX}{token}-{s}" for s in ("c", "n", "o"))
        self.kube = f"{PREFIX}{token}-k" if container else None
        self.root_if = f"{PREFIX}{token}-r" if root_link else None
        self.want_container, self.want_root, self.want_ipv6 = container, root_link, ipv6
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self.root_routes: list[list[str]] = []
        # addresses, filled in by _build
        self.client_ip = self.new_public = self.new_link = self.old_link = ""
        self.old_public = self.client_direct = self.root_ip = self.new_root_ip = ""
        self.container_ip = self.old_container_gw = ""
        self.old_dev, self.new_dev = "to-new", "to-old"
        # with ipv6: the same hosts' IPv6 addresses, [1] of each link's prefix on the new host's side, [2] beyond
        self.new_public6, self.client_ip6 = f"{LINKS6['a']}1", f"{LINKS6['a']}2"
        self.new_link6, self.old_link6 = f"{LINKS6['b']}1", f"{LINKS6['b']}2"
        self.old_public6, self.client_direct6 = f"{LINKS6['c']}1", f"{LINKS6['c']}2"

    def _subnets(self, count: int) -> list[ipaddress.IPv4Network]:
        used = netns._networks_in_use()
        free = [n for n in netns.ADDRESS_POOL.subnets(new_prefix=24) if not any(n.overlaps(u) for u in used)]
        return random.sample(free, count)

    def _build(self) -> None:
        for name in filter(None, (self.client, self.new, self.old, self.kube)):
            ip("netns", "add", name)
            self.namespaces.append(name)
            ip("-n", name, "link", "set", "lo", "up")
        with open(netns._LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            a, b, c, d, e = self._subnets(5)
            if self.want_root:
                # Created under the lock: from now on other test runs see the subnets as taken.
                root = [str(h) for h in list(d.hosts())[:2]]
                self.root_ip, self.new_root_ip = root
                ip("link", "add", self.root_if, "type", "veth", "peer", "name", "to-root", "netns", self.new)
                ip("addr", "add", f"{self.root_ip}/24", "dev", self.root_if)
                ip("link", "set", self.root_if, "up")
                route = ["route", "add", str(a), "via", self.new_root_ip, "dev", self.root_if]
                ip(*route)
                self.root_routes.append(route)
        self.new_public, self.client_ip = (str(h) for h in list(a.hosts())[:2])
        self.new_link, self.old_link = (str(h) for h in list(b.hosts())[:2])
        self.old_public, self.client_direct = (str(h) for h in list(c.hosts())[:2])
        self.subnets = {"a": a, "b": b, "c": c, "d": d, "e": e}
        self._pair(self.client, "to-new", self.client_ip, self.new, "to-client", self.new_public)
        self._pair(self.new, self.new_dev, self.new_link, self.old, self.old_dev, self.old_link)
        self._pair(self.client, "to-old", self.client_direct, self.old, "uplink", self.old_public)
        ip("-n", self.client, "route", "add", "default", "via", self.new_public)
        ip("-n", self.old, "route", "add", "default", "via", self.client_direct)
        if self.want_ipv6:
            for namespace, dev, address in (
                (self.client, "to-new", self.client_ip6),
                (self.new, "to-client", self.new_public6),
                (self.new, self.new_dev, self.new_link6),
                (self.old, self.old_dev, self.old_link6),
                (self.client, "to-old", self.client_direct6),
                (self.old, "uplink", self.old_public6),
            ):  # nodad: usable at once, not tentative for a second
                ip("-n", namespace, "addr", "add", f"{address}/64", "dev", dev, "nodad")
            ip("-n", self.client, "-6", "route", "add", "default", "via", self.new_public6)
            ip("-n", self.old, "-6", "route", "add", "default", "via", self.client_direct6)
        if self.want_root:
            ip("-n", self.new, "addr", "add", f"{self.new_root_ip}/24", "dev", "to-root")
            ip("-n", self.new, "link", "set", "to-root", "up")
        if self.kube:
            self.old_container_gw, self.container_ip = (str(h) for h in list(e.hosts())[:2])
            self._pair(self.old, "bridge", self.old_container_gw, self.kube, "eth0", self.container_ip)
            ip("-n", self.kube, "route", "add", "default", "via", self.old_container_gw)
            self.sysctl(self.old, "net/ipv4/ip_forward", "1")

    def _pair(self, left: str, left_if: str, left_ip: str, right: str, right_if: str, right_ip: str) -> None:
        ip("-n", left, "link", "add", left_if, "type", "veth", "peer", "name", right_if, "netns", right)
        ip("-n", left, "addr", "add", f"{left_ip}/24", "dev", left_if)
        ip("-n", right, "addr", "add", f"{right_ip}/24", "dev", right_if)
        ip("-n", left, "link", "set", left_if, "up")
        ip("-n", right, "link", "set", right_if, "up")

    # --- acting inside a host ----------------------------------------------------------------------

    def argv(self, namespace: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", namespace, *argv]

    def run(self, namespace: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.argv(namespace, argv), **kwargs)

    def popen(self, namespace: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(namespace, argv), **kwargs)
        self.procs.append(proc)
        return proc

    def sysctl(self, namespace: str, key: str, value: str) -> None:
        self.run(namespace, ["sh", "-c", f"echo {value} > /proc/sys/{key}"], check=True)

    def iptables_restore(self, namespace: str, text: str) -> None:
        result = self.run(namespace, ["iptables-restore", "--noflush"], input=text)
        assert result.returncode == 0, result.stderr

    def save(self, namespace: str, command: str = "iptables-save") -> str:
        return self.run(namespace, [command], check=True).stdout

    def nft_table(self, namespace: str, table: str, family: str = "ip") -> str:
        """`nft list table FAMILY TABLE` in the namespace; empty when there is none."""
        return self.run(namespace, ["nft", "list", "table", family, table]).stdout

    def close(self) -> None:
        netns.stop_processes(self.procs, timeout=3)
        for route in self.root_routes:
            ip("route", "del", *route[2:], check=False)
        self.root_routes.clear()
        if self.root_if:
            ip("link", "del", self.root_if, check=False)
        for name in self.namespaces:
            with contextlib.suppress(netns.NetnsError):
                netns._delete_namespace(name)
        self.namespaces.clear()
