"""Load sharing across hosts: which host answers which flow to the shared address. Pure: rules, hashes, decisions.

Every host on the segment sees every packet to the shared address: it resolves to a multicast MAC, so the switch
floods it. Each host takes in only the flows of its buckets, the buckets keepalived says it is master of. One
owned chain in the mangle table, jumped to first from PREROUTING for packets to the shared address:

    mangle PREROUTING -d SHARED/32 -j PREFIX-CLUSTER
    PREFIX-CLUSTER  -i IF -p tcp -m pkttype unicast -m connmark --mark M/M -j RETURN        relayed: a tcp flow of ours
                    -i IF -p tcp -m pkttype unicast --dports P --ctstate NEW -m cluster (bucket b) -j CONNMARK   per
                    -i IF -p tcp -m pkttype unicast -m connmark --mark M/M -j RETURN        bucket taking relays
                    -i IF -p udp -m pkttype unicast --dports Q -m cluster (bucket b) -j RETURN   per bucket taking relays
                    -i IF -m pkttype unicast -j DROP                   relayed, of a bucket taken in or relayed here
                    -m cluster (1 node of 1)                      every other packet: its pkt_type becomes host
                    -p tcp -m connmark --mark M/M -j RETURN       a tcp flow this host took in: keep it
                    -p tcp --dports P --ctstate NEW -m cluster (bucket b) -j CONNMARK --set-xmark M/M   per bucket
                    -p tcp -m connmark --mark M/M -j RETURN       the new flow just taken in
                    -p udp --dports Q -m cluster (bucket b) -j RETURN                                   per bucket
                    -p tcp --dports P --ctstate NEW -m cluster (bucket b) -j TEE --gateway NEXT     per bucket let go:
                    -p udp --dports Q -m cluster (bucket b) -j TEE --gateway NEXT                   relayed to its next
                    -j DROP                                        everything else, silently

Why each line:
- mangle PREROUTING runs before nat PREROUTING, so the decision is made before the app's DNAT; a flow taken in
  then goes through the app's own nat chain, and a local deploy's flip works on the shared address unchanged.
- A frame sent to a multicast MAC arrives as PACKET_MULTICAST, which TCP and forwarding throw away. The cluster
  match turns that into PACKET_HOST whenever it is evaluated (xt_cluster.c does that on purpose), so the first
  rule that sees a client's frame evaluates one that always matches (one bucket of one), before anything else.
- TCP: a host keeps the flows it took in (the connmark), whoever owns their bucket now. So on a planned leave the
  old owner finishes its established connections and the new owner takes only new ones. The new owner drops the
  old flows' packets: with nf_conntrack_tcp_loose=0 a mid-stream segment it never saw the SYN of is INVALID, has
  no connmark, and falls through to DROP (never a reset, which would kill the connection on the old owner).
- UDP has no handshake, so no flow is "established" anywhere: each datagram goes to its bucket's owner of that
  moment. A host that lost a bucket stops answering it at once, without waiting for its conntrack entries to expire.
- DROP, not REJECT: the other hosts answer those packets.

The handover. A bucket's new owner takes it in only `handover_delay` after keepalived made it master, so that the
old owner has surely let go (two hosts answering one datagram is the failure to avoid). Between the two, nobody
would answer a datagram or a SYN of that bucket. So the host that lets a bucket go relays its new flows for a while
(`relay_seconds`): TEE sends a copy of each datagram and each SYN to the own address of the peer that keepalived
elects next (`relay_target`), as a unicast frame to that peer's MAC, and the original is dropped, in the same
transaction that stops taking the bucket in. A host in service answers relayed frames of the buckets it is master of
and, once its keepalived is steady, backup of, unless it takes them in or relays them itself (`relayed_in`): so the
next host answers from the moment the old one lets go, whether keepalived has elected it yet or not, and drops the
relayed copies once it takes the bucket in. A datagram is
answered once, as the relay goes to one host: right after an election two backups can both be master for a few
milliseconds, and each would answer a copy sent to both. When the peer ranked next is out of service too, it
answers no relay: that bucket is handed over as before, with the handover delay's gap. A bucket taken by a host of
higher priority is relayed only when that host is surely the target (`relays_when_outranked`). A client's frame always goes
to the multicast MAC, so a unicast frame to the shared address on the cluster's interface is a relay (a client with
a stale ARP entry that names one host's MAC is dropped too).

The buckets change in one iptables-restore of the owned chain alone; the jump is ensured once, when the agent
starts. The ports P and Q are those of the apps served on the shared address (`cluster = true`).

With `unicast = true`, one more owned chain, in the filter table, drops VRRP from anyone but the other hosts, on
the cluster's interface, before keepalived reads it (a raw socket sees a packet after INPUT):

    filter INPUT -i IFACE -p 112 -j PREFIX-VRRP
    PREFIX-VRRP     -s PEER/32 -j RETURN                           per other host
                    -j DROP                                        a forged advert, or a stray router's

The bucket of a source is the kernel's: jhash_1word(source address as the kernel holds it, seed), scaled into
the bucket count with reciprocal_scale. `bucket_of` computes the same, so the status can count flows per bucket
and the tests can predict which host answers which client.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from deployer.config import AppConfig
from deployer.config.cluster import ClusterConfig, ClusterHost
from deployer.plan.rules import ChainNames, SavedTable, parse_table, save_string

TABLE = "mangle"
FILTER_TABLE = "filter"
VRRP = 112  # VRRP's IP protocol number; by number, as iptables-restore takes it without /etc/protocols
MASTER, BACKUP, FAULT, STOP = "MASTER", "BACKUP", "FAULT", "STOP"
HOME_PRIORITY = 200
PRIORITY_STEP = 5
MULTIPORT_MAX = 15  # ports per multiport match

_M32 = 0xFFFFFFFF
_JHASH_INITVAL = 0xDEADBEEF


# --- the hash ------------------------------------------------------------------------------------


def _rol32(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (32 - shift))) & _M32


def jhash_1word(a: int, initval: int) -> int:
    """The kernel's jhash_1word (include/linux/jhash.h): __jhash_nwords(a, 0, 0, initval + JHASH_INITVAL + 4)."""
    start = (initval + _JHASH_INITVAL + (1 << 2)) & _M32
    return _jhash_final((a + start) & _M32, start, start)


