"""Routes, `ip rule`s, neighbours, one ICMP echo and the sysctls forwarding depends on.

Facts come back as the plain types of `deployer.plan.forwarding`, which decides what they mean;
changes are the `ip` argument lists it rendered. `ip -j` prints JSON, so nothing here parses
free text.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

import sh

from deployer.errors import ForwardingError
from deployer.plan import forwarding


class Routing:
    def __init__(self, *, proc_sys: Path = Path("/proc/sys")) -> None:
        self.proc_sys = proc_sys

    # --- facts ---------------------------------------------------------------------------------

    def route_get(self, address: str) -> forwarding.Route:
        try:
            return forwarding.parse_route_get(self._json(_family(address), "route", "get", address))
        except ForwardingError as exc:
            return forwarding.Route(kind=None, error=str(exc).rpartition(": ")[2])

    def link(self, name: str) -> forwarding.Link:
        try:
            return forwarding.parse_link(name, self._json("addr", "show", "dev", name))
        except ForwardingError:
            return forwarding.Link(name, exists=False)

    def rules(self, ipv6: bool = False) -> list[dict[str, Any]]:
        return self._json("-6" if ipv6 else "-4", "rule", "show")

    def table_routes(self, table: int, ipv6: bool = False) -> list[dict[str, Any]]:
        try:
            return self._json("-6" if ipv6 else "-4", "route", "show", "table", str(table))
        except ForwardingError as exc:
            if "does not exist" in str(exc):  # a table that never had a route
                return []
            raise

    def probe_peer(self, address: str, dev: str | None, timeout: float = 1.0) -> forwarding.Peer:
        """One ICMP echo; then what the neighbour table learnt meanwhile (ARP answers even where ICMP is filtered)."""
        echo = self.echo(address, dev, timeout)
        if dev is None:
            return forwarding.Peer(echo)
        try:
            lladdr, state = forwarding.parse_neighbour(address, self._json("neigh", "show", address, "dev", dev))
        except ForwardingError:
            lladdr, state = None, ()
        return forwarding.Peer(echo, lladdr, state)

    def echo(self, address: str, dev: str | None = None, timeout: float = 1.0) -> bool:
        """Send one ICMP echo request (ICMPv6 for an IPv6 address) and wait for its reply. Needs a raw socket (root).

        An ICMPv6 raw socket gets the message without the IPv6 header, and the kernel fills in its checksum
        (over a pseudo-header with the addresses, which only it knows for sure)."""
        ipv6 = ":" in address
        request, reply = (128, 129) if ipv6 else (8, 0)
        ident, sequence = os.getpid() & 0xFFFF, int(time.monotonic() * 1000) & 0xFFFF
        header = struct.pack("!BBHHH", request, 0, 0, ident, sequence)
        payload = b"deployer preflight"
        checksum = 0 if ipv6 else _checksum(header + payload)
        packet = struct.pack("!BBHHH", request, 0, checksum, ident, sequence) + payload
        family, protocol = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if ipv6 else (socket.AF_INET, socket.IPPROTO_ICMP)
        try:
            with socket.socket(family, socket.SOCK_RAW, protocol) as sock:
                if dev:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
                sock.sendto(packet, (address, 0))
                deadline = time.monotonic() + timeout
                while (left := deadline - time.monotonic()) > 0:
                    sock.settimeout(left)
                    data, (source, *_) = sock.recvfrom(2048)
                    start = 0 if ipv6 else (data[0] & 0x0F) * 4
                    kind, _, _, got_ident, got_sequence = struct.unpack("!BBHHH", data[start : start + 8])
                    if _same(source, address) and kind == reply and (got_ident, got_sequence) == (ident, sequence):
                        return True
        except (OSError, struct.error):
            return False
        return False

    def tcp_open(self, address: str, port: int, timeout: float = 2.0) -> str | None:
        """None when address:port accepts a TCP connection, else the reason it did not."""
        try:
            with socket.create_connection((address, port), timeout=timeout):
                return None
        except TimeoutError:
            return f"no answer within {timeout:g}s"
        except OSError as exc:
            return exc.strerror or type(exc).__name__

    def sysctl(self, key: str) -> str | None:
        try:
            return (self.proc_sys / key).read_text().strip()
        except OSError:
            return None

    def sysctl_writable(self, key: str) -> bool:
        return os.access(self.proc_sys / key, os.W_OK)

    # --- changes -------------------------------------------------------------------------------

    def set_sysctl(self, key: str, value: str) -> None:
        path = self.proc_sys / key
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as exc:
            raise ForwardingError(f"cannot set {key.replace('/', '.')}={value}: {exc.strerror}") from None

    def run(self, command: list[str]) -> None:
        """Run one `ip` command rendered by deployer.plan.forwarding."""
        if not command or command[0] != "ip":
            raise ForwardingError(f"not an ip command: {command!r}")
        try:
            sh.Command("ip").bake(_tty_out=False)(*command[1:])
        except sh.ErrorReturnCode as exc:
            raise ForwardingError(f"{' '.join(command)} failed: {_stderr(exc)}") from None
        except sh.CommandNotFound:
            raise ForwardingError("ip (iproute2) is not installed") from None

    def _json(self, *arguments: str) -> list[dict[str, Any]]:
        try:
            out = str(sh.Command("ip").bake(_tty_out=False)("-j", *arguments))
        except sh.ErrorReturnCode as exc:
            raise ForwardingError(f"ip {' '.join(arguments)}: {_stderr(exc)}") from None
        except sh.CommandNotFound:
            raise ForwardingError("ip (iproute2) is not installed") from None
        try:
            data = json.loads(out) if out.strip() else []
        except ValueError:
            raise ForwardingError(f"ip -j {' '.join(arguments)} printed no JSON: {out[:200]!r}") from None
        return data if isinstance(data, list) else []


def _family(address: str) -> str:
    """`ip`'s family option for an address."""
    return "-6" if ":" in address else "-4"


def _same(one: str, other: str) -> bool:
    """Two spellings of one address (an IPv6 address has several)."""
    try:
        return ipaddress.ip_address(one.partition("%")[0]) == ipaddress.ip_address(other)
    except ValueError:
        return False


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _stderr(exc: sh.ErrorReturnCode) -> str:
    return " ".join(exc.stderr.decode("utf-8", "replace").split())[:300] or f"exit code {exc.exit_code}"
