"""The cluster agent: keepalived says which buckets this host is master of; the agent makes the rules say the same.

It receives its adapters (netfilter, keepalived, the shared address, a probe factory) as arguments; only
deployer/wiring.py builds the real ones. The order of effects, which the unit tests pin down:

- start: with a shared IPv6 address, its nftables table owning nothing (its neighbour discovery rewrite in place
  before the address is), then join the shared address(es), write keepalived's config and track files, write the
  chain owning nothing, with `unicast` the filter that drops VRRP from anyone but the other hosts (removed without
  it), start keepalived. Until keepalived reports, this host takes in no new flow.
- a bucket gained is taken `handover_delay` after keepalived said MASTER, the moment the old owner needs to drop
  it; meanwhile, and whenever in service, the flows a peer relays are taken in (plan/cluster.py, "The handover").
- a bucket lost (BACKUP, FAULT, keepalived gone) stops being taken in at once and is relayed to the host keepalived
  elects next, in the same transaction, for `relay_seconds` (lost to a host of higher priority, only when that
  host is surely the one: `relays_when_outranked`). A bucket let go without a relay is simply dropped.
- to go out of service (unhealthy, or asked to leave): let every bucket go (relayed) first, then tell keepalived
  (its track file). The other way round, this host would still take in new flows after a peer took them over.
- stop: drop every bucket, then stop keepalived by its pid (its instances send priority 0: a quick takeover).
- every change of buckets is written to the IPv4 chain, then to the IPv6 table's chain (plan/cluster6.py).

The control side (`cluster status`, `leave`, `join`) talks to the agent through files in <state_dir>/cluster/:
it writes the intent ("join" or "leave"), the agent writes status.json.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deployer.config import AppConfig, Config
from deployer.config.cluster import ClusterConfig
from deployer.errors import ClusterError, DeployerError, LeaveRefused
from deployer.folders import write_atomically
from deployer.host.health import Prober, ProbeResult, set_port_probe
from deployer.host.state import StateStore
from deployer.journal import Journal, utc_now
from deployer.plan import cluster as plan
from deployer.plan import cluster6
from deployer.plan.keepalived import render_config
from deployer.plan.rules import ChainNames

FAILURES_TO_FAULT = 2  # probes failed in a row before the host goes out of service
PASSES_TO_SERVE = 3  # probes passed in a row before it comes back
# After keepalived died, start it again only once its peers have surely taken its buckets: started at once, its
# timers run out with theirs, and two hosts become master of one bucket together.
RESTART_PAUSE = 2.0
JOIN, LEAVE = "join", "leave"


class NetfilterPort(Protocol):
    def save_table(self, table: str) -> str: ...
    def restore(self, text: str) -> None: ...
    def conntrack_list(self, arguments: list[str]) -> list[str]: ...
    def disable_tcp_loose(self) -> None: ...


class KeepalivedPort(Protocol):
    def prepare(self, config_text: str) -> None: ...
    def write_file(self, path: Path, text: str) -> None: ...
    def start(self) -> int: ...
    def stop_leftover(self) -> int | None: ...
    def running(self) -> bool: ...
    def pid(self) -> int | None: ...
    def stop(self, timeout: float = 5.0) -> None: ...
    def notices(self) -> Iterator[str]: ...
    def end_notices(self) -> None: ...


class SharedAddressPort(Protocol):
    def join(
        self, interface: str, address: str, mac: str, *, arp_mangle: bool, address6: str | None = None
    ) -> None: ...
    def own_mac(self, interface: str) -> str: ...
    def part(self, interface: str, address: str, mac: str, *, address6: str | None = None) -> None: ...


class NftPort(Protocol):
    """nftables, for the shared IPv6 address's table (plan/cluster6.py): one transaction per call."""

    def run(self, text: str) -> str: ...


class RulesPort(Protocol):
    """What taking the cluster's rules off a host needs of netfilter."""

    def save_table(self, table: str) -> str: ...
    def restore(self, text: str) -> None: ...


ProbeFactory = Callable[[AppConfig], "Callable[[], ProbeResult] | None"]
# record(host=, address=, healthy=, intent=, problem=, owners=): the queue's copy for the console
# (deployer/queue/sightings.py), written when an owner changes and at least every OWNERS_HEARTBEAT seconds.
OwnersRecord = Callable[..., None]
OWNERS_HEARTBEAT = 5.0


