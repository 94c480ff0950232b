"""The [cluster] table: one shared address served by several hosts, each answering the flows of its hash buckets.

Parsed on its own, beside the rest of the config, with its own checks: a bucket count the `cluster` match can
hold (at most 32), every host once, every address inside the interface's subnet, a seed that is a number. Each
error names the key, so a cluster is never started on a config that would split or double its traffic.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.errors import ConfigError

MAX_BUCKETS = 32  # the cluster match's node mask is 32 bits wide (XT_CLUSTER_NODES_MAX)
DEFAULT_MARK = 0x4000000  # one connmark bit; forwarding's default is 0x2000000
HOST_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
INTERFACE_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_.-]{0,14}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
ARP_MODES = ("mangle", "none")

KEYS = {
    "address",
    "interface",
    "subnet",
    "buckets",
    "hash_seed",
    "host",
    "hosts",
    "advert_interval",
    "router_id_base",
    "mark",
    "multicast_mac",
    "check_interval",
    "handover_delay",
    "arp",
    "unicast",
    "address6",
    "subnet6",
}


@dataclass(frozen=True)
class ClusterHost:
    name: str
    address: str  # its own address on the interface: keepalived's VRRP adverts come from it
    address6: str | None = None  # its own IPv6 address there: the IPv6 relays go to it


@dataclass(frozen=True)
class ClusterConfig:
    """The shared address and who serves which of its buckets. The bucket count never changes at run time:
    changing it rehashes every flow."""

    address: str
    interface: str
    subnet: str
    buckets: int
    hash_seed: int
    host: str  # this host's name, one of `hosts`
    hosts: tuple[ClusterHost, ...]
    advert_interval: float = 0.2
    router_id_base: int = 50  # bucket b is VRRP instance "b<b>" with virtual_router_id base + b
    mark: int = DEFAULT_MARK
    multicast_mac: str = ""
    check_interval: float = 0.2  # how often the agent checks this host's active instances
    handover_delay: float = 0.25  # a bucket gained is taken this long after keepalived said MASTER (see parse)
    arp: str = "mangle"  # "mangle": the hosts answer ARP for the address with the multicast MAC; "none": the router
    unicast: bool = False  # VRRP adverts to the other hosts' addresses only, and VRRP from anyone else dropped
    address6: str | None = None  # the shared IPv6 address, on a dual-stack host; the same buckets take it in
    subnet6: str | None = None  # the interface's IPv6 subnet: address6 and every host's address6 are in it

    @property
    def peers(self) -> tuple[ClusterHost, ...]:
        """The other hosts: whose VRRP adverts this host listens to."""
        return tuple(h for h in self.hosts if h.name != self.host)

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)

    def peer(self, name: str) -> ClusterHost:
        return next(h for h in self.hosts if h.name == name)


def default_multicast_mac(address: str) -> str:
    """03:00 and the address's four bytes: multicast (bit 0) and locally administered (bit 1), one per address."""
    return "03:00:" + ":".join(f"{byte:02x}" for byte in ipaddress.IPv4Address(address).packed)


