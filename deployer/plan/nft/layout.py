"""The deployer's own nftables table: its maps, its chains, their names and the commands that declare them.

    table ip deployer                                                      (table ip6 deployer: family.py)
      map tcp-ports       { type inet_service : ipv4_addr . inet_service; size 65536; }  port -> instance
      map udp-ports       { ... }
      map maintenance-tcp { type inet_service : inet_service; size 65536; }           port -> the responder's
      chain PREROUTING  { nat hook prerouting priority dstnat - 5;  fib daddr type local jump DEPLOYER }
      chain OUTPUT      { nat hook output priority -105;            fib daddr type local jump DEPLOYER }
      chain POSTROUTING { nat hook postrouting priority srcnat + 5; jump DEPLOYER-POSTROUTING }
      chain DEPLOYER    { redirect through maintenance-tcp; jump DEPLOYER-SPLITS;
                          dnat through tcp-ports; dnat through udp-ports }
      chain DEPLOYER-SPLITS      { the canaries' splits: numgen random, or jhash ip saddr }
      chain DEPLOYER-POSTROUTING { 127.0.0.0/8 out the bridge: masquerade }
      (chain DEPLOYER-HOSTBOUND, DEPLOYER-SNAT: the socket match, a forward's masquerade, when in use)

An app's chain (DEPLOYER-<app>) is no chain here. Each of its rules is one element of a map, with the rule's
comment ("web green v2"): a DNAT forward goes in its protocol's map, and a maintenance REDIRECT in
maintenance-tcp. A canary's split is a rule of DEPLOYER-SPLITS, before the maps, so what it does not take falls
through to the port's element. The comment's first word names the app, so the iptables view puts each back in
the app's chain, with the jump to it (elements.py).

Why maps: nft reads every chain's header (and every set's) before any command, 12 to 16 ms with 10,000 chains
here. So a layout of one chain per app, or one map per app, makes a flip cost grow with the number of apps.
Three maps keyed by port do not: a flip replaces elements, and its commit stays flat. External ports are
unique on a host (the config checks), so one element per port holds an app chain's meaning.

Priorities just before Docker's iptables-nft nat chains (dstnat, -100), so no DNAT of Docker's shadows ours.
nft 1.0.6 accepts the `dstnat` keyword on prerouting only, hence -105 on output. The maps are sized for every
port there is, so the kernel never grows one in the middle of a flip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from deployer.plan.nft.family import IP, Family

PROTOCOLS = ("tcp", "udp")
MAINTENANCE = "maintenance-tcp"
MAP_TYPES = {  # the maps, and their data in a table of family ip (map_types)
    "tcp-ports": IP.instance(),
    "udp-ports": IP.instance(),
    MAINTENANCE: "inet_service",
}
BASE_CHAINS = {
    "PREROUTING": "type nat hook prerouting priority dstnat - 5; policy accept;",
    "OUTPUT": "type nat hook output priority -105; policy accept;",
    "POSTROUTING": "type nat hook postrouting priority srcnat + 5; policy accept;",
}
COMMENT_LIMIT = 128  # nft refuses a longer comment, and one with a double quote in it
Key = tuple[str, int]  # (protocol, external port)
Order = Callable[[str], Sequence[Key]]  # an app's ports, in the order the engine renders its rules


def table_name(prefix: str) -> str:
    """The table's name, from the chain prefix (DEPLOYER -> deployer)."""
    return prefix.lower()


def map_name(protocol: str) -> str:
    return f"{protocol}-ports"


def splits_chain(prefix: str) -> str:
    """The canary splits of every app, in one chain (few apps run a canary at once)."""
    return f"{prefix}-SPLITS"


def map_types(family: Family = IP) -> dict[str, str]:
    """Each map's data in a table of this family: the instance's address is of its type."""
    return {name: family.instance() if name != MAINTENANCE else data for name, data in MAP_TYPES.items()}


def dispatch(prefix: str, family: Family = IP) -> tuple[str, ...]:
    """The top chain's rules, as nft lists them: the maintenance redirect first, so it wins over anything else
    for its port, then the canary splits, then each protocol's forwards. A lookup that finds no element ends
    its rule, and the packet goes on."""
    return (
        f"meta l4proto tcp redirect to :tcp dport map @{MAINTENANCE}",
        f"jump {splits_chain(prefix)}",
        f"dnat {family.name} to tcp dport map @tcp-ports",
        f"dnat {family.name} to udp dport map @udp-ports",
    )


def is_app_chain(chain: str, prefix: str) -> bool:
    """DEPLOYER-web is an app's; DEPLOYER-POSTROUTING, -HOSTBOUND and the like are upper case, as no app is."""
    return chain.startswith(f"{prefix}-") and chain[len(prefix) + 1 :][:1].islower()


def map_declarations(table: str, family: Family = IP) -> list[str]:
    """The table and its maps; `add` leaves what exists as it is."""
    at = f"{family.name} {table}"
    return [
        f"add table {at}",
        *(
            f"add map {at} {name} {{ type inet_service : {data}; size 65536; }}"
            for name, data in map_types(family).items()
        ),
    ]


def base_declarations(table: str, family: Family = IP) -> list[str]:
    """The table and its three base chains; `add` leaves what exists as it is."""
    at = f"{family.name} {table}"
    return [f"add table {at}", *(f"add chain {at} {c} {{ {spec} }}" for c, spec in BASE_CHAINS.items())]


def dispatch_rules(table: str, prefix: str, kept: Iterable[str] = (), family: Family = IP) -> list[str]:
    """The top chain emptied and given its lookups through the maps, and the splits chain; `kept`: jumps of
    the old layout that stay in front, to app chains not yet moved into the maps."""
    at = f"{family.name} {table}"
    return [
        f"add chain {at} {splits_chain(prefix)}",
        f"add chain {at} {prefix}",
        f"flush chain {at} {prefix}",
        *(f"add rule {at} {prefix} {rule}" for rule in kept),
        *(f"add rule {at} {prefix} {rule}" for rule in dispatch(prefix, family)),
    ]
