"""Network namespaces that play "a client on another machine" in integration tests.

Traffic from an :class:`OutsideClient` enters the host through a veth
interface, so it traverses nat PREROUTING like real outside traffic (unlike
connections from the host itself, which only see OUTPUT), and its source
address is one the host does not own.

Addresses come from 198.18.0.0/15, the range reserved for benchmarking, and
each client gets a /24 that no interface or route on the host uses yet::

    with OutsideClient() as client:
        out = client.run(["curl", "-fsS", f"http://{client.host_ip}:8080/"],
                         capture_output=True, text=True, check=True)

Needs root and iproute2. Only the standard library is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from support.beds import Bed

__all__ = [
    "ADDRESS_POOL",
    "DEFAULT_PREFIX",
    "NetnsError",
    "OutsideClient",
    "cleanup_stale",
    "outside_clients",
    "stop_processes",
]

DEFAULT_PREFIX = "dpt-"
ADDRESS_POOL = ipaddress.ip_network("198.18.0.0/15")

# Held while choosing a subnet and claiming it, so parallel test processes
# cannot pick the same one.
_LOCK_PATH = "/run/deployer-netns.lock"
_IFNAMSIZ = 15
_NAME_TOKEN_LEN = 6
_PREFIX_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_ROUTE_TYPES = {
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "anycast",
    "blackhole",
    "unreachable",
    "prohibit",
    "throw",
    "nat",
}


class NetnsError(RuntimeError):
    """An `ip` command failed; the message carries its stderr."""


def _ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc.stdout


def _validate_prefix(prefix: str) -> None:
    # Interface names are limited to 15 bytes: prefix + token + "-h".
    if not _PREFIX_RE.match(prefix) or len(prefix) + _NAME_TOKEN_LEN + 2 > _IFNAMSIZ:
        raise ValueError(
            f"prefix {prefix!r} must be lower-case letters, digits and '-', "
            f"at most {_IFNAMSIZ - _NAME_TOKEN_LEN - 2} characters"
        )


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network on a host interface or in any host routing table."""
    used: list[ipaddress.IPv4Network] = []
    for line in _ip("-4", "-o", "addr", "show").splitlines():
        fields = line.split()
        if "inet" in fields:
            used.append(ipaddress.ip_interface(fields[fields.index("inet") + 1]).network)
    for line in _ip("-4", "route", "show", "table", "all").splitlines():
        fields = line.split()
        if not fields:
            continue
        dest = fields[1] if fields[0] in _ROUTE_TYPES and len(fields) > 1 else fields[0]
        if dest == "default":
            continue
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(dest, strict=False))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _networks_in_use()
    candidates = [net for net in ADDRESS_POOL.subnets(new_prefix=24) if not any(net.overlaps(u) for u in used)]
    if not candidates:
        raise NetnsError(f"no free /24 left in {ADDRESS_POOL}")
    # A random pick keeps leftovers of a crashed run from being reused at once.
    return random.choice(candidates)