def parse_cluster(data: Any, *, path: Path) -> ClusterConfig:
    if not isinstance(data, dict):
        raise ConfigError("must be a table", path=path, key="cluster")
    for name in data:
        if name not in KEYS:
            raise ConfigError(f"unknown key (allowed: {', '.join(sorted(KEYS))})", path=path, key=f"cluster.{name}")
    key = lambda k: f"cluster.{k}"  # noqa: E731

    interface = _string(data, "interface", path=path)
    if not INTERFACE_RE.fullmatch(interface):
        raise ConfigError("must be a Linux interface name of at most 15 characters", path=path, key=key("interface"))
    try:
        subnet = ipaddress.IPv4Network(_string(data, "subnet", path=path), strict=True)
    except ValueError:
        raise ConfigError(
            "must be the interface's IPv4 subnet, e.g. 198.18.10.0/24", path=path, key=key("subnet")
        ) from None
    address = _address_in(data.get("address"), subnet, path=path, key=key("address"))

    buckets = data.get("buckets")
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise ConfigError(
            f"must be a whole number from 1 to {MAX_BUCKETS} (the cluster match's limit)", path=path, key=key("buckets")
        )
    hash_seed = _seed(data.get("hash_seed"), path=path)

    hosts_data = data.get("hosts")
    if not isinstance(hosts_data, list) or not hosts_data:
        raise ConfigError("at least one [[cluster.hosts]] entry is required", path=path, key=key("hosts"))
    hosts: list[ClusterHost] = []
    for i, entry in enumerate(hosts_data):
        where = f"cluster.hosts[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", path=path, key=where)
        for name in entry:
            if name not in ("name", "address", "address6"):
                raise ConfigError("unknown key (allowed: address, address6, name)", path=path, key=f"{where}.{name}")
        name = entry.get("name")
        if not isinstance(name, str) or not HOST_NAME_RE.fullmatch(name):
            raise ConfigError(
                "must be 1 to 31 lowercase letters, digits or '-', starting with a letter",
                path=path,
                key=f"{where}.name",
            )
        host_address = _address_in(entry.get("address"), subnet, path=path, key=f"{where}.address")
        for other in hosts:
            if other.name == name or other.address == host_address:
                raise ConfigError(
                    f"host {name!r} ({host_address}) is listed twice: {other.name!r} has that "
                    f"{'name' if other.name == name else 'address'}",
                    path=path,
                    key=where,
                )
        if host_address == address:
            raise ConfigError(
                "is the shared address; each host needs an address of its own", path=path, key=f"{where}.address"
            )
        hosts.append(ClusterHost(name=name, address=host_address, address6=entry.get("address6")))
    if buckets < len(hosts):
        raise ConfigError(
            f"must be at least the number of hosts ({len(hosts)}), so each host is home to a bucket",
            path=path,
            key=key("buckets"),
        )

    host = _string(data, "host", path=path)
    if host not in {h.name for h in hosts}:
        raise ConfigError(
            f"must name this host, one of [[cluster.hosts]] ({', '.join(h.name for h in hosts)})",
            path=path,
            key=key("host"),
        )

    advert = _number(data, "advert_interval", 0.2, path=path)
    if not 0.01 <= advert <= 40:  # VRRPv3 counts it in centiseconds, 12 bits
        raise ConfigError("must be from 0.01 to 40 seconds", path=path, key=key("advert_interval"))
    router_id_base = data.get("router_id_base", 50)
    if (
        isinstance(router_id_base, bool)
        or not isinstance(router_id_base, int)
        or not 1 <= router_id_base <= 256 - buckets
    ):
        raise ConfigError(
            f"must be a whole number from 1 to {256 - buckets}: the buckets' VRRP router ids run "
            "from it and stay at most 255",
            path=path,
            key=key("router_id_base"),
        )
    mark = data.get("mark", DEFAULT_MARK)
    if isinstance(mark, bool) or not isinstance(mark, int) or mark <= 0 or mark > 0xFFFFFFFF or mark & (mark - 1):
        raise ConfigError(
            "must be a single bit, e.g. 0x4000000: it is matched with itself as the mask", path=path, key=key("mark")
        )
    mac = data.get("multicast_mac", default_multicast_mac(address))
    if not isinstance(mac, str) or not MAC_RE.fullmatch(mac) or not int(mac[:2], 16) & 1:
        raise ConfigError(
            "must be a multicast MAC address in lowercase, e.g. 03:00:c6:12:0a:64 (the first byte odd)",
            path=path,
            key=key("multicast_mac"),
        )
    arp = data.get("arp", "mangle")
    if arp not in ARP_MODES:
        raise ConfigError("must be 'mangle' or 'none'", path=path, key=key("arp"))
    unicast = data.get("unicast", False)
    if not isinstance(unicast, bool):
        raise ConfigError("must be true or false", path=path, key=key("unicast"))
    check_interval = _number(data, "check_interval", 0.2, path=path)
    if check_interval <= 0:
        raise ConfigError("must be greater than 0", path=path, key=key("check_interval"))
    # Two hosts can become master of one bucket at once (their timers ran out together); the one of lower
    # priority steps down when it hears the other's next advert, at most one advert interval later. Taking a
    # bucket only after that long means the loser never took it in.
    handover = _number(data, "handover_delay", round(advert * 1.25, 3), path=path)
    if not 0 <= handover <= 10:
        raise ConfigError("must be from 0 to 10 seconds", path=path, key=key("handover_delay"))

    subnet6, address6, hosts = _ipv6(data, hosts, path=path)
    return ClusterConfig(
        address=address,
        interface=interface,
        subnet=str(subnet),
        buckets=buckets,
        hash_seed=hash_seed,
        host=host,
        hosts=tuple(hosts),
        advert_interval=advert,
        router_id_base=router_id_base,
        mark=mark,
        multicast_mac=mac,
        check_interval=check_interval,
        handover_delay=handover,
        arp=arp,
        unicast=unicast,
        address6=address6,
        subnet6=subnet6,
    )