@dataclass(frozen=True)
class ClusterPaths:
    folder: Path

    @classmethod
    def under(cls, state_dir: Path) -> ClusterPaths:
        return cls(Path(state_dir) / "cluster")

    @property
    def fifo(self) -> Path:
        return self.folder / "notify.fifo"

    @property
    def health_track(self) -> Path:
        return self.folder / "track-health"

    @property
    def leave_track(self) -> Path:
        return self.folder / "track-leave"

    @property
    def intent(self) -> Path:
        return self.folder / "intent"

    @property
    def status(self) -> Path:
        return self.folder / "status.json"


def cluster_of(config: Config) -> ClusterConfig:
    if config.cluster is None:
        raise ClusterError(f"{config.path} has no [cluster] table (docs/cluster.md)")
    return config.cluster


@dataclass
class AgentState:
    states: dict[int, str] = field(default_factory=dict)  # bucket -> keepalived's state of it here
    since: dict[int, float] = field(default_factory=dict)  # bucket -> when it became MASTER
    releases: dict[int, float] = field(default_factory=dict)  # bucket -> when let go, while it is relayed
    intake: plan.Intake | None = None  # what the chain does now; None before the first write
    healthy: bool = False
    failures: int = 0
    passes: int = 0
    intent: str = JOIN
    tracks: tuple[str, str] | None = None  # what the track files say now: health, leave
    died_at: float | None = None  # when keepalived was found dead
    keepalived_since: float | None = None  # when this agent started keepalived
    problem: str | None = None