def _kill_namespace_processes(name: str, timeout: float = 2.0) -> None:
    """Stop what still runs inside a namespace, or it would outlive deletion."""
    pids = [int(p) for p in _ip("netns", "pids", name, check=False).split() if p.isdigit()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
            if pids:
                time.sleep(0.05)
        if not pids:
            return


def _delete_namespace(name: str) -> None:
    _kill_namespace_processes(name)
    _ip("netns", "del", name, check=False)


def _link_names() -> list[str]:
    names = []
    for line in _ip("-o", "link", "show").splitlines():
        # "12: dpt-1a2b3c-h@if11: <BROADCAST,..." -> "dpt-1a2b3c-h"
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def _namespace_names() -> list[str]:
    # Lines look like "dpt-1a2b3c (id: 3)" or just "dpt-1a2b3c".
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def stop_processes(procs: list[subprocess.Popen], timeout: float) -> None:
    """SIGTERM what still runs, SIGKILL what outlives `timeout`, and forget them all."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    procs.clear()


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Delete namespaces and host veths named ``prefix*`` left by a killed run.

    Call it once before a test session; it also removes clients of a
    concurrent run using the same prefix, so give parallel runs their own.
    Returns the names it removed.
    """
    _validate_prefix(prefix)
    removed = []
    for name in _namespace_names():
        if name.startswith(prefix):
            _delete_namespace(name)
            removed.append(name)
    for link in _link_names():
        # Deleting one end of a veth pair also deletes the other.
        if link.startswith(prefix) and link in _link_names():
            _ip("link", "del", link, check=False)
            removed.append(link)
    return removed


class OutsideClient(Bed):
    """A network namespace wired to the host by a veth pair.

    Inside, the client has ``client_ip`` and a default route via ``host_ip``,
    the host end of the pair. The namespace, the veth pair and any process
    still running inside are removed on exit, even when the body raised.
    """

    def __init__(
        self,
        prefix: str = DEFAULT_PREFIX,
        subnet: str | ipaddress.IPv4Network | None = None,
        ipv6: str | None = None,
    ) -> None:
        _validate_prefix(prefix)
        # With `ipv6` (a /64): the host end has its ::1, the client its ::2 and an IPv6 default route through it.
        self._ipv6 = ipaddress.IPv6Network(ipv6) if ipv6 is not None else None
        self.host_ip6 = ""
        self.client_ip6 = ""
        self.name = prefix + secrets.token_hex(_NAME_TOKEN_LEN // 2)
        self.host_if = self.name + "-h"
        self._peer_if = self.name + "-n"
        self._requested_subnet = ipaddress.ip_network(subnet) if subnet is not None else None
        self.subnet: ipaddress.IPv4Network | None = None
        self.host_ip = ""
        self.client_ip = ""
        self._procs: list[subprocess.Popen] = []
        self._created = False

    def __repr__(self) -> str:
        return f"OutsideClient(name={self.name!r}, client_ip={self.client_ip!r}, host_ip={self.host_ip!r})"

    def _build(self) -> None:
        self._created = True
        _ip("netns", "add", self.name)
        with open(_LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            subnet = self._requested_subnet or _free_subnet()
            if self._requested_subnet is not None:
                clash = [u for u in _networks_in_use() if subnet.overlaps(u)]
                if clash:
                    raise NetnsError(f"{subnet} overlaps {clash[0]}, already used on this host")
            hosts = subnet.hosts()
            host_ip, client_ip = str(next(hosts)), str(next(hosts))
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self._peer_if, "netns", self.name)
            _ip("addr", "add", f"{host_ip}/{subnet.prefixlen}", "dev", self.host_if)
        if self._ipv6 is not None:
            # No duplicate address detection on either end: while a link-local address is tentative (a second or
            # so after the link comes up) neighbour discovery cannot run, and the first IPv6 packets are lost.
            Path(f"/proc/sys/net/ipv6/conf/{self.host_if}/accept_dad").write_text("0")
            self.run(["sysctl", "-qw", f"net.ipv6.conf.{self._peer_if}.accept_dad=0"], check=True)
        _ip("link", "set", self.host_if, "up")

        inside = ("-n", self.name)
        _ip(*inside, "link", "set", "lo", "up")
        _ip(*inside, "addr", "add", f"{client_ip}/{subnet.prefixlen}", "dev", self._peer_if)
        _ip(*inside, "link", "set", self._peer_if, "up")
        _ip(*inside, "route", "add", "default", "via", host_ip)
        self.subnet, self.host_ip, self.client_ip = subnet, host_ip, client_ip
        if self._ipv6 is not None:
            host_ip6, client_ip6 = str(self._ipv6[1]), str(self._ipv6[2])
            _ip("-6", "addr", "add", f"{host_ip6}/64", "dev", self.host_if, "nodad")
            _ip(*inside, "-6", "addr", "add", f"{client_ip6}/64", "dev", self._peer_if, "nodad")
            _ip(*inside, "-6", "route", "add", "default", "via", host_ip6)
            self.host_ip6, self.client_ip6 = host_ip6, client_ip6

    def _argv(self, argv: Sequence[str]) -> list[str]:
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of strings, not one string")
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
        """``subprocess.run`` inside the namespace; keyword arguments pass through."""
        return subprocess.run(self._argv(argv), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """``subprocess.Popen`` inside the namespace; stopped on exit if still running."""
        proc = subprocess.Popen(self._argv(argv), **kwargs)
        self._procs.append(proc)
        return proc

    def close(self) -> None:
        """Remove everything this client created; safe to call twice."""
        stop_processes(self._procs, timeout=2)
        if not self._created:
            return
        self._created = False
        # Deleting either end removes the pair, even if the namespace lingers.
        _ip("link", "del", self.host_if, check=False)
        _delete_namespace(self.name)


@contextlib.contextmanager
def outside_clients(count: int, prefix: str = DEFAULT_PREFIX) -> Iterator[list[OutsideClient]]:
    """Several independent clients at once, each with its own subnet."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(OutsideClient(prefix)) for _ in range(count)]