def _ipv6(
    data: Mapping[str, Any], hosts: list[ClusterHost], *, path: Path
) -> tuple[str | None, str | None, list[ClusterHost]]:
    """The shared IPv6 address and its subnet, and each host's own IPv6 address (where relays of IPv6 flows go):
    all of them or none."""
    if "address6" not in data and "subnet6" not in data:
        for i, host in enumerate(hosts):
            if host.address6 is not None:
                raise ConfigError(
                    "needs [cluster] address6 and subnet6: a host's IPv6 address serves the shared IPv6 address",
                    path=path,
                    key=f"cluster.hosts[{i}].address6",
                )
        return None, None, hosts
    try:
        subnet6 = ipaddress.IPv6Network(_string(data, "subnet6", path=path), strict=True)
    except ValueError:
        raise ConfigError(
            "must be the interface's IPv6 subnet, e.g. 2001:db8:10::/64", path=path, key="cluster.subnet6"
        ) from None
    address6 = _address6_in(data.get("address6"), subnet6, path=path, key="cluster.address6")
    found: list[ClusterHost] = []
    for i, host in enumerate(hosts):
        own = _address6_in(host.address6, subnet6, path=path, key=f"cluster.hosts[{i}].address6")
        if own == address6 or own in {h.address6 for h in found}:
            whose = "the shared IPv6 address" if own == address6 else "another host's"
            raise ConfigError(
                f"{own} is {whose}; each host needs an IPv6 address of its own",
                path=path,
                key=f"cluster.hosts[{i}].address6",
            )
        found.append(ClusterHost(name=host.name, address=host.address, address6=own))
    return str(subnet6), address6, found


def _address6_in(value: Any, subnet: ipaddress.IPv6Network, *, path: Path, key: str) -> str:
    try:
        address = ipaddress.IPv6Address(value if isinstance(value, str) else "")
    except ValueError:
        raise ConfigError(
            "must be an IPv6 address (with [cluster] address6, on every host)", path=path, key=key
        ) from None
    if address not in subnet or address == subnet.network_address or address.is_multicast or address.is_link_local:
        raise ConfigError(
            f"{address} is outside the interface's IPv6 subnet {subnet}: hosts on one L2 segment share the address",
            path=path,
            key=key,
        )
    return str(address)


def check_cluster_apps(cluster: ClusterConfig | None, cluster_apps: Mapping[str, bool], *, path: Path) -> None:
    """An app served on the shared address needs a [cluster] to share it."""
    if cluster is None:
        for name, served in cluster_apps.items():
            if served:
                raise ConfigError(
                    "needs a [cluster] table: it names the shared address", path=path, app=name, key="cluster"
                )


def _string(data: Mapping[str, Any], name: str, *, path: Path) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ConfigError("is required and must be a string", path=path, key=f"cluster.{name}")
    return value


def _address_in(value: Any, subnet: ipaddress.IPv4Network, *, path: Path, key: str) -> str:
    try:
        address = ipaddress.IPv4Address(value if isinstance(value, str) else "")
    except ValueError:
        raise ConfigError("must be an IPv4 address", path=path, key=key) from None
    if address not in subnet or address in (subnet.network_address, subnet.broadcast_address):
        raise ConfigError(
            f"{address} is outside the interface's subnet {subnet}: hosts on one L2 segment share the address",
            path=path,
            key=key,
        )
    return str(address)


def _seed(value: Any, *, path: Path) -> int:
    """A whole number, or a string of one in decimal or 0x hex (TOML integers are signed, seeds are 32 bits)."""
    seed: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        seed = value
    elif isinstance(value, str) and re.fullmatch(r"^(0x[0-9a-fA-F]{1,8}|[0-9]{1,10})$", value):
        seed = int(value, 16) if value.startswith("0x") else int(value)
    if seed is None or not 0 <= seed <= 0xFFFFFFFF:
        raise ConfigError(
            'must be a number from 0 to 4294967295 (or a string such as "0xdeadbeef"); every host needs the same one',
            path=path,
            key="cluster.hash_seed",
        )
    return seed


def _number(data: Mapping[str, Any], name: str, default: float, *, path: Path) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError("must be a number", path=path, key=f"cluster.{name}")
    return float(value)
