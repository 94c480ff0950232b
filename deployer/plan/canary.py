"""A canary: a weighted split of an app's new connections between its active instance and a new one. Pure.

The split lives in the app's nat chain, in front of the active instance's DNAT rules, one rule per external port:

    DEPLOYER-<app>  -p tcp -m tcp --dport 1000 -m statistic --mode random --probability 0.10000000009
                        -m comment --comment "<app> <set> <tag> canary" -j DNAT --to-destination <canary>
    DEPLOYER-<app>  -p tcp -m tcp --dport 1000 -m comment --comment "<app> <set> <tag>" -j DNAT --to-destination <active>

The nat table sees only the first packet of each conntrack flow, so the split is per new tcp connection and per new
udp flow; packets of a flow follow its first one. With `sticky`, the canary rule matches on a hash of the client's
source address instead (the `cluster` match: jhash of the address with a seed, scaled onto `total` nodes, the rule
matching `share` of them), so each client stays on one instance for the whole canary. The cluster match offers at
most 32 nodes and one rule covers at most five of them on either side (MASK_NODES), so a sticky weight is the
nearest such fraction share/total (10 -> 1/10, 37 -> 3/8, 1 -> 1/32, 99 -> 31/32); status shows the effective share.

The record: mode "canary", its detail naming the canary instance, weight, sticky, seed, since and bake deadline;
`active` stays the old instance until `promote`, so status, reconcile and the watchdog know both.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from deployer.errors import CanaryError
from deployer.plan.cluster import jhash_1word
from deployer.plan.records import SERVING, AppState, Instance, instance_from
from deployer.plan.rules import Forward, save_string

MODE = "canary"
MAX_NODES = 32  # XT_CLUSTER_NODES_MAX
# iptables 1.8.9 parses --cluster-local-nodemask as a number from 1 to 32 (and so cannot restore the masks it saves
# above that): a mask of the low five nodes, 0x1f, is the widest that round-trips.
MASK_NODES = 5
# The seed every sticky canary had while it was one public constant: a record without a seed was rendered with it.
# A new canary gets a seed of its own, drawn where it starts (host/engine.py), so the split cannot be computed
# from outside.
LEGACY_SEED = 0x5EED0001
SEED_MAX = 0xFFFFFFFF  # the cluster match's hash seed is 32 bits


# --- the weight ----------------------------------------------------------------------------------


def check_weight(weight: Any) -> int:
    """A canary weight is a whole percentage from 1 to 99: 0 and 100 are no split at all (abort, promote)."""
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 99:
        raise CanaryError(
            f"a canary weight is a whole percentage from 1 to 99, not {weight!r} "
            f"(0 is `deployer abort`, 100 is `deployer promote`)"
        )
    return weight


def check_seed(seed: Any) -> int:
    """A hash seed is a whole number from 0 to 0xffffffff: the cluster match takes 32 bits."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise CanaryError(f"the hash seed must be a whole number from 0 to {SEED_MAX:#x}, not {seed!r}")
    return seed


def probability(weight: int) -> str:
    """The statistic match's probability as iptables-save prints it: stored as round(P * 2^31), printed %.11f."""
    stored = math.floor(weight / 100 * 0x80000000 + 0.5)
    return f"{stored / 0x80000000:.11f}"


@functools.cache
def sticky_nodes(weight: int) -> tuple[int, int]:
    """(share, total): the canary's cluster nodes out of `total`, the fraction nearest the weight (smallest total
    on a tie) that one rule per port can express (see `split_rules`: at most MASK_NODES nodes on either side)."""
    target = Fraction(weight, 100)
    candidates = [
        (abs(Fraction(k, n) - target), n, k)
        for n in range(2, MAX_NODES + 1)
        for k in range(1, n)
        if min(k, n - k) <= MASK_NODES
    ]
    _, total, share = min(candidates)
    return share, total


def canary_nodes(weight: int) -> range:
    """The node numbers (0-based, as xt_cluster hashes) whose clients the sticky split sends to the canary."""
    share, total = sticky_nodes(weight)
    return range(share) if share <= MASK_NODES else range(total - share, total)


def effective_share(weight: int, sticky: bool) -> float:
    """The share of new connections (or of client addresses, when sticky) the canary gets, in percent."""
    if not sticky:
        return int(probability(weight).replace(".", "")) / 1e9
    share, total = sticky_nodes(weight)
    return 100 * share / total


# --- the kernel's hash, for `sticky` -------------------------------------------------------------


def hashed_bytes(address: str) -> bytes:
    """What xt_cluster hashes of a source address: an IPv4 address whole, an IPv6 one's first 32 bits.

    For IPv6 it calls jhash2(src, NF_CT_TUPLE_L3SIZE / sizeof(u32), seed), and NF_CT_TUPLE_L3SIZE is the
    number of 32-bit words of an address (ARRAY_SIZE of nf_inet_addr.all: 4), not of bytes: so one word, the
    first. jhash2 of one word is jhash_1word, as for IPv4; every client of one /32 lands on the same node.
    """
    if ":" in address:
        return ipaddress.IPv6Address(address).packed[:4]
    return bytes(int(part) for part in address.split("."))


def cluster_node(address: str, total: int, seed: int) -> int:
    """The node xt_cluster assigns a source address: reciprocal_scale(jhash_1word(src, seed), total).

    jhash_1word (include/linux/jhash.h) is __jhash_nwords(src, 0, 0, seed + JHASH_INITVAL + 4): each word plus
    the initial value, then __jhash_final. The address (an IPv6 one's first word, `hashed_bytes`) is the
    packet's __be32 read as a host-order u32 (x86: little-endian), as the kernel does.
    """
    word = int.from_bytes(hashed_bytes(address), "little")
    return (jhash_1word(word, seed) * total) >> 32


def sticky_to_canary(address: str, weight: int, seed: int) -> bool:
    """Whether the sticky split sends this client address to the canary."""
    return cluster_node(address, sticky_nodes(weight)[1], seed) in canary_nodes(weight)


# --- the rules -----------------------------------------------------------------------------------


def cluster_match(nodes: int, total: int, seed: int) -> str:
    """Clients whose address hashes to one of the low `nodes` of `total`, as iptables-save prints it."""
    return (
        f"-m cluster --cluster-local-nodemask 0x{(1 << nodes) - 1:08x} --cluster-total-nodes {total}"
        f" --cluster-hash-seed 0x{seed:08x}"
    )


def matched_rule(chain: str, forward: Forward, match: str) -> str:
    return (
        f"-A {chain} -p {forward.protocol} -m {forward.protocol} --dport {forward.external} {match}"
        f" -m comment --comment {save_string(forward.comment)}"
        f" -j DNAT --to-destination {forward.to_address}:{forward.to_port}"
    )


def split_rules(
    chain: str,
    active: Sequence[Forward],
    canary: Sequence[Forward],
    weight: int,
    *,
    sticky: bool = False,
    seed: int = LEGACY_SEED,
) -> list[str]:
    """Each port's canary rule, then the active instance's rules; weight 0 and 100 are the plain chains.

    Sticky with the canary on more than MASK_NODES nodes, the rule in front is the active instance's, on the
    other nodes, and the canary's rules catch the rest.
    """
    if weight <= 0:
        return [f.rule(chain) for f in active]
    if weight >= 100:
        return [f.rule(chain) for f in canary]
    if not sticky:
        match = f"-m statistic --mode random --probability {probability(weight)}"
        return [matched_rule(chain, f, match) for f in canary] + [f.rule(chain) for f in active]
    share, total = sticky_nodes(weight)
    if share <= MASK_NODES:
        match = cluster_match(share, total, seed)
        return [matched_rule(chain, f, match) for f in canary] + [f.rule(chain) for f in active]
    match = cluster_match(total - share, total, seed)
    return [matched_rule(chain, f, match) for f in active] + [f.rule(chain) for f in canary]


# --- the record ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """The mode detail of a canary."""

    canary: Instance
    weight: int
    sticky: bool
    seed: int
    since: str
    bake_until: str | None = None  # promote by itself at this time if the canary stayed healthy
    actor: str | None = None

    def detail(self) -> dict[str, Any]:
        return {
            "canary": asdict(self.canary),
            "weight": self.weight,
            "sticky": self.sticky,
            "seed": self.seed,
            "since": self.since,
            "bake_until": self.bake_until,
            "actor": self.actor,
        }

    @classmethod
    def of(cls, state: AppState) -> Split | None:
        if state.mode != MODE:
            return None
        d = state.mode_detail
        canary = instance_from(d.get("canary"))
        if canary is None:
            return None
        return cls(
            canary,
            int(d["weight"]),
            bool(d.get("sticky")),
            int(d.get("seed", LEGACY_SEED)),
            str(d.get("since")),
            d.get("bake_until"),
            d.get("actor"),
        )


def in_canary(state: AppState) -> bool:
    return Split.of(state) is not None


def started(
    state: AppState,
    canary: Instance,
    *,
    weight: int,
    sticky: bool,
    seed: int,
    now: str,
    actor: str,
    bake_until: str | None = None,
) -> AppState:
    """A deploy's new instance takes `weight` percent; the active one stays active (and the rollback target)."""
    if state.active is None:
        raise CanaryError(
            f"app {state.app!r} has no active instance to split traffic with; deploy it first", app=state.app
        )
    split = Split(canary, check_weight(weight), sticky, seed, now, bake_until, actor)
    return replace(state, mode=MODE, mode_detail=split.detail(), updated_at=now)


def _running(state: AppState) -> Split:
    split = Split.of(state)
    if split is None:
        raise CanaryError(f"app {state.app!r} runs no canary (mode {state.mode!r})", app=state.app)
    return split


def reweighted(state: AppState, weight: int, *, now: str) -> AppState | None:
    split = _running(state)
    if split.weight == check_weight(weight):
        return None
    return replace(state, mode_detail=replace(split, weight=weight).detail(), updated_at=now)


def rehashed_udp(state: AppState) -> list[str]:
    """The instances whose udp flows to forget after a weight change of `state`'s canary.

    With a sticky split a new weight moves some client addresses to the other instance, but conntrack would
    keep each of their udp flows where it was; forgotten, a flow's next datagram is hashed again (an address
    that did not move lands where it was). Per connection, a udp flow is a connection and stays where it is.
    """
    split = Split.of(state)
    if split is None or not split.sticky or state.active is None:
        return []
    return sorted({state.active.address, split.canary.address})


def promoted(state: AppState, *, now: str) -> AppState:
    """All traffic to the canary, recorded as the release: the old active becomes `previous`."""
    split = _running(state)
    return replace(state.promoted(split.canary, now), mode=SERVING, mode_detail={})


def aborted(state: AppState, *, now: str) -> AppState:
    """All traffic back to the active instance; the canary leaves no trace in the record."""
    _running(state)
    return replace(state, mode=SERVING, mode_detail={}, updated_at=now)


def bake_deadline(now: datetime, seconds: float | None) -> str | None:
    """When a canary started at `now` promotes itself, as the journal writes times; None without a bake."""
    if not seconds:
        return None
    return (now + timedelta(seconds=seconds)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def baked(state: AppState, now: str) -> bool:
    """Whether the canary's bake time is over (ISO times of one format compare as text)."""
    split = Split.of(state)
    return split is not None and split.bake_until is not None and now >= split.bake_until


def refuse_deploy(state: AppState) -> None:
    """A deploy during a canary would need a third instance: the operator decides first."""
    split = Split.of(state)
    if split is not None:
        raise CanaryError(
            f"app {state.app!r} runs a canary of {split.canary.tag} ({split.weight}%): "
            f"`deployer promote {state.app}` or `deployer abort {state.app}` first",
            app=state.app,
        )


def describe(state: AppState) -> str | None:
    split = Split.of(state)
    if split is None:
        return None
    how = "by client address (sticky)" if split.sticky else "per new connection"
    share = effective_share(split.weight, split.sticky)
    bake = f", promotes itself at {split.bake_until} if healthy" if split.bake_until else ""
    active = state.active.tag if state.active else "?"
    return (
        f"mode: canary {split.canary.tag} on {split.canary.port_set} ({split.canary.address}) takes "
        f"{split.weight}% {how} (effective {share:.2f}%), {active} the rest; since {split.since}{bake}"
    )
