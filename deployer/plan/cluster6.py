"""The cluster's shared IPv6 address (`[cluster] address6`). Pure: one nftables table, its text exactly.

The IPv4 address's parts, done again for IPv6 with what this kernel offers (docs/ipv6.md, "The cluster"):

    table ip6 <prefix>-cluster
      chain nd          output hook: the neighbour solicitations and advertisements this host sends from the shared
                        address carry the multicast MAC, not the host's own (ARP's `mangle` for IPv6)
      chain prerouting  mangle priority, before the nat table's DNAT: packets to the shared address go to buckets
      chain buckets     the IPv4 chain's decisions (plan/cluster.py), for IPv6 sources, from the same `Intake`

- The neighbour discovery rewrite. tc's `pedit` and `csum` are not built into every kernel, and an nft write of raw
  bytes does not update the ICMPv6 checksum. So the same rule writes, beside the MAC, the reserved 16 bits at
  ICMPv6 bytes 6-7 of the solicitation or advertisement (zero from the sender, ignored by the receiver, RFC 4861)
  with the word that keeps the one's-complement sum as it was (`nd_word`): the checksum stays right untouched. The
  word depends on this host's own MAC, so the agent reads it and renders the rule at each start. Solicitations
  are rewritten too: a host answering a client it has no neighbour entry for solicits it from the shared
  address, and a client takes the link-layer address of a solicitation as the sender's.
- The buckets hash the whole source address: `jhash ip6 saddr mod buckets seed seed` (`bucket_of6`). The
  `cluster` match would hash its first 32 bits only, and every client of one /32 would land on one host.
- `meta pkttype set host` does for a frame sent to the multicast MAC what the `cluster` match does on IPv4: TCP
  and forwarding would throw a PACKET_MULTICAST packet away.
- Neighbour discovery to the shared address returns before the final drop: a client's advertisement, answering
  a host's solicitation, is sent to the shared address (to the multicast MAC), and every host needs it.
- The relays are `dup to` the next host's own IPv6 address (`[[cluster.hosts]] address6`), as TEE on IPv4.

keepalived is not involved: VRRP elects hosts, not families, so the IPv4 instances' buckets are this chain's too.
A change of buckets flushes and writes the `buckets` chain alone, in one nft transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from deployer.config import AppConfig
from deployer.config.cluster import ClusterConfig
from deployer.plan.cluster import Intake, relay_peer
from deployer.plan.rules import ChainNames

FAMILY = "ip6"
BUCKETS_CHAIN = "buckets"
ND_TYPES = "{ nd-neighbor-solicit, nd-neighbor-advert }"


def table_name(names: ChainNames) -> str:
    return f"{names.prefix.lower()}-cluster"


def nd_word(own_mac: str, multicast_mac: str) -> int:
    """The reserved word that keeps an ICMPv6 checksum right when the host's own MAC in a link-layer option is
    replaced by the multicast MAC: the one's-complement sum of the own MAC's three words minus the new one's."""
    total = sum(_words(own_mac)) + sum(~word & 0xFFFF for word in _words(multicast_mac))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _words(mac: str) -> list[int]:
    raw = bytes.fromhex(mac.replace(":", ""))
    return [int.from_bytes(raw[i : i + 2], "big") for i in (0, 2, 4)]


def nd_rule(cluster: ClusterConfig, own_mac: str) -> str:
    """The first option of an NS (type 1, source link-layer) or NA (2, target link-layer), one 8-byte option of an
    Ethernet MAC, is at ICMPv6 byte 24; its MAC at byte 26. Only a packet whose reserved word is still zero is
    rewritten."""
    mac = "0x" + cluster.multicast_mac.replace(":", "")
    return (
        f"ip6 saddr {cluster.address6} icmpv6 type {ND_TYPES} @th,192,16 {{ 0x0101, 0x0201 }} @th,48,16 0 "
        f"@th,208,48 set {mac} @th,48,16 set {nd_word(own_mac, cluster.multicast_mac):#06x} "
        'comment "cluster: neighbour discovery with the multicast MAC"'
    )


def _ports(apps: Iterable[AppConfig], protocol: str) -> str | None:
    ports = sorted({p.external for app in apps if app.cluster for p in app.ports if p.protocol == protocol})
    return "{ " + ", ".join(str(p) for p in ports) + " }" if ports else None