class ClusterAgent:
    def __init__(
        self,
        config: Config,
        netfilter: NetfilterPort,
        keepalived: KeepalivedPort,
        shared: SharedAddressPort,
        *,
        journal: Journal,
        prober: Prober | None = None,
        probe: ProbeFactory | None = None,
        owners: OwnersRecord | None = None,
        nft: NftPort | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.cluster = cluster_of(config)
        if self.cluster.address6 is not None and nft is None:
            raise ClusterError("the shared IPv6 address needs nftables (the agent was built without it)")
        self.nft = nft
        self.netfilter = netfilter
        self.keepalived = keepalived
        self.shared = shared
        self.journal = journal
        self.clock = clock
        self.paths = ClusterPaths.under(config.settings.state_dir)
        self.names = ChainNames(config.settings.chain_prefix)
        self.store = StateStore(config.settings.state_dir)
        self.apps = [app for app in config.apps.values() if app.cluster]
        self.prober = prober
        self.probe = probe or self._probe_active
        self.state = AgentState()
        self.owners = owners
        self.recorded: tuple[Any, ...] | None = None  # what the queue's copy says, and when it was written
        self.pending: dict[str, Any] | None = None  # the owners table handed to the writer, not yet written
        self.pending_lock = threading.Lock()
        self.owners_due = threading.Event()
        self.writer: threading.Thread | None = None  # None: each table is written at once (before run, in tests)
        self.lock = threading.Lock()
        self.changed = threading.Event()

    # --- the order of effects --------------------------------------------------------------------

    def start(self) -> None:
        c = self.cluster
        self.netfilter.disable_tcp_loose()
        if c.address6 is not None and self.nft is not None:
            # Before the address: the host's neighbour advertisements for it carry the multicast MAC from the first.
            own_mac = self.shared.own_mac(c.interface)
            self.nft.run(cluster6.render_ensure(self.names, c, self.config.apps.values(), plan.Intake(), own_mac))
        self.shared.join(c.interface, c.address, c.multicast_mac, arp_mangle=c.arp == "mangle", address6=c.address6)
        self.keepalived.prepare(
            render_config(
                c,
                notify_fifo=self.paths.fifo,
                health_file=self.paths.health_track,
                leave_file=self.paths.leave_track,
                source=self.config.path,
            )
        )
        self.state.intent = read_intent(self.paths)
        self._write_tracks()  # unhealthy: no bucket before the health checks pass
        live = plan.parse(self.netfilter.save_table(plan.TABLE))
        self.netfilter.restore(plan.render_ensure(live, self.names, c, self.config.apps.values(), plan.Intake()))
        self.state.intake = plan.Intake()
        vrrp_filter = plan.render_vrrp_filter(
            plan.parse_filter(self.netfilter.save_table(plan.FILTER_TABLE)), self.names, c
        )
        if vrrp_filter:
            self.netfilter.restore(vrrp_filter)
        # An agent that was killed (and started again by its unit) left its keepalived running: stopped only now,
        # once the chain takes in nothing, so no moment has this host and a peer both answering a bucket.
        leftover = self.keepalived.stop_leftover()
        if leftover is not None:
            self.journal.record(
                "cluster.keepalived",
                actor="cluster",
                outcome="stopped",
                host=c.host,
                pid=leftover,
                reason="left running by an agent that died",
            )
        self._start_keepalived()
        self.journal.record(
            "cluster.run",
            actor="cluster",
            outcome="started",
            host=c.host,
            home=plan.home_buckets(c, c.host),
            intent=self.state.intent,
        )

    def stop(self) -> None:
        self.state.releases.clear()
        self._apply(plan.Intake(), reason="stopping")
        self.keepalived.stop()
        self.keepalived.end_notices()
        self._write_status()
        self.journal.record("cluster.run", actor="cluster", outcome="stopped", host=self.cluster.host)

    def on_notice(self, line: str) -> None:
        notice = plan.parse_notice(line)
        if notice is None or not 0 <= notice.bucket < self.cluster.buckets:
            return
        with self.lock:
            now = self.clock()
            s = self.state
            before = s.states.get(notice.bucket)
            s.states[notice.bucket] = notice.state
            if notice.state == plan.MASTER and before != plan.MASTER:
                s.since[notice.bucket] = now
            outranked = notice.state == plan.BACKUP
            if notice.state != plan.MASTER and (
                not outranked or plan.relays_when_outranked(self.cluster, notice.bucket)
            ):
                self._release({notice.bucket}, now)  # let go (and relayed) at once, not at the next round
            self._settle(now, reason=f"keepalived: {notice.state}")
        self.changed.set()

    def tick(self) -> float:
        """One round: health, intent, keepalived's life, then the chain. Returns when the next round is due."""
        problem = self._unhealthy()  # outside the lock: a slow probe must not hold up a lost bucket's release
        with self.lock:
            return self._tick(problem)

    def _tick(self, problem: str | None) -> float:
        now = self.clock()
        s = self.state
        if not self.keepalived.running():
            if s.died_at is None:
                s.died_at = now
                s.problem = "keepalived is not running"
                s.states.clear()
                s.since.clear()
            self._release(self._owned(), now)
            self._settle(now, reason="keepalived is not running")
            if now - s.died_at >= RESTART_PAUSE:
                s.died_at = None
                self._start_keepalived()
        self._check_health(problem)
        s.intent = read_intent(self.paths)
        if not s.healthy or s.intent == LEAVE:
            self._release(self._owned(), now)
            self._settle(now, reason="unhealthy" if not s.healthy else "leaving")  # first: see the module's docstring
            self._write_tracks()
        else:
            self._write_tracks()
            self._settle(now, reason="keepalived")
        self._write_status()
        next_at = self._decide(now).next_at
        wait = self.cluster.check_interval if next_at is None else min(self.cluster.check_interval, next_at - now)
        return max(wait, 0.001)

    def _in_service(self) -> bool:
        s = self.state
        return s.healthy and s.intent == JOIN and s.died_at is None

    def _owned(self) -> set[int]:
        return set(self.state.intake.owned) if self.state.intake else set()

    def _release(self, buckets: set[int], now: float) -> None:
        """Start handing over `buckets` that the chain takes in and that are not being handed over already."""
        for bucket in buckets & self._owned():
            self.state.releases.setdefault(bucket, now)

    def _decide(self, now: float) -> plan.IntakeDecision:
        s = self.state
        return plan.decide_intake(
            s.states,
            s.since,
            s.releases,
            now,
            buckets=self.cluster.buckets,
            in_service=self._in_service(),
            steady=s.keepalived_since is not None and now - s.keepalived_since >= plan.steady_seconds(self.cluster),
            delay=self.cluster.handover_delay,
            relay_for=plan.relay_seconds(self.cluster),
        )

    def _settle(self, now: float, *, reason: str) -> None:
        decision = self._decide(now)
        self.state.releases = dict(decision.releases)
        self._apply(decision.intake, reason=reason)

    # --- the pieces ------------------------------------------------------------------------------

    def _start_keepalived(self) -> None:
        self.state.keepalived_since = self.clock()
        pid = self.keepalived.start()
        self.journal.note("cluster.keepalived", host=self.cluster.host, pid=pid)

    def _apply(self, intake: plan.Intake, *, reason: str) -> None:
        if intake == self.state.intake:
            return
        before = self.state.intake or plan.Intake()
        self.netfilter.restore(plan.render_owned(self.names, self.cluster, self.config.apps.values(), intake))
        if self.cluster.address6 is not None and self.nft is not None:
            self.nft.run(cluster6.render_owned(self.names, self.cluster, self.config.apps.values(), intake))
        self.state.intake = intake
        self.journal.record(
            "cluster.buckets",
            actor="cluster",
            outcome="ok",
            host=self.cluster.host,
            owned=sorted(intake.owned),
            gained=sorted(intake.owned - before.owned),
            lost=sorted(before.owned - intake.owned),
            relaying=sorted(intake.relayed_out),
            taking_relays=sorted(intake.relayed_in),
            reason=reason,
        )

    def _write_tracks(self) -> None:
        """keepalived's track files: non-zero puts every instance of this host into FAULT."""
        s = self.state
        wanted = ("0\n" if s.healthy else "1\n", "1\n" if s.intent == LEAVE else "0\n")
        if wanted == s.tracks:
            return
        self.keepalived.write_file(self.paths.health_track, wanted[0])
        self.keepalived.write_file(self.paths.leave_track, wanted[1])
        s.tracks = wanted

    def _check_health(self, problem: str | None) -> None:
        s = self.state
        if problem is None:
            s.passes, s.failures = s.passes + 1, 0
            if not s.healthy and s.passes >= PASSES_TO_SERVE:
                s.healthy, s.problem = True, None
                self.journal.record("cluster.health", actor="cluster", outcome="healthy", host=self.cluster.host)
            return
        s.failures, s.passes, s.problem = s.failures + 1, 0, problem
        if s.healthy and s.failures >= FAILURES_TO_FAULT:
            s.healthy = False
            self.journal.record(
                "cluster.health", actor="cluster", outcome="unhealthy", host=self.cluster.host, problem=problem
            )

    def _unhealthy(self) -> str | None:
        """Why this host should not serve the shared address now, or None: every cluster app's instance answers."""
        for app in self.apps:
            probe = self.probe(app)
            if probe is None:
                return f"{app.name} has no active instance"
            result = probe()
            if not result.ok:
                return f"{app.name}: {result.detail}"
        return None

    def _probe_active(self, app: AppConfig) -> Callable[[], ProbeResult] | None:
        try:
            active = self.store.load(app.name).active
        except DeployerError:
            return None
        if active is None:
            return None
        assert self.prober is not None, "the agent probes instances through a prober (wiring.py gives it one)"
        return set_port_probe(self.prober, app, active.port_set)

    def _write_status(self) -> None:
        s = self.state
        status = {
            "host": self.cluster.host,
            "updated": utc_now(),
            "healthy": s.healthy,
            "intent": s.intent,
            "problem": s.problem,
            "keepalived_pid": self.keepalived.pid(),
            "states": {str(b): state for b, state in sorted(s.states.items())},
            "owned": sorted(self._owned()),
            "relaying": sorted(s.intake.relayed_out if s.intake else ()),
            "taking_relays": sorted(s.intake.relayed_in if s.intake else ()),
        }
        write_json(self.paths.status, status)
        self._record_owners()

    def _record_owners(self) -> None:
        """Hand the owners table and a heartbeat to the queue's writer (or, without one, write them now). Under the
        agent's lock only the hand-over: a slow or locked queue must never hold up letting a bucket go."""
        if self.owners is None:
            return
        s = self.state
        owners = plan.bucket_owners(self.cluster, s.states, self._owned())
        facts = (owners, s.healthy, s.intent, s.problem)
        now = self.clock()
        if self.recorded is not None and self.recorded[0] == facts and now - self.recorded[1] < OWNERS_HEARTBEAT:
            return
        self.recorded = (facts, now)
        with self.pending_lock:
            self.pending = {
                "host": self.cluster.host,
                "address": self.cluster.address,
                "healthy": s.healthy,
                "intent": s.intent,
                "problem": s.problem,
                "owners": owners,
            }
        if self.writer is None:
            self._flush_owners()
        else:
            self.owners_due.set()

    def _flush_owners(self) -> None:
        """Write the latest owners table handed over, if any; a queue that cannot take it is noted, never the
        agent's failure."""
        with self.pending_lock:
            pending, self.pending = self.pending, None
        if pending is None or self.owners is None:
            return
        try:
            self.owners(**pending)
        except DeployerError as exc:
            self.journal.note("cluster.owners", host=self.cluster.host, problem=str(exc))

    def _write_owners(self, stop: threading.Event) -> None:
        """The queue's writer: its own thread, so the rounds and keepalived's notices never wait on SQLite."""
        while not stop.is_set():
            self.owners_due.wait(1.0)
            self.owners_due.clear()
            self._flush_owners()

    # --- running ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Until `stop`: follow the FIFO in a thread, and tick."""
        self.start()
        reader = threading.Thread(target=self._follow, name="cluster-notices", daemon=True)
        reader.start()
        if self.owners is not None:
            self.writer = threading.Thread(target=self._write_owners, args=(stop,), name="cluster-owners", daemon=True)
            self.writer.start()
        try:
            while not stop.is_set():
                wait = self.tick()
                self.changed.wait(wait)
                self.changed.clear()
        finally:
            self.stop()
            self._flush_owners()  # the table as the stop left it: every bucket with the others

    def _follow(self) -> None:
        for line in self.keepalived.notices():
            self.on_notice(line)


# --- taking the cluster off a host -------------------------------------------------------------------


def remove_cluster(
    config: Config, netfilter: RulesPort, shared: SharedAddressPort, nft: NftPort | None = None
) -> list[str]:
    """The shared address off this host, then the cluster's chains; what was removed (at `deployer uninstall`).

    In this order: without its chain a host takes in every frame sent to the shared address and answers every
    flow, its peers' too, so the address goes first and the host stops receiving them. The agent (`deployer
    cluster run`) must be stopped before: it would write its chain back at its next change of buckets.
    """
    c = cluster_of(config)
    names = ChainNames(config.settings.chain_prefix)
    shared.part(c.interface, c.address, c.multicast_mac, address6=c.address6)
    removed = [f"shared address {c.address} on {c.interface}"]
    if c.address6 is not None:
        removed.append(f"shared address {c.address6} on {c.interface}")
    text = plan.render_removal(plan.parse(netfilter.save_table(plan.TABLE)), names)
    if text:
        netfilter.restore(text)
        removed.append(f"{plan.TABLE} chain {plan.chain(names)}")
    vrrp = plan.render_vrrp_removal(plan.parse_filter(netfilter.save_table(plan.FILTER_TABLE)), names)
    if vrrp:
        netfilter.restore(vrrp)
        removed.append(f"{plan.FILTER_TABLE} chain {plan.vrrp_chain(names)}")
    if nft is not None and cluster6.has_table(nft.run(f"list tables {cluster6.FAMILY}"), names):
        nft.run(cluster6.render_removal(names))
        removed.append(f"nftables table {cluster6.FAMILY} {cluster6.table_name(names)}")
    return removed


# --- the control side: status, leave, join -------------------------------------------------------


def read_intent(paths: ClusterPaths) -> str:
    try:
        text = paths.intent.read_text().strip()
    except FileNotFoundError:
        return JOIN
    except OSError as exc:
        raise ClusterError(f"cannot read {paths.intent}: {exc.strerror}") from None
    return LEAVE if text == LEAVE else JOIN


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def read_status(paths: ClusterPaths) -> dict[str, Any]:
    try:
        return json.loads(paths.status.read_text())
    except FileNotFoundError:
        raise ClusterError(
            f"no cluster agent has run here ({paths.status} is missing): start deployer cluster run"
        ) from None
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {paths.status}: {exc}") from None


@dataclass
class ClusterControl:
    """What the CLI does: read the agent's status, ask it to leave or join, and wait for it."""

    config: Config
    netfilter: NetfilterPort
    journal: Journal
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    @property
    def cluster(self) -> ClusterConfig:
        return cluster_of(self.config)

    @property
    def paths(self) -> ClusterPaths:
        return ClusterPaths.under(self.config.settings.state_dir)

    def status(self) -> dict[str, Any]:
        c = self.cluster
        status = read_status(self.paths)
        lines = self.netfilter.conntrack_list(plan.conntrack_filter(c))
        if c.address6 is not None:
            lines += self.netfilter.conntrack_list(plan.conntrack_filter6(c))
        flows = plan.flows_per_bucket(lines, c)
        status["buckets"] = [
            {
                "bucket": b,
                "home": plan.ranking(c, b)[0],
                "ranking": plan.ranking(c, b),
                "state": status["states"].get(str(b), "unknown"),
                "taken_in": b in status["owned"],
                "relayed": b in status.get("relaying", ()),
                "taken_from_relays": b in status.get("taking_relays", ()),
                "flows": flows[b],
            }
            for b in range(c.buckets)
        ]
        status["open_tcp_flows"] = plan.open_tcp_flows(lines, c)
        status["addresses"] = [c.address, *([c.address6] if c.address6 else [])]  # the shared ones, IPv4 first
        return status

    def leave(self, *, actor: str, wait: bool, timeout: float, force: bool) -> dict[str, Any]:
        c = self.cluster
        status = read_status(self.paths)
        states = {int(b): state for b, state in status["states"].items()}
        problem = plan.leave_problem(c, states)
        if problem and not force:
            self.journal.record("cluster.leave", actor=actor, outcome="refused", host=c.host, problem=problem)
            raise LeaveRefused(f"leaving now would leave buckets with no host: {problem}; --force leaves anyway")
        write_text(self.paths.intent, f"{LEAVE}\n", durable=True)
        self.journal.record(
            "cluster.leave", actor=actor, outcome="requested", host=c.host, forced=force or None, owned=status["owned"]
        )
        if not wait:
            return status
        started = self.clock()
        done = self._wait(
            lambda s: not s["owned"] and not s.get("relaying") and s["open_tcp_flows"] == 0,
            timeout,
            "its buckets to go and its TCP connections to finish",
        )
        self.journal.record(
            "cluster.leave",
            actor=actor,
            outcome="left",
            host=c.host,
            duration_ms=round((self.clock() - started) * 1000, 1),
        )
        return done

    def join(self, *, actor: str, wait: bool, timeout: float) -> dict[str, Any]:
        c = self.cluster
        write_text(self.paths.intent, f"{JOIN}\n", durable=True)
        self.journal.record("cluster.join", actor=actor, outcome="requested", host=c.host)
        home = set(plan.home_buckets(c, c.host))
        if not wait:
            return read_status(self.paths)
        started = self.clock()
        done = self._wait(lambda s: home <= set(s["owned"]), timeout, f"its home buckets {sorted(home)} to come back")
        self.journal.record(
            "cluster.join",
            actor=actor,
            outcome="joined",
            host=c.host,
            owned=done["owned"],
            duration_ms=round((self.clock() - started) * 1000, 1),
        )
        return done

    def _wait(self, done: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = self.clock() + timeout
        while True:
            status = self.status()
            if done(status):
                return status
            if self.clock() >= deadline:
                raise ClusterError(
                    f"waited {timeout:g}s for {what}; still holding buckets {status['owned']} and "
                    f"{status['open_tcp_flows']} open TCP connection(s)"
                )
            self.sleep(0.1)


def write_text(path: Path, text: str, *, durable: bool = False) -> None:
    """Atomically: the agent and the commands read these files while the other side writes them. The status is
    rewritten every tick, so only what must outlive a power loss (the operator's intent) is made durable."""
    write_atomically(path, text, durable=durable, mode=0o644, error=ClusterError)
