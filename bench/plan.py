"""What a bench run does and where: its sizes, its ports, its names and the deployer configs it uses.

Pure: nothing here touches the host. One run owns:

- a chain prefix DB + 5 hex digits (its nat chains, containers, network and namespaces are named
  after it, and a claim file with its pid tells other runs and test sessions it is alive);
- one block of 100 ports in 24000-24999, laid out by `Ports`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployer.plan import rules

PORT_FIRST, PORT_LAST = 24000, 24999
BLOCK = 100
BLOCKS = (PORT_LAST + 1 - PORT_FIRST) // BLOCK
RUN_PREFIX_RE = re.compile(r"^DB[0-9A-F]{5}$")
CHAIN_OF_RUN_RE = re.compile(r"^(DB[0-9A-F]{5})(?:-|$)")
OWNER_OF_RUN_RE = re.compile(r"^db[0-9a-f]{5}$")
IPV6_BENCH = "fd42:be4c"  # the first 32 bits of every IPv6 network of a run (RFC 4193, unique local)

# The scenarios of the deploys-under-load part, in the order they run.
SCENARIOS = ("ours", "seed", "stop-start", "naive")
# IPv6 clients (a dual-stack run, `Plan.ipv6`): wrk to the instance's IPv6 address, and to the external port on one
# of the host's own IPv6 addresses (never ::1, which IPv6 keeps inside the node: docs/ipv6.md), on each backend.
IPV6_PATHS = ("direct6", "dnat6", "dnat6-nft")
DATAPATHS = ("direct", "dnat", "dnat-addr", "nft", "nft-addr", "split", "haproxy", "nginx", "docker", *IPV6_PATHS)
# The first set of rounds: the iptables backend, before the host is switched to nftables.
IPTABLES_PATHS = tuple(p for p in DATAPATHS if p not in ("nft", "nft-addr", "split", "dnat6-nft"))
# The same DNAT through the nftables backend: the host switched to it, measured, and switched back.
NFT_PATHS = ("direct", "nft", "nft-addr", "direct6", "dnat6-nft")
# The canary's split (statistic match, 50%), measured after the others: it needs a second instance.
SPLIT_PATHS = ("direct", "split")
# DNAT through a local address that is not loopback: no masquerade. Only the host has such a path.
HOST_ONLY_PATHS = ("dnat-addr", "nft-addr")
# The paths the deployer's own rules carry, each with a target against direct, and what its target line adds
# after the client's name. A new path with a target is one more entry here.
DNAT_TARGETS = {
    "dnat": "",
    "dnat-addr": ", via a local address",
    "nft": ", nftables backend",
    "nft-addr": ", nftables backend via a local address",
    "split": ", canary split",
    "dnat6": ", IPv6, against IPv6 direct",
    "dnat6-nft": ", IPv6, nftables backend, against IPv6 direct",
}


def baseline_of(path: str) -> str:
    """The path a path's ratios are taken to: direct of its own address family, so IPv6 is not judged by IPv4."""
    return "direct6" if path in IPV6_PATHS else "direct"


# The pinned rounds: wrk on one core, the container and the proxies on another (see `pinning_for`). They run
# after the unpinned rounds of the iptables backend, on the same container, and cost the full run about two
# minutes (about three with IPv6's two paths), so they measure the paths with a target and one proxy hop beside them.
PINNED_PATHS = ("direct", "dnat", "dnat-addr", "haproxy", "direct6", "dnat6")
PINNED_MIN_THROUGHPUT = 0.97
CLIENTS = ("host", "outside")
SCALE_POINTS = (1, 10, 100, 1000)