def chain_rules(cluster: ClusterConfig, apps: Iterable[AppConfig], intake: Intake) -> list[str]:
    """The `buckets` chain for this host's `intake`: the IPv4 chain's rules (plan/cluster.py), in nft's words."""
    apps = list(apps)
    tcp, udp = _ports(apps, "tcp"), _ports(apps, "udp")
    mark = f"{cluster.mark:#x}"
    ours = f"ct mark & {mark} == {mark}"
    hashed = f"jhash ip6 saddr mod {cluster.buckets} seed {cluster.hash_seed:#x}"
    relayed = f'iifname "{cluster.interface}" meta pkttype host '

    def take_in(head: str, buckets: Iterable[int]) -> list[str]:
        chosen = sorted(buckets)
        if not chosen:
            return []
        among = "{ " + ", ".join(str(b) for b in chosen) + " }"
        rules = []
        if tcp:
            rules += [
                f"{head}tcp dport {tcp} ct state new {hashed} {among} ct mark set ct mark | {mark}",
                f"{head}meta l4proto tcp {ours} return",
            ]
        if udp:
            rules.append(f"{head}udp dport {udp} {hashed} {among} return")
        return rules

    def relayed_out() -> list[str]:
        rules = []
        for b in sorted(intake.relayed_out - intake.owned):
            peer = relay_peer(cluster, b).address6
            if tcp:
                rules.append(f"tcp dport {tcp} ct state new {hashed} {b} dup to {peer}")
            if udp:
                rules.append(f"udp dport {udp} {hashed} {b} dup to {peer}")
        return rules

    return [
        f'{relayed}meta l4proto tcp {ours} return comment "cluster: relayed, of a flow this host took in"',
        *take_in(relayed, intake.relayed_in),
        f'{relayed}drop comment "cluster: relayed, not taken from a peer now"',
        'meta pkttype set host comment "cluster: take the frame in"',
        f'icmpv6 type {ND_TYPES} return comment "cluster: neighbour discovery"',
        f'meta l4proto tcp {ours} return comment "cluster: a flow this host took in"',
        *take_in("", intake.owned),
        *relayed_out(),
        'drop comment "cluster: another host answers"',
    ]


def render_ensure(
    names: ChainNames, cluster: ClusterConfig, apps: Iterable[AppConfig], intake: Intake, own_mac: str
) -> str:
    """At start: the whole table, made again (whatever an earlier run left), in one transaction."""
    at = f"{FAMILY} {table_name(names)}"
    return "\n".join(
        [
            f"add table {at}",
            f"delete table {at}",
            f"add table {at}",
            f"add chain {at} nd {{ type filter hook output priority filter; policy accept; }}",
            f"add rule {at} nd {nd_rule(cluster, own_mac)}",
            f"add chain {at} {BUCKETS_CHAIN}",
            *(f"add rule {at} {BUCKETS_CHAIN} {rule}" for rule in chain_rules(cluster, apps, intake)),
            f"add chain {at} prerouting {{ type filter hook prerouting priority mangle; policy accept; }}",
            f"add rule {at} prerouting ip6 daddr {cluster.address6} jump {BUCKETS_CHAIN}",
            "",
        ]
    )


def render_owned(names: ChainNames, cluster: ClusterConfig, apps: Iterable[AppConfig], intake: Intake) -> str:
    """A change of buckets: the `buckets` chain flushed and written again, in one transaction."""
    at = f"{FAMILY} {table_name(names)}"
    return "\n".join(
        [
            f"flush chain {at} {BUCKETS_CHAIN}",
            *(f"add rule {at} {BUCKETS_CHAIN} {rule}" for rule in chain_rules(cluster, apps, intake)),
            "",
        ]
    )


def render_removal(names: ChainNames) -> str:
    """The table gone, whether it was there or not."""
    at = f"{FAMILY} {table_name(names)}"
    return f"add table {at}\ndelete table {at}\n"


def has_table(listing: str, names: ChainNames) -> bool:
    """Whether `nft list tables ip6` lists the cluster's table."""
    return f"table {FAMILY} {table_name(names)}" in listing.splitlines()
