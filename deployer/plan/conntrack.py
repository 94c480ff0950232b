"""Render conntrack filters that touch only one app's flows. Pure: the netfilter adapter runs them.

Why UDP is cleaned right after a flip and TCP only after the drain: conntrack keeps the NAT
decision of a flow for its lifetime. A UDP "flow" (same client address and port) never ends
while datagrams keep coming, so without cleanup it stays pinned to the old instance forever:
the sticky-connection problem. Deleting those entries makes the next datagram pass the nat
table again and reach the new instance. A TCP connection that is already open must stay on the
instance that accepted it, or it breaks; new TCP connections follow the new rule anyway. Once
the old instance is stopped, its leftover TCP entries are deleted so late packets get a clean
reset from the new rule instead of vanishing.

Every filter names the protocol, the app's external port and the old instance's address as
the reply source, so no other app's flows, and never the whole table, are touched.
"""

from __future__ import annotations

from collections.abc import Iterable

from deployer.config import AppConfig


def _ports(app: AppConfig, protocol: str) -> list[int]:
    return [p.external for p in app.ports if p.protocol == protocol]


def flows_to(app: AppConfig, protocol: str, old_address: str) -> list[list[str]]:
    """Filters (conntrack arguments after -D or -L) for the app's flows answered by `old_address`."""
    return [
        ["-p", protocol, "--orig-port-dst", str(port), "--reply-src", old_address] for port in _ports(app, protocol)
    ]


def unrouted_udp_flows(app: AppConfig) -> list[list[str]]:
    """UDP flows to the external port that no DNAT rule rewrote (they reached the host itself).

    They exist when datagrams arrived before any instance served; they would pin the client to
    "nowhere" after the first deploy. In such a flow the reply comes from the external port.
    """
    return [["-p", "udp", "--orig-port-dst", str(port), "--reply-port-src", str(port)] for port in _ports(app, "udp")]


def after_flip(app: AppConfig, old_addresses: Iterable[str]) -> list[list[str]]:
    """What to delete right after the rules moved away from `old_addresses` (UDP only)."""
    filters = []
    for address in sorted(set(old_addresses)):
        filters.extend(flows_to(app, "udp", address))
    filters.extend(unrouted_udp_flows(app))
    return filters


def after_stop(app: AppConfig, old_address: str) -> list[list[str]]:
    """What to delete once the old instance is gone: its remaining TCP (and any UDP) flows."""
    return flows_to(app, "tcp", old_address) + flows_to(app, "udp", old_address)


def established_tcp(app: AppConfig, address: str) -> list[list[str]]:
    """Filters that list the app's TCP flows still served by `address` (for an early end of the drain)."""
    return [f + ["--state", "ESTABLISHED"] for f in flows_to(app, "tcp", address)]


def for_ipv6(filters: Iterable[list[str]], ipv6_of: dict[str, str]) -> list[list[str]]:
    """The IPv6 twins of IPv4 filters (`conntrack -L` and `-D` read one family, IPv4 unless told): a filter on an
    instance's reply source names its IPv6 address instead, and one without an address (the unrouted UDP flows)
    is the same filter for IPv6. A filter on an address with no IPv6 twin has none."""
    result = []
    for found in filters:
        if "--reply-src" not in found:
            result.append(["-f", "ipv6", *found])
            continue
        at = found.index("--reply-src") + 1
        if found[at] in ipv6_of:
            result.append(["-f", "ipv6", *found[:at], ipv6_of[found[at]], *found[at + 1 :]])
    return result