def _jhash_mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    """__jhash_mix: six rounds of `x -= z; x ^= rol32(z, r); z += y`, x going a, b, c, a, b, c."""
    v = [a, b, c]
    for step, shift in enumerate((4, 6, 8, 16, 19, 4)):
        x, y, z = step % 3, (step + 1) % 3, (step + 2) % 3
        v[x] = ((v[x] - v[z]) & _M32) ^ _rol32(v[z], shift)
        v[z] = (v[z] + v[y]) & _M32
    return v[0], v[1], v[2]


def jhash(data: bytes, initval: int) -> int:
    """The kernel's jhash(key, length, initval), which nftables' `jhash` expression calls on the bytes it hashes:
    12 bytes at a time (three little-endian words, as x86 and arm64 read them), the rest zero-padded."""
    state = [(_JHASH_INITVAL + len(data) + initval) & _M32] * 3
    while len(data) > 12:
        state = list(_jhash_mix(*_plus_block(state, data[:12])))
        data = data[12:]
    if not data:
        return state[2]
    return _jhash_final(*_plus_block(state, data.ljust(12, b"\0")))


def _plus_block(state: Sequence[int], block: bytes) -> tuple[int, int, int]:
    """a, b and c, each plus its little-endian word of a 12-byte block."""
    a, b, c = ((state[i] + int.from_bytes(block[4 * i : 4 * i + 4], "little")) & _M32 for i in range(3))
    return a, b, c