@dataclass(frozen=True)
class Plan:
    """How much of everything a run does. `quick` is the CI smoke: small, but every code path."""

    quick: bool
    rounds: int  # data path: interleaved rounds over all paths (even: the order alternates)
    wrk_seconds: float  # wrk takes whole seconds
    wrk_warmup_seconds: float  # 0: no warm-up run
    pinned_rounds: int  # data path: rounds with wrk and the container on cores of their own (0: none)
    deploys: int  # per scenario, under load
    scale_points: tuple[int, ...]
    flips_per_point: int
    nft_points: tuple[int, ...] = (1, 10, 100, 1000, 10000)  # other apps in the nftables maps
    reconcile_points: tuple[int, ...] = (1, 100, 1000, 10000)  # apps read back by one reconcile
    one_read_per_app_up_to: int = 1000  # the comparison grows with the square of the apps
    wrk_threads: int = 1
    wrk_connections: int = 32
    drain_seconds: float = 1.0
    settle_seconds: float = 0.6  # between deploys, so each flip stands apart in the plots
    load_pause: float = 0.01  # each load client's pause between requests
    pinned_paths: tuple[str, ...] = PINNED_PATHS
    ipv6: bool = True  # a dual-stack run: the network, the outside client's link and the IPv6 paths

    def as_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def host_and_port(target: str) -> tuple[str, int]:
    """A wrk target's "host:port" or "[IPv6]:port" as a socket takes it: http.client keeps the brackets of a host
    given with its port, and no address then resolves."""
    host, _, port = target.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def round_order(paths: tuple[str, ...] | list[str], number: int) -> list[str]:
    """The paths of data-path round `number`: as listed in even rounds, reversed in odd ones.

    A fixed order gives every path the same neighbour and the same place in the round, so a
    drift of the machine over a round (a neighbour's job, a warming cache) lands on the same
    paths every time. Alternating the order cancels a steady drift over each pair of rounds.
    """
    return list(paths) if number % 2 == 0 else list(reversed(paths))


@dataclass(frozen=True)
class Pinning:
    """The cores of the pinned rounds, or why there are none.

    wrk alone on `load`; the backend container (Docker's cpuset) and every proxy in a path (HAProxy,
    nginx) on `backend`, so a proxy hop pays for its core as the container does.
    """

    load: int | None
    backend: int | None
    skipped: str | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        """The load generator's command, pinned to its core."""
        return ["taskset", "-c", str(self.load), *argv]

    def as_dict(self) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": self.skipped}
        return {"load_cpu": self.load, "backend_cpu": self.backend, "proxies_cpu": self.backend}


def pinning_for(cpus: Iterable[int], rounds: int) -> Pinning:
    """The first two of the cores the bench may use: the load generator on the first, the backend on the second."""
    ordered = sorted(set(cpus))
    if rounds <= 0:
        return Pinning(None, None, "no pinned rounds asked for (--pinned-rounds 0)")
    if len(ordered) < 2:
        only = f"CPU {ordered[0]}" if ordered else "no CPU"
        return Pinning(None, None, f"one core only ({only}): wrk and the container cannot be kept apart")
    return Pinning(ordered[0], ordered[1])


def plan_for(
    quick: bool,
    *,
    deploys: int | None = None,
    rounds: int | None = None,
    pinned_rounds: int | None = None,
    ipv6: bool | None = None,
) -> Plan:
    if quick:
        plan = Plan(
            quick=True,
            rounds=1,
            wrk_seconds=1.0,
            wrk_warmup_seconds=0.0,  # none: a smoke, not a figure
            pinned_rounds=1,
            pinned_paths=("direct", "dnat"),  # the pinning's every step, in four wrk runs of a second
            ipv6=False,  # the smoke stays as short as it was; the IPv6 paths are the full run's
            deploys=2,
            scale_points=SCALE_POINTS,
            flips_per_point=2,
            nft_points=(1, 100, 1000),
            reconcile_points=(1, 100, 1000),
            one_read_per_app_up_to=100,
        )
    else:
        plan = Plan(
            quick=False,
            rounds=6,
            wrk_seconds=4.0,
            wrk_warmup_seconds=1.0,
            pinned_rounds=4,
            deploys=20,
            scale_points=SCALE_POINTS,
            flips_per_point=16,
        )
    changes: dict[str, Any] = {}
    if deploys is not None:
        changes["deploys"] = deploys
    if rounds is not None:
        changes["rounds"] = rounds
    if pinned_rounds is not None:
        changes["pinned_rounds"] = pinned_rounds
    if ipv6 is not None:
        changes["ipv6"] = ipv6
    if changes:
        from dataclasses import replace

        plan = replace(plan, **changes)
    return plan


