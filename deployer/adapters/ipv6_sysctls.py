"""The IPv6 sysctls of forwarding and router advertisements, and which default routes came from RAs.

Facts come back as `deployer.plan.ipv6_forwarding.Facts`, which decides what they mean. The sysctls are read and
written under `proc_sys` (a tree of its own in tests); routes come from `ip -j -6 route show default`, JSON, so
nothing here parses free text.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deployer.errors import ForwardingError
from deployer.plan import ipv6_forwarding
from deployer.plan.ipv6_forwarding import Facts, Interface

_NOT_INTERFACES = {"all", "default"}
_NAMES = {"accept_ra", "forwarding"}  # the only sysctls written here


class Ipv6Sysctls:
    def __init__(self, *, proc_sys: Path = Path("/proc/sys"), ip: Sequence[str] = ("ip",)) -> None:
        self.proc_sys = proc_sys
        self.ip = list(ip)

    def kernel_has_ipv6(self) -> bool:
        """Whether the kernel has IPv6 and it is not turned off for the host (`ipv6.disable=1` at boot leaves no
        /proc/sys/net/ipv6; `disable_ipv6=1` keeps it but no address works)."""
        try:
            return (self.proc_sys / "net/ipv6/conf/all/disable_ipv6").read_text().strip() == "0"
        except OSError:
            return False

    def facts(self) -> Facts:
        """Every interface's accept_ra and forwarding, all.forwarding, and the interfaces with a default route
        learnt from an RA. An interface that goes away while it is read is left out."""
        conf = self.proc_sys / ipv6_forwarding.PROC_ROOT
        if not (conf / "all" / "forwarding").exists():
            raise ForwardingError(f"this host has no IPv6 ({conf} is missing): is IPv6 disabled in the kernel?")
        ra_routes = ra_route_devices(self._default_routes())
        interfaces = []
        for entry in sorted(conf.iterdir(), key=lambda path: path.name):
            if entry.name in _NOT_INTERFACES:
                continue
            accept_ra, forwarding = _read_int(entry / "accept_ra"), _read_int(entry / "forwarding")
            if accept_ra is None or forwarding is None:
                continue
            interfaces.append(Interface(entry.name, accept_ra, forwarding, entry.name in ra_routes))
        all_forwarding = _read_int(conf / "all" / "forwarding")
        if all_forwarding is None:
            raise ForwardingError(f"cannot read {conf / 'all' / 'forwarding'}")
        return Facts(all_forwarding, tuple(interfaces))

    def set(self, key: str, value: str) -> None:
        """Write one interface's (or all's) accept_ra or forwarding, named in sysctl's notation, unless it holds the
        value already."""
        parts = ipv6_forwarding.proc_path(key).split("/")
        if (
            parts[:3] != ["net", "ipv6", "conf"]
            or len(parts) != 5
            or parts[3] in ("", ".", "..")
            or parts[4] not in _NAMES
        ):
            raise ForwardingError(f"not an IPv6 interface sysctl: {key!r}")
        path = self.proc_sys.joinpath(*parts)
        try:
            if path.read_text().strip() != value:
                path.write_text(value)
        except OSError as exc:
            raise ForwardingError(f"cannot set {key}={value}: {exc.strerror}") from None

    def _default_routes(self) -> list[dict[str, Any]]:
        argv = [*self.ip, "-j", "-6", "route", "show", "default"]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL, check=False
            )
        except FileNotFoundError:
            raise ForwardingError("ip (iproute2) is not installed") from None
        if result.returncode != 0:
            stderr = " ".join(result.stderr.split())[:300] or f"exit code {result.returncode}"
            raise ForwardingError(f"ip -6 route show default failed: {stderr}")
        return parse_routes(result.stdout)


def parse_routes(out: str) -> list[dict[str, Any]]:
    """`ip -j` prints a JSON list (nothing at all when there is no route)."""
    try:
        data = json.loads(out) if out.strip() else []
    except ValueError:
        raise ForwardingError(f"ip -j -6 route show default printed no JSON: {out[:200]!r}") from None
    if not isinstance(data, list):
        raise ForwardingError(f"ip -j -6 route show default printed no list: {out[:200]!r}")
    return [route for route in data if isinstance(route, dict)]


def ra_route_devices(routes: list[dict[str, Any]]) -> frozenset[str]:
    """The devices of the default routes whose protocol is `ra`, a multipath route's next hops included."""
    devices = set()
    for route in routes:
        if route.get("protocol") != "ra":
            continue
        hops = [route, *(hop for hop in route.get("nexthops") or [] if isinstance(hop, dict))]
        devices.update(hop["dev"] for hop in hops if isinstance(hop.get("dev"), str))
    return frozenset(devices)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