def _jhash_final(a: int, b: int, c: int) -> int:
    """__jhash_final, line for line; its c."""
    c ^= b
    c = (c - _rol32(b, 14)) & _M32
    a ^= c
    a = (a - _rol32(c, 11)) & _M32
    b ^= a
    b = (b - _rol32(a, 25)) & _M32
    c ^= b
    c = (c - _rol32(b, 16)) & _M32
    a ^= c
    a = (a - _rol32(c, 4)) & _M32
    b ^= a
    b = (b - _rol32(a, 14)) & _M32
    c ^= b
    c = (c - _rol32(b, 24)) & _M32
    return c


def bucket_of6(source: str, buckets: int, seed: int) -> int:
    """The bucket nftables' `jhash ip6 saddr mod buckets seed seed` puts an IPv6 source in: all 128 bits hashed.
    Not xt_cluster's: it hashes the first 32 bits of an IPv6 source only, so one /32's clients would share a host."""
    return (jhash(ipaddress.IPv6Address(source).packed, seed) * buckets) >> 32


def bucket_of(source: str, buckets: int, seed: int) -> int:
    """The bucket xt_cluster puts a flow from `source` in: the address is hashed as the kernel holds it (network
    byte order, read as a little-endian word on x86 and arm64), then scaled into 0..buckets-1."""
    word = int.from_bytes(ipaddress.IPv4Address(source).packed, "little")
    return (jhash_1word(word, seed) * buckets) >> 32


# --- buckets and hosts ---------------------------------------------------------------------------