@dataclass(frozen=True)
class AppPorts:
    """One app's external ports and its blue/green set ports (TCP for HTTP, UDP for the echo)."""

    tcp: int
    tcp_blue: int
    tcp_green: int
    udp: int
    udp_blue: int
    udp_green: int


@dataclass(frozen=True)
class Ports:
    """The layout of one run's block of 100 ports."""

    base: int

    def __post_init__(self) -> None:
        if not (PORT_FIRST <= self.base and self.base + BLOCK - 1 <= PORT_LAST) or (self.base - PORT_FIRST) % BLOCK:
            raise ValueError(f"port block {self.base} is not one of the blocks of {PORT_FIRST}-{PORT_LAST}")

    def _app(self, offset: int) -> AppPorts:
        b = self.base + offset
        return AppPorts(b, b + 1, b + 2, b + 3, b + 4, b + 5)

    def scenario(self, name: str) -> AppPorts:
        return self._app(10 * SCENARIOS.index(name))

    @property
    def datapath(self) -> AppPorts:
        return self._app(40)

    @property
    def haproxy(self) -> int:
        return self.base + 46

    @property
    def nginx(self) -> int:
        return self.base + 47

    @property
    def scale(self) -> AppPorts:
        return self._app(50)

    @property
    def release(self) -> AppPorts:
        """The release loop's app (bench/release_loop.py)."""
        return self._app(60)

    @property
    def release_receiver(self) -> int:
        return self.base + 66

    @property
    def release_registry(self) -> int:
        return self.base + 67

    @property
    def release_github(self) -> int:
        return self.base + 68

    def filler(self, index: int) -> int:
        """The external port of the index-th stand-in app of the scale part: never sent traffic."""
        return self.base + 70 + index % 30

    @staticmethod
    def block(index: int) -> Ports:
        return Ports(PORT_FIRST + BLOCK * index)


@dataclass(frozen=True)
class RunNames:
    """Everything of one run is named after its prefix, so leftovers can be traced to their owner."""

    prefix: str  # DB + 5 upper-case hex digits: the nat chain prefix and the claim name

    def __post_init__(self) -> None:
        if not RUN_PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"bench prefix {self.prefix!r} is not DB + 5 hex digits")

    @property
    def owner(self) -> str:
        """The containers' deployer.owner label (what the engine derives from the chain prefix)."""
        return self.prefix.lower()

    @property
    def network(self) -> str:
        return self.owner

    @property
    def bridge(self) -> str:
        # Not starting with the namespace prefix: a stale-namespace sweep must never take the bridge.
        return f"br-{self.owner}"

    @property
    def netns_prefix(self) -> str:
        return self.owner  # 7 characters: namespace and veth names stay within IFNAMSIZ

    @property
    def scratch(self) -> Path:
        return Path("/tmp") / f"deployer-bench-{self.prefix}"

    @property
    def subnet6(self) -> str:
        """The run's Docker network's IPv6 /64: a unique local one of the bench's own, told apart by the prefix, never
        the machine's (fd00::/64) nor the integration tests'."""
        return str(ipaddress.IPv6Network(f"{IPV6_BENCH}:{self.prefix[2:6]}::/64"))

    @property
    def outside6(self) -> str:
        """The outside namespace's IPv6 link (/64): the host end ::1, the client ::2."""
        return str(ipaddress.IPv6Network(f"{IPV6_BENCH}:{self.prefix[2:6]}:1::/64"))

    def ports_claim(self, block: int) -> str:
        return f"bench-ports-{block}"


def prefix_of_chain(chain: str) -> str | None:
    match = CHAIN_OF_RUN_RE.match(chain)
    return match.group(1) if match else None


# --- deployer configs ------------------------------------------------------------------------------


