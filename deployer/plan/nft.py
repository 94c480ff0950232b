"""Render the deployer's own nftables table, as nft's input language; pure, like rules.py for iptables.

The layout:

    table ip deployer
      map tcp-ports { type inet_service : ipv4_addr . inet_service; size 65536; }  external port -> instance
      map udp-ports { ... }                                              (every app's ports, one map a protocol)
      set maintenance-tcp { type inet_service; }                         tcp ports sent to the responder
      chain prerouting  { nat hook prerouting priority dstnat - 5;  fib daddr type local jump serve }
      chain output      { nat hook output priority -105;            fib daddr type local jump serve }
      chain serve       { maintenance redirect; dnat through tcp-ports; dnat through udp-ports }
      chain postrouting { nat hook postrouting priority srcnat + 5;  127.0.0.0/8 out the bridge: masquerade }

Priorities just before Docker's iptables-nft nat chains (dstnat, -100), so no DNAT of Docker's shadows ours.
nft 1.0.6 accepts the `dstnat` keyword on prerouting only, hence -105 on output.

One map per protocol for all apps, not one per app: external ports are unique on a host (the config checks),
and nft reads every set's header before each command, so per-app maps made a flip cost grow with the number
of apps (0.2 ms with one, 11 ms with 1,000, 107 ms with 10,000 here); one map keyed by port stays at 0.15 ms.
Sized for every port there is, so the kernel never grows it in the middle of a flip (without the size, the
commit was x1.45 slower at 10,000 ports than at one).

A flip deletes the app's ports as they were read and adds the wanted elements, in one transaction. The
transaction checks the read's keys: deleting a port that is not there, or adding one that is still there, is
refused whole. So a commit proves that each of the app's ports now leads to the wanted instance, with no
read-back. (nft deletes an element by its key: which instance a port led to before is the read's word alone,
under the netfilter lock, and decides only which old flows conntrack cleanup deletes.)

Each feature renders in a function of its own. A canary split would be one more: a rule in `serve`, before
the DNAT through the maps, `tcp dport <port> dnat ip to numgen random mod 100 map { 0-89 : <a> . <p>,
90-99 : <b> . <p> }` (or `jhash ip saddr mod 100` for a sticky split), rendered from the split's weights.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from deployer.plan.rules import LOOPBACK, Forward

PROTOCOLS = ("tcp", "udp")
MAINTENANCE_SET = "maintenance-tcp"


def table_name(prefix: str) -> str:
    """The table's name, from the chain prefix (DEPLOYER -> deployer)."""
    return prefix.lower()


def map_name(protocol: str) -> str:
    return f"{protocol}-ports"


def element(forward: Forward) -> str:
    """One map element: `18080 : 172.18.0.3 . 80`."""
    return f"{forward.external} : {forward.to_address} . {forward.to_port}"


def _by_protocol(forwards: Iterable[Forward], protocol: str) -> list[Forward]:
    return sorted((f for f in forwards if f.protocol == protocol), key=lambda f: f.external)


def declarations(table: str) -> list[str]:
    """The table, its maps, its set and its chains; `add` leaves what exists as it is."""
    return [
        f"add table ip {table}",
        *(f"add map ip {table} {map_name(p)} {{ type inet_service : ipv4_addr . inet_service; size 65536; }}"
          for p in PROTOCOLS),
        f"add set ip {table} {MAINTENANCE_SET} {{ type inet_service; }}",
        f"add chain ip {table} prerouting {{ type nat hook prerouting priority dstnat - 5; policy accept; }}",
        f"add chain ip {table} output {{ type nat hook output priority -105; policy accept; }}",
        f"add chain ip {table} postrouting {{ type nat hook postrouting priority srcnat + 5; policy accept; }}",
        f"add chain ip {table} serve",
    ]


def hook_rules(table: str, bridge: str) -> list[str]:
    """Local destinations from outside (prerouting) and from the host (output) go through `serve`."""
    return [
        f"add rule ip {table} prerouting fib daddr type local jump serve",
        f"add rule ip {table} output fib daddr type local jump serve",
        # A client on 127.0.0.1 is DNATed to a container, which cannot answer 127.0.0.1 (see rules.py).
        f'add rule ip {table} postrouting ip saddr {LOOPBACK} oifname "{bridge}" masquerade',
    ]


def serve_rules(table: str, maintenance_port: int) -> list[str]:
    """The maintenance redirect first (tcp only: the responder speaks HTTP), then the DNAT through each map."""
    return [
        f"add rule ip {table} serve tcp dport @{MAINTENANCE_SET} redirect to :{maintenance_port}",
        *(f"add rule ip {table} serve dnat ip to {p} dport map @{map_name(p)}" for p in PROTOCOLS),
    ]


def render_table(table: str, bridge: str, maintenance_port: int, forwards: Sequence[Forward],
                 maintenance_ports: Sequence[int] = ()) -> str:
    """The whole table in one transaction (a host's first write, and reconcile): every chain, map and set
    emptied and filled, so the result is the rendered state whatever was there."""
    lines = declarations(table)
    lines += [f"flush chain ip {table} {c}" for c in ("prerouting", "output", "postrouting", "serve")]
    lines += [f"flush map ip {table} {map_name(p)}" for p in PROTOCOLS]
    lines += [f"flush set ip {table} {MAINTENANCE_SET}"]
    lines += hook_rules(table, bridge) + serve_rules(table, maintenance_port)
    lines += add_elements(table, forwards)
    if maintenance_ports:
        lines.append(f"add element ip {table} {MAINTENANCE_SET} {{ {', '.join(map(str, sorted(maintenance_ports)))} }}")
    return "\n".join([*lines, ""])


def add_elements(table: str, forwards: Iterable[Forward]) -> list[str]:
    lines = []
    for protocol in PROTOCOLS:
        found = _by_protocol(forwards, protocol)
        if found:
            lines.append(f"add element ip {table} {map_name(protocol)} {{ {', '.join(map(element, found))} }}")
    return lines


def delete_elements(table: str, forwards: Iterable[Forward]) -> list[str]:
    lines = []
    for protocol in PROTOCOLS:
        found = _by_protocol(forwards, protocol)
        if found:
            ports = ", ".join(str(f.external) for f in found)
            lines.append(f"delete element ip {table} {map_name(protocol)} {{ {ports} }}")
    return lines


def render_flip(table: str, before: Sequence[Forward], wanted: Sequence[Forward]) -> str | None:
    """The flip of one app: its elements as read deleted, the wanted ones added, in one transaction; None
    when nothing changes."""
    def keyed(forwards: Sequence[Forward]) -> list[tuple[str, str]]:
        return sorted((f.protocol, element(f)) for f in forwards)

    if keyed(before) == keyed(wanted):
        return None
    return "\n".join([*delete_elements(table, before), *add_elements(table, wanted), ""])


def render_maintenance(table: str, ports: Sequence[int], on: bool) -> str:
    """Send an app's tcp ports to the responder (on) or back to their instance (off); one transaction."""
    verb = "add" if on else "delete"
    return f"{verb} element ip {table} {MAINTENANCE_SET} {{ {', '.join(map(str, sorted(ports)))} }}\n"


def render_teardown(table: str) -> str:
    """Remove the table and everything in it."""
    return f"delete table ip {table}\n"