def ranking(cluster: ClusterConfig, bucket: int) -> list[str]:
    """The hosts in the order they serve a bucket: its home host first (bucket mod N), then the others, whose order
    turns by one for each further bucket of the same home, so a failed host's buckets spread over the others."""
    names = list(cluster.host_names)
    home = names[bucket % len(names)]
    others = names[bucket % len(names) + 1 :] + names[: bucket % len(names)]
    turn = (bucket // len(names)) % len(others) if others else 0
    return [home, *others[turn:], *others[:turn]]


def priority(cluster: ClusterConfig, bucket: int, host: str) -> int:
    return HOME_PRIORITY - PRIORITY_STEP * ranking(cluster, bucket).index(host)


def relay_peer(cluster: ClusterConfig, bucket: int) -> ClusterHost:
    """The host a bucket this host lets go is relayed to: the peer ranked first for it, which keepalived elects
    next whether this host leaves or that peer comes back. One peer, not all: right after an election two backups
    can both be master for a moment (their timers ran out together), and each would answer the relayed copy."""
    return cluster.peer(next(name for name in ranking(cluster, bucket) if name != cluster.host))


def relay_target(cluster: ClusterConfig, bucket: int) -> str:
    return relay_peer(cluster, bucket).address


def relays_when_outranked(cluster: ClusterConfig, bucket: int) -> bool:
    """Whether this host relays a bucket that a host of higher priority took from it: only when the one host above
    it in the ranking is the bucket's home, so the relay target is surely the host that took it. Ranked lower, the
    bucket may have gone to a host between the two while the home is still out, and relays to the home would reach
    a second answer."""
    return ranking(cluster, bucket).index(cluster.host) == 1


def home_buckets(cluster: ClusterConfig, host: str) -> list[int]:
    return [b for b in range(cluster.buckets) if ranking(cluster, b)[0] == host]


def instance_name(bucket: int) -> str:
    return f"b{bucket}"


def nodemask(buckets: Iterable[int]) -> int:
    mask = 0
    for bucket in buckets:
        mask |= 1 << bucket
    return mask


# --- rules ---------------------------------------------------------------------------------------


def chain(names: ChainNames) -> str:
    return f"{names.prefix}-CLUSTER"


def jump(names: ChainNames, cluster: ClusterConfig) -> str:
    return f"-A PREROUTING -d {cluster.address}/32 -j {chain(names)}"


def _cluster_match(total: int, bucket: int, seed: int) -> str:
    return (
        f"-m cluster --cluster-total-nodes {total} --cluster-local-node {bucket + 1} --cluster-hash-seed {seed:#010x}"
    )


def _port_groups(apps: Iterable[AppConfig], protocol: str) -> list[str]:
    ports = sorted({p.external for app in apps if app.cluster for p in app.ports if p.protocol == protocol})
    return [",".join(str(p) for p in ports[i : i + MULTIPORT_MAX]) for i in range(0, len(ports), MULTIPORT_MAX)]


@dataclass(frozen=True)
class Intake:
    """What the owned chain does with each bucket's new flows (see the module's docstring, "The handover")."""

    owned: frozenset[int] = frozenset()  # taken in from the shared address
    relayed_in: frozenset[int] = frozenset()  # taken in when a peer relays them (in service: all but the two others)
    relayed_out: frozenset[int] = frozenset()  # let go: relayed to the peers

    @classmethod
    def of(cls, owned: Iterable[int] = (), relayed_in: Iterable[int] = (), relayed_out: Iterable[int] = ()) -> Intake:
        return cls(frozenset(owned), frozenset(relayed_in), frozenset(relayed_out))


def chain_rules(names: ChainNames, cluster: ClusterConfig, apps: Iterable[AppConfig], intake: Intake) -> list[str]:
    """The owned chain for this host's `intake`, as iptables-restore takes it (and iptables-save prints it).

    One rule per bucket (`--cluster-local-node`), not one node mask: iptables 1.8.9 refuses a
    `--cluster-local-nodemask` above 32 (it checks the mask against the node limit), although the kernel takes
    any mask, and iptables-save prints every rule as a mask, so its output of buckets 6 and up does not restore.
    """
    apps = list(apps)
    c = chain(names)
    mark = f"{cluster.mark:#x}/{cluster.mark:#x}"
    tcp, udp = _port_groups(apps, "tcp"), _port_groups(apps, "udp")
    relayed = f"-A {c} -i {cluster.interface}"
    unicast = "-m pkttype --pkt-type unicast"

    def bucket(b: int) -> str:
        return _cluster_match(cluster.buckets, b, cluster.hash_seed)

    def relayed_out() -> list[str]:
        """The rules that relay each bucket let go to the peer keepalived elects next."""
        rules: list[str] = []
        for b in sorted(intake.relayed_out - intake.owned):
            peer = relay_target(cluster, b)
            rules += [
                f"-A {c} -p tcp -m multiport --dports {ports} -m conntrack --ctstate NEW {bucket(b)} "
                f"-j TEE --gateway {peer}"
                for ports in tcp
            ]
            rules += [
                f"-A {c} -p udp -m multiport --dports {ports} {bucket(b)} -j TEE --gateway {peer}" for ports in udp
            ]
        return rules

    def take_in(head: str, match: str, buckets: Iterable[int]) -> list[str]:
        """The rules that take `buckets` in: a new tcp flow is marked and kept, a datagram returns to the nat table."""
        buckets = sorted(buckets)
        taken = [
            f"{head} -p tcp{match} -m multiport --dports {ports} -m conntrack --ctstate NEW {bucket(b)} "
            f"-j CONNMARK --set-xmark {mark}"
            for b in buckets
            for ports in tcp
        ]
        if buckets and tcp:
            taken.append(f"{head} -p tcp{match} -m connmark --mark {mark} -j RETURN")
        return taken + [
            f"{head} -p udp{match} -m multiport --dports {ports} {bucket(b)} -j RETURN"
            for b in buckets
            for ports in udp
        ]

    return [
        f"{relayed} -p tcp {unicast} -m connmark --mark {mark} -m comment "
        f"--comment {save_string('cluster: relayed, of a flow this host took in')} -j RETURN",
        *take_in(relayed, f" {unicast}", intake.relayed_in),
        f"{relayed} {unicast} -m comment --comment {save_string('cluster: relayed, not taken from a peer now')} "
        "-j DROP",
        f"-A {c} {_cluster_match(1, 0, 0)} -m comment --comment {save_string('cluster: take the frame in')}",
        f"-A {c} -p tcp -m connmark --mark {mark} -m comment "
        f"--comment {save_string('cluster: a flow this host took in')} -j RETURN",
        *take_in(f"-A {c}", "", intake.owned),
        *relayed_out(),
        f"-A {c} -m comment --comment {save_string('cluster: another host answers')} -j DROP",
    ]


def parse(saved: str) -> SavedTable:
    """The mangle table of `iptables-save -t mangle`."""
    return parse_table(saved, TABLE)


def render_owned(names: ChainNames, cluster: ClusterConfig, apps: Iterable[AppConfig], intake: Intake) -> str:
    """A change of buckets: the owned chain rewritten whole, in one transaction that touches nothing else."""
    return "\n".join(
        [f"*{TABLE}", f":{chain(names)} - [0:0]", *chain_rules(names, cluster, apps, intake), "COMMIT", ""]
    )


def render_ensure(
    live: SavedTable, names: ChainNames, cluster: ClusterConfig, apps: Iterable[AppConfig], intake: Intake
) -> str:
    """At start: the chain for `intake` and, when missing, the jump to it, first in PREROUTING."""
    lines = [f"*{TABLE}", f":{chain(names)} - [0:0]", *chain_rules(names, cluster, apps, intake)]
    if jump(names, cluster) not in live.rules("PREROUTING"):
        lines.append(f"-I PREROUTING 1 -d {cluster.address}/32 -j {chain(names)}")
    return "\n".join([*lines, "COMMIT", ""])


def render_removal(live: SavedTable, names: ChainNames) -> str | None:
    """Remove the chain and every jump to it. While it is gone this host answers every flow: stop keepalived and
    the agent first, and take the host off the segment (or the shared address off it)."""
    if not live.has_chain(chain(names)):
        return None
    deletes = [
        rule.replace("-A ", "-D ", 1) for rule in live.rules("PREROUTING") if rule.endswith(f" -j {chain(names)}")
    ]
    return "\n".join([f"*{TABLE}", *deletes, f"-F {chain(names)}", f"-X {chain(names)}", "COMMIT", ""])


def vrrp_chain(names: ChainNames) -> str:
    return f"{names.prefix}-VRRP"


def vrrp_filter_rules(names: ChainNames, cluster: ClusterConfig) -> list[str]:
    """The VRRP chain: adverts from the other hosts' addresses go on to keepalived, any other is dropped."""
    c = vrrp_chain(names)
    rules = []
    for peer in cluster.peers:
        comment = save_string(f"cluster: VRRP from {peer.name}")
        rules.append(f"-A {c} -s {peer.address}/32 -m comment --comment {comment} -j RETURN")
    rules.append(f"-A {c} -m comment --comment {save_string('cluster: VRRP from anyone else')} -j DROP")
    return rules


def render_vrrp_filter(live: SavedTable, names: ChainNames, cluster: ClusterConfig) -> str | None:
    """At start, from the filter table as it is: the VRRP chain and its jump with `unicast`, their removal without
    it (a host switched back to multicast); None when there is nothing to change.

    A jump is recognised by its interface and target: iptables-save prints the protocol by name where
    /etc/protocols knows it (`-p vrrp`), and restore is given its number. A jump from another interface (the
    config's interface changed) is deleted.
    """
    c = vrrp_chain(names)
    jumps = [rule for rule in live.rules("INPUT") if rule.endswith(f" -j {c}")]
    if not cluster.unicast:
        return render_vrrp_removal(live, names)
    mine = [rule for rule in jumps if rule.startswith(f"-A INPUT -i {cluster.interface} ")]
    lines = [
        f"*{FILTER_TABLE}",
        f":{c} - [0:0]",
        *vrrp_filter_rules(names, cluster),
        *(rule.replace("-A ", "-D ", 1) for rule in jumps if rule not in mine),
    ]
    if not mine:
        lines.append(f"-I INPUT 1 -i {cluster.interface} -p {VRRP} -j {c}")
    return "\n".join([*lines, "COMMIT", ""])


def render_vrrp_removal(live: SavedTable, names: ChainNames) -> str | None:
    """The VRRP chain and every jump to it removed (a host back to multicast, or uninstalled); None without it."""
    c = vrrp_chain(names)
    if not live.has_chain(c):
        return None
    jumps = [rule for rule in live.rules("INPUT") if rule.endswith(f" -j {c}")]
    return "\n".join(
        [f"*{FILTER_TABLE}", *(rule.replace("-A ", "-D ", 1) for rule in jumps), f"-F {c}", f"-X {c}", "COMMIT", ""]
    )


def parse_filter(saved: str) -> SavedTable:
    """The filter table of `iptables-save -t filter`."""
    return parse_table(saved, FILTER_TABLE)


# --- keepalived's notify FIFO --------------------------------------------------------------------

_NOTIFY = re.compile(r'^INSTANCE "b(\d+)" (MASTER|BACKUP|FAULT|STOP) (\d+)$')


@dataclass(frozen=True)
class Notice:
    bucket: int
    state: str
    priority: int


def parse_notice(line: str) -> Notice | None:
    """One line of keepalived's vrrp_notify_fifo, e.g. `INSTANCE "b0" MASTER 200`; None for any other line."""
    match = _NOTIFY.fullmatch(line.strip())
    if not match:
        return None
    return Notice(bucket=int(match.group(1)), state=match.group(2), priority=int(match.group(3)))


def owned_buckets(states: Mapping[int, str], since: Mapping[int, float], now: float, delay: float) -> set[int]:
    """The buckets to take in: MASTER for at least `delay`, so the old owner has let go of a bucket first
    (it drops it as soon as it hears the new master's advert; a lost bucket is let go at once)."""
    return {b for b, state in states.items() if state == MASTER and now - since.get(b, now) >= delay - 1e-9}


def steady_seconds(cluster: ClusterConfig) -> float:
    """How long keepalived runs before its backups take relays: past its first election (3 adverts and a skew)."""
    return 4 * cluster.advert_interval


def relay_seconds(cluster: ClusterConfig) -> float:
    """How long a bucket let go is relayed: past the new master's handover delay, also when it is elected only after
    its peers stopped hearing this host (3 adverts and a skew, for a failure)."""
    return 2 * cluster.handover_delay + 4 * cluster.advert_interval


@dataclass(frozen=True)
class IntakeDecision:
    intake: Intake
    releases: dict[int, float] = field(default_factory=dict)  # bucket -> when let go, for those still relayed
    next_at: float | None = None  # when the intake changes next with no new notice


def decide_intake(
    states: Mapping[int, str],
    since: Mapping[int, float],
    releases: Mapping[int, float],
    now: float,
    *,
    buckets: int,
    in_service: bool,
    steady: bool,
    delay: float,
    relay_for: float,
) -> IntakeDecision:
    """The chain's buckets now: those keepalived made this host master of `delay` ago (when in service), those it
    let go lately (relayed to their next host), and, in service, those it takes from a peer's relays: the ones it is
    master of, and, once its keepalived is `steady`, the ones it is backup of.

    A steady backup is one that would have been elected already if it outranked the master: so when the host ranked
    first after the old owner receives its relays, no other host takes that bucket in meanwhile. A keepalived just
    started is not steady: it may be about to preempt a master that another host's loss just elected, and both
    would answer.

    A release ends once its relaying is over, or at once when keepalived makes this host master again while it is
    in service: the host that took the bucket relays it back.
    """
    masters = {b for b, state in states.items() if state == MASTER}
    direct = owned_buckets(states, since, now, delay) if in_service else set()
    back = masters if in_service else set()
    running = {b: at for b, at in releases.items() if b not in back and b not in direct and now < at + relay_for}
    takes = {MASTER, BACKUP} if steady else {MASTER}
    relayed_in = {b for b in range(buckets) if states.get(b) in takes} - direct - set(running) if in_service else set()
    changes = [at + relay_for for at in running.values()]
    if in_service:
        changes += [since[b] + delay for b in masters - direct if b in since]
    later = [t for t in changes if t > now]
    return IntakeDecision(Intake.of(direct, relayed_in, running), running, min(later) if later else None)


def leave_problem(cluster: ClusterConfig, states: Mapping[int, str]) -> str | None:
    """Why leaving now would leave buckets with no host, or None.

    Every host is in every bucket's instance. A healthy peer is master of at least its home bucket, so this host
    is BACKUP somewhere exactly when some peer would take over: if it is master of every bucket, none would.
    """
    if len(cluster.hosts) == 1:
        return "this is the only host of the cluster"
    if not states:
        return "keepalived has not reported any bucket yet"
    if not any(state == BACKUP for state in states.values()):
        return f"this host is master of every bucket ({len(states)}); no other host is healthy to take them"
    return None


# --- flows ---------------------------------------------------------------------------------------

_SRC = re.compile(r"\bsrc=([0-9a-fA-F:.]+)\s")
_MARK = re.compile(r"\bmark=(\d+)\b")


def conntrack_filter(cluster: ClusterConfig) -> list[str]:
    """The flows to the shared address (their original destination)."""
    return ["-f", "ipv4", "--orig-dst", cluster.address]


def conntrack_filter6(cluster: ClusterConfig) -> list[str]:
    """The flows to the shared IPv6 address (`conntrack` reads one family at a time)."""
    return ["-f", "ipv6", "--orig-dst", str(cluster.address6)]


def flows_per_bucket(lines: Sequence[str], cluster: ClusterConfig) -> dict[int, int]:
    """Flows this host took in (its connmark bit), counted per bucket of their source: an IPv6 source by the IPv6
    buckets' hash."""
    counts = {b: 0 for b in range(cluster.buckets)}
    for line in lines:
        source, mark = _SRC.search(line), _MARK.search(line)
        if source and mark and int(mark.group(1)) & cluster.mark:
            of = bucket_of6 if ":" in source.group(1) else bucket_of
            counts[of(source.group(1), cluster.buckets, cluster.hash_seed)] += 1
    return counts


def open_tcp_flows(lines: Sequence[str], cluster: ClusterConfig) -> int:
    """TCP flows this host took in that are not closed yet: what `cluster leave --wait` waits for."""
    opened = (" SYN_SENT ", " SYN_RECV ", " ESTABLISHED ")
    return sum(
        1
        for line in lines
        if line.startswith("tcp")
        and any(word in line for word in opened)
        and (mark := _MARK.search(line)) is not None
        and int(mark.group(1)) & cluster.mark
    )


# --- who owns each bucket, as one host sees it ---------------------------------------------------------


@dataclass(frozen=True)
class BucketOwner:
    """A bucket's owner as this host knows it. `known`: this host takes it in (keepalived made it master here);
    otherwise `owner` is the host the ranking puts first among those that can be master now, an expectation: a
    host learns only its own states from keepalived, never a peer's."""

    bucket: int
    state: str  # keepalived's state of the bucket here: MASTER, BACKUP, FAULT, STOP, or "unknown" before it says
    owner: str | None
    known: bool


def bucket_owners(cluster: ClusterConfig, states: Mapping[int, str], owned: Iterable[int]) -> list[BucketOwner]:
    """Each bucket's owner from this host's keepalived states and the buckets its chain takes in.

    A BACKUP here is outranked: its master is one of the hosts above this one (the first, when all are up). In
    FAULT, STOP or before keepalived speaks, it is whichever other host ranks first. MASTER but not taken in yet
    (the handover delay) is this host, taking over."""
    taken = set(owned)
    found = []
    for bucket in range(cluster.buckets):
        state = states.get(bucket, "unknown")
        order = ranking(cluster, bucket)
        if bucket in taken:
            found.append(BucketOwner(bucket, state, cluster.host, True))
            continue
        if state == MASTER:
            candidates = [cluster.host]
        elif state == BACKUP and cluster.host in order:
            candidates = order[: order.index(cluster.host)] or [h for h in order if h != cluster.host]
        else:
            candidates = [h for h in order if h != cluster.host]
        found.append(BucketOwner(bucket, state, candidates[0] if candidates else None, False))
    return found