def deployer_toml(
    names: RunNames,
    state_dir: Path,
    hooks_dir: Path,
    apps: list[str],
    backend: str = "iptables",
    *,
    ipv6: bool = False,
) -> str:
    """A run's deployer config; with `ipv6`, dual-stack on the run's IPv6 subnet (docs/ipv6.md), else IPv4 only
    (said: IPv6 is on by default), as the runs that measure IPv4 alone were made."""
    dual = ["ipv6 = true", f"ipv6_subnet = {json.dumps(names.subnet6)}"] if ipv6 else ["ipv6 = false"]
    return "\n".join(
        [
            "[deployer]",
            f"state_dir = {json.dumps(str(state_dir))}",
            f"hooks_dir = {json.dumps(str(hooks_dir))}",
            f"chain_prefix = {json.dumps(names.prefix)}",
            f"network = {json.dumps(names.network)}",
            f"bridge = {json.dumps(names.bridge)}",
            "hook_timeout = 20",
            f"backend = {json.dumps(backend)}",
            *dual,
            "",
            *apps,
        ]
    )


HEALTH = {"type": "http", "path": "/healthz", "interval": 0.1, "timeout": 1, "successes": 2, "deadline": 20}


def app_toml(
    name: str,
    image: str,
    ports: AppPorts,
    *,
    bind: str = "127.0.0.1",
    drain_seconds: float = 1.0,
    stop_timeout: int = 5,
    env: Mapping[str, str] | None = None,
) -> str:
    """One demo app: its HTTP port and its UDP echo port, each with blue and green set ports."""
    env = {"DRAIN_TIMEOUT": str(max(1, stop_timeout - 2)), **(env or {})}
    lines = [
        f"[apps.{name}]",
        f"image = {json.dumps(image)}",
        f"bind = {json.dumps(bind)}",
        f"drain_seconds = {drain_seconds}",
        f"stop_timeout = {stop_timeout}",
        "env = { " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in env.items()) + " }",
        f"[[apps.{name}.ports]]",
        f"external = {ports.tcp}",
        "container = 8080",
        'protocol = "tcp"',
        f"blue = {ports.tcp_blue}",
        f"green = {ports.tcp_green}",
        f"[[apps.{name}.ports]]",
        f"external = {ports.udp}",
        "container = 9090",
        'protocol = "udp"',
        f"blue = {ports.udp_blue}",
        f"green = {ports.udp_green}",
        f"[apps.{name}.health]",
        *(f"{k} = {json.dumps(v)}" for k, v in HEALTH.items()),
    ]
    return "\n".join(lines) + "\n"


def visits(points: tuple[int, ...], flips_per_point: int) -> list[tuple[int, int]]:
    """(other apps, flips) in the order measured: up, then back down, half the flips each way.

    Slow changes in the machine's load (other work on it) then weigh on every point alike.
    """
    up = flips_per_point - flips_per_point // 2
    return [(p, up) for p in points] + [(p, flips_per_point // 2) for p in reversed(points) if flips_per_point // 2]


def tags_for(plan: Plan) -> list[str]:
    """The image tags a run builds: one to start from, then one per deploy."""
    return [f"v{n}" for n in range(1, plan.deploys + 2)]


# --- stand-in apps for the scale part ---------------------------------------------------------------

FILLER_NETWORK = "198.51.100"  # TEST-NET-2: nothing answers there, and no traffic is sent to these rules


def filler_name(index: int) -> str:
    return f"f{index:04d}"


def filler_chains(names: RunNames, ports: Ports, indexes: range) -> dict[str, list[str]]:
    """Chain rules of stand-in apps, as the deployer renders an app's chain: one DNAT rule each."""
    chain_names = rules.ChainNames(names.prefix)
    return {
        filler_name(i): rules.app_rules(
            chain_names,
            filler_name(i),
            [
                rules.Forward(
                    "tcp", ports.filler(i), f"{FILLER_NETWORK}.{i % 250 + 1}", 8080, f"{filler_name(i)} blue stand-in"
                )
            ],
        )
        for i in indexes
    }
