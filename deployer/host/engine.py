"""The deploy engine: orders the effects of a deploy, a rollback and a reconcile.

It receives its adapters as arguments (Docker, netfilter, routing, probes, hooks, journal): the CLI
and the server get the real ones from wiring.py, tests pass the real ones or small fakes, and
nothing here reaches for a global client. The netfilter transactions are `Chains`', the journal's
bookkeeping around each operation is `Operation`'s; the engine orders the steps.

The rule that shapes it: traffic is never left without a target. The old instance stops only
after the rules point at the new one, the rules change in one transaction, and a crash at any
step leaves the rules pointing at a running instance, which `reconcile` then builds on.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from deployer.config import AppConfig, Config
from deployer.errors import BootError, CanaryError, DeployerError, HookFailed, NothingToRollBack, UsageError
from deployer.host import modes
from deployer.host.cluster import NftPort, SharedAddressPort, remove_cluster
from deployer.host.forwarder import Forwarder, RoutingPort
from deployer.host.health import Prober, set_port_probe, wait_healthy
from deployer.host.netfilter.backend import NetfilterBackend
from deployer.host.netfilter.chains import Chains
from deployer.host.operation import BRACKETED, FAILURES_ONLY, Operation, record_repairs
from deployer.host.reconcile import reconcile_app
from deployer.host.state import Publish, StateStore
from deployer.journal import Journal, utc_now
from deployer.plan import app_chain, canary, conntrack, forwarding, hostbound, maintenance, nft, rules
from deployer.plan.containers import (
    LABEL_SET,
    LABEL_TAG,
    ContainerInfo,
    Release,
    container_name,
    other_set,
    restart_policy,
    run_arguments,
    selector,
)
from deployer.plan.hooks import HookContext, HookOutcome, hook_environment, hook_path
from deployer.plan.records import SERVING, AppState, Instance
from deployer.plan.tags import check_tag


class DockerPort(Protocol):
    def ping(self) -> None: ...
    def pull(self, release: Release, auth: Mapping[str, str] | None = None) -> Release: ...
    def has_image(self, reference: str) -> bool: ...
    def tag_image(self, source: str, release: Release) -> None: ...
    def ensure_network(
        self, name: str, bridge: str, ipv6_subnet: str | None = None, *, ipv6_required: bool = True
    ) -> None: ...
    def addresses6(self, name: str) -> dict[str, str]: ...
    def containers(self, filters: Mapping[str, Any]) -> list[ContainerInfo]: ...
    def inspect(self, container_id: str) -> ContainerInfo | None: ...
    def run(self, reference: str, arguments: Mapping[str, Any]) -> ContainerInfo: ...
    def logs_tail(self, container_id: str, lines: int = 20) -> str: ...
    def set_restart_policy(self, container_id: str, policy: Mapping[str, Any]) -> None: ...
    def stop(self, container_id: str, timeout: int) -> None: ...
    def remove(self, container_id: str) -> None: ...


HookRunner = Callable[[Path, Mapping[str, str], float], HookOutcome]


def drawn_seed() -> int:
    """A canary's own hash seed, secret: who knows the seed can tell which client addresses reach the canary."""
    return secrets.randbits(32)


@dataclass(frozen=True)
class CanaryStart:
    """How a deploy splits traffic with the instance it leaves serving (see plan/canary.py)."""

    weight: int
    sticky: bool = False
    seed: int = field(default_factory=drawn_seed)  # drawn for each canary; `deploy --seed` sets one
    bake_until: str | None = None  # ISO time: the watchdog promotes then, if the canary stayed healthy


@dataclass(frozen=True)
class DeployResult:
    app: str
    tag: str
    port_set: str
    digest: str | None
    container: str
    previous_tag: str | None


@dataclass(frozen=True)
class AppStatus:
    app: str
    active: Instance | None
    previous: Instance | None
    rules_match: bool
    live_rules: list[str]
    wanted_rules: list[str]
    containers: list[dict[str, Any]] = field(default_factory=list)
    mode: str = SERVING
    mode_detail: dict[str, Any] = field(default_factory=dict)
    drained: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)  # lines for people: the mode, a drain, a host-bound app

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DeployRun:
    """One deploy's facts as its steps learn them: the record it builds on, what was pulled, the new instance."""

    operation: Operation
    app: AppConfig
    release: Release  # the pull puts what it pulled here, with its digest
    state: AppState  # the record the deploy builds on, as it was before the flip
    context: HookContext
    new_set: str
    new: ContainerInfo | None = None
    address: str | None = None
    old_addresses: set[str] = field(default_factory=set)  # where the rules pointed before the flip
    after: AppState | None = None  # the record the flip made true

    @property
    def base(self) -> dict[str, Any]:
        return self.operation.base

    @property
    def old(self) -> Instance | None:
        return self.state.active

    def started(self) -> ContainerInfo:
        assert self.new is not None, "the new instance starts before it is gated or flipped to"
        return self.new

    def result(self) -> DeployResult:
        return DeployResult(
            self.app.name,
            self.release.tag,
            self.new_set,
            self.release.digest,
            self.started().name,
            self.old.tag if self.old else None,
        )


class Engine:
    def __init__(
        self,
        config: Config,
        docker: DockerPort,
        netfilter: NetfilterBackend,
        *,
        routing: RoutingPort,
        prober: Prober,
        run_hook: HookRunner,
        journal: Journal | None = None,
        environ: Mapping[str, str] | None = None,
        retired_netfilter: NetfilterBackend | None = None,
        netfilter6: NetfilterBackend | None = None,
        leftovers6: Sequence[NetfilterBackend] = (),
        forwarding6: Callable[[], list[str]] | None = None,
        shared_address: SharedAddressPort | None = None,
        cluster_nft: NftPort | None = None,
        publish: Publish | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.settings = config.settings
        self.docker = docker
        self.netfilter = netfilter
        self.prober = prober
        self.journal = journal or Journal(secrets=config.secrets())
        self.run_hook = run_hook
        self.environ = dict(os.environ if environ is None else environ)
        self.sleep = sleep
        self.clock = clock
        self.store = StateStore(self.settings.state_dir, publish=publish)  # publish: what is live, to the queue
        self.chains = Chains(
            netfilter,
            docker,
            self.settings,
            retired=retired_netfilter,
            backend6=netfilter6,
            leftovers6=leftovers6,
            forwarding6=forwarding6,
            host_changed=lambda change: self.journal.record("host.sysctl", detail=change),
            clock=clock,
            sleep=sleep,
        )
        self.names = self.chains.names
        self.forwarder = Forwarder(self, routing)
        self.shared_address = shared_address  # with [cluster]: uninstall takes the shared address off
        self.cluster_nft = cluster_nft  # with [cluster] address6: and the shared IPv6 address's nftables table

    # --- public operations ---------------------------------------------------------------------

    def deploy(
        self,
        app_name: str,
        tag: str,
        *,
        actor: str,
        job: str | None = None,
        wait_on_transient: bool = False,
        canary_split: CanaryStart | None = None,
    ) -> DeployResult:
        """Deploy `tag`; with `canary_split`, the new instance takes that share of new flows and the old one stays.

        `wait_on_transient`: the caller will try again after a transient fault (every one strikes before the
        flip), so such a fault is recorded as `deploy.waiting` and runs no on-failure hook."""
        app = self.config.app(app_name)
        hostbound.check_deployable(app)
        check_tag(app, tag)
        if canary_split is not None:
            canary.check_weight(canary_split.weight)
        with self._operation("deploy", app, actor, job, tag=tag) as operation:
            operation.waits_on_transient = wait_on_transient
            release = Release(tag=tag, image=app.image)
            if canary_split is not None:
                return self._start_canary(operation, app, release, canary_split, actor=actor, job=job)
            return self._deploy(operation, app, release, actor=actor, job=job)

    def rollback(self, app_name: str, *, actor: str, job: str | None = None) -> DeployResult:
        """Go back to the previous release, pinned by digest, behind the same health gate."""
        app = self.config.app(app_name)
        hostbound.check_deployable(app)
        with self._operation("rollback", app, actor, job, tag="rollback") as operation:
            reconcile_app(self, app, actor=actor, job=job)
            previous = self.store.load(app.name).previous
            if previous is None:
                raise NothingToRollBack(f"app {app.name!r} has no previous release to roll back to", app=app.name)
            release = Release(tag=previous.tag, image=previous.image, digest=previous.digest)
            return self._deploy(operation, app, release, actor=actor, job=job, rollback=True)

    def reconcile(self, app_name: str | None = None, *, actor: str) -> list[str]:
        """Bring rules, containers and the record back into agreement; return the repairs made.

        For every app, the nat table is read once, before the first app, and each app is repaired from that read:
        `serve` reconciles at every start, and one read per app made that grow with the square of the apps. An
        app whose chain in that read is not what its record calls for (one to repair, or one a deploy changed
        since) has its own chain read again before anything is chosen from it (see `reconcile_app`).
        """
        apps = [self.config.app(app_name)] if app_name else list(self.config.apps.values())
        live = None if app_name else self.chains.table("nat")
        repairs: list[str] = []
        for app in apps:
            with self._operation("reconcile", app, actor, None, tag="reconcile", shape=FAILURES_ONLY) as operation:
                operation.start()
                repairs.extend(reconcile_app(self, app, actor=actor, live=live))
        if app_name is None:
            retired = self.chains.retire_ipv6_leftovers()
            record_repairs(self.journal, retired, actor=actor)
            repairs.extend(retired)
        return repairs

    def status(self, app_name: str | None = None) -> list[AppStatus]:
        apps = [self.config.app(app_name)] if app_name else list(self.config.apps.values())
        live = self.chains.table("nat")
        result = []
        for app in apps:
            state = self.store.load(app.name)
            wanted = self.chains.wanted(app, state)
            live_rules = live.rules(self.names.app(app.name))
            containers = [
                {
                    "name": c.name,
                    "id": c.id[:12],
                    "status": c.status,
                    "set": c.labels.get(LABEL_SET),
                    "tag": c.labels.get(LABEL_TAG),
                    "address": c.address(self.settings.network),
                    **({"address6": c.address6(self.settings.network)} if self.chains.backend6 is not None else {}),
                }
                for c in self.docker.containers(selector(self.settings, app.name))
            ]
            # Once deployed, the jumps into the app's chain must be there too, or outside clients miss it.
            jumps_ok = state.active is None or not self.chains.base_missing(live, app)
            notes = forwarding.status_notes(
                app_chain.notes(app, state), state, dual=self.chains.dual(app)
            ) + self._canary_flows(app, state)
            drifted6 = self._ipv6_note(app, state, wanted, notes)
            if self.chains.dual(app) and any(c.get("address") and not c.get("address6") for c in containers):
                notes.append(
                    f"IPv6: not served: the instances have no IPv6 address, because the Docker network "
                    f"{self.settings.network!r} was made without IPv6. Remove it while nothing runs on it, and "
                    f"the next deploy makes it dual-stack (docs/ipv6.md)"
                )
            if app.host_bound:
                live_rules = live_rules + hostbound.live_app_rules(live, self.names, app)
                wanted = wanted + hostbound.app_rules(self.names, app, self.settings.maintenance_port)
                jumps_ok = not self.chains.base_missing(live, app) and hostbound.jump(self.names) in live.rules(
                    "PREROUTING"
                )
            # A forward also needs its accept rules and IPv4 forwarding, or the old host never sees a packet.
            forward_problems = self.forwarder.drift(app.name, state, live) if state.mode == forwarding.MODE else []
            result.append(
                AppStatus(
                    app.name,
                    state.active,
                    state.previous,
                    live_rules == wanted and jumps_ok and not forward_problems and not drifted6,
                    live_rules,
                    wanted,
                    containers,
                    state.mode,
                    state.mode_detail,
                    state.drained,
                    notes + forward_problems,
                )
            )
        return result

    def _ipv6_note(self, app: AppConfig, state: AppState, wanted: list[str], notes: list[str]) -> bool:
        """On a dual-stack host, a line for the IPv6 side (and one for a host-bound app's socket match); whether its
        rules differ from what they should be."""
        if self.chains.backend6 is None:
            return False
        if not self.chains.dual(app):
            notes.append("IPv6: off for this app (ipv6 = false); its IPv6 clients are not served")
            return False
        wanted6 = self.chains.wanted6(app, wanted, forwarding.twins6(state)) or []
        live6 = self.chains.chain6(app.name)
        socket_ok = True
        if app.host_bound:
            socket_ok = hostbound.in_step(
                self.chains.table("nat", ipv6=True), self.names, app, self.settings.maintenance_port
            )
            notes.append(
                "IPv6: the socket-match rules are in place"
                if socket_ok
                else "IPv6: the socket-match rules or their PREROUTING jump differ from what the config calls for"
            )
        if live6 == wanted6:
            notes.append(f"IPv6: {len(wanted6)} rule{'' if len(wanted6) == 1 else 's'}, in step with IPv4")
            return not socket_ok
        notes.append(
            f"IPv6: the rules differ from what the record calls for ({len(live6 or [])} live, {len(wanted6)} wanted)"
        )
        return True

    def _canary_flows(self, app: AppConfig, state: AppState) -> list[str]:
        """While a canary runs: the live conntrack flows each instance answers, tcp and udp."""
        split = canary.Split.of(state)
        if split is None or state.active is None:
            return []
        counts = []
        for instance in (state.active, split.canary):
            try:
                flows = sum(
                    self.chains.count_flows(conntrack.flows_to(app, protocol, instance.address))
                    for protocol in ("tcp", "udp")
                )
            except DeployerError as exc:
                return [f"live flows: unknown ({exc})"]
            counts.append(f"{instance.tag} ({instance.port_set} {instance.address}) {flows}")
        return ["live flows: " + ", ".join(counts)]

    def rules_text(self, app_name: str, *, ipv6: bool = False) -> str:
        """Every rule the deployer keeps for the app's recorded active instance, as one transaction: the
        iptables-restore text, or on the nftables backend the nft commands it becomes. With `ipv6`, the IPv6
        family's (ip6tables-restore text, or `table ip6` commands), a transaction of its own as it is applied.

        Rendered against an empty table, so it shows the jumps and chains too, not a diff.
        """
        app = self.config.app(app_name)
        state = self.store.load(app.name)
        chain_rules = self.chains.wanted(app, state)
        if ipv6:
            chain_rules6 = self.chains.wanted6(app, chain_rules, forwarding.twins6(state))
            if chain_rules6 is None:
                raise UsageError("IPv6 is off on this host ([deployer] ipv6 = false): it has no IPv6 rules")
            chain_rules = chain_rules6
        text = rules.render_restore(
            rules.SavedTable(), self.names, self.settings.bridge, {app.name: chain_rules}, ipv6=ipv6
        )
        if app.host_bound:  # the same socket-match text in both families
            text = hostbound.with_socket_rules(text, self.names, app, self.settings.maintenance_port)
        if self.settings.backend == "nftables":
            prefix, family = self.settings.chain_prefix, nft.family_of("ip6" if ipv6 else "ip")
            return nft.translate_restore(
                text, nft.table_name(prefix), prefix, nft.Table(family=family), family=family
            ).nat
        return text

    def uninstall(self, *, actor: str) -> list[str]:
        """Remove everything the deployer made on this host: its containers, rules and records.

        Images stay. Traffic to the apps stops: this is for taking a host out of service. With `[cluster]`, the
        shared address and then the cluster's chains go first (see `remove_cluster`), before the apps' rules.
        """
        removed = []
        if self.config.cluster is not None and self.shared_address is not None:
            removed.extend(remove_cluster(self.config, self.netfilter, self.shared_address, self.cluster_nft))
        for container in self.docker.containers(selector(self.settings)):
            self.docker.remove(container.id)
            removed.append(f"container {container.name}")
        removed.extend(modes.remove_retries(self.chains))  # the watchdog's mangle chain, if one was left behind
        removed.extend(self.forwarder.uninstall())  # first: its nat chain is jumped to from POSTROUTING
        if self.chains.teardown():
            removed.append(f"nat chains {self.names.top}*")
        for app in self.config.apps:
            if self.store.forget(app):
                removed.append(f"record of {app}")
        self.journal.record("uninstall", actor=actor, removed=removed)
        return removed

    # --- the deploy sequence -------------------------------------------------------------------

    def _operation(
        self, kind: str, app: AppConfig, actor: str, job: str | None, *, tag: str, shape: str = BRACKETED
    ) -> Operation:
        """The operation's bookkeeping around its steps, holding the app's lock (`tag` says for what)."""
        return Operation(
            self.journal,
            kind,
            {"app": app.name, "job": job, "actor": actor},
            lock=self.chains.app_lock(app.name, tag=tag, actor=actor),
            shape=shape,
            clock=self.clock,
        )

    def _deploy(
        self,
        operation: Operation,
        app: AppConfig,
        release: Release,
        *,
        actor: str,
        job: str | None,
        rollback: bool = False,
    ) -> DeployResult:
        """A deploy (and a rollback) inside its operation, which holds the app's lock: start the new instance,
        gate it, flip all traffic to it, then retire the old one."""
        self._open(operation, app, release)
        run = self._prepare(operation, app, release, actor=actor, job=job, reconciled=rollback)

        def promoted(instance: Instance) -> AppState:
            # The mode decides what the chain leads to: a manual maintenance stays, a failover of the old
            # instance ends, and a status-port forward moves along with the ports.
            return forwarding.after_promotion(maintenance.after_promotion(run.state.promoted(instance, utc_now())))

        with self._abandoned_on_failure(run):
            self._start_new(run, rollback=rollback)
            self._gate(run)
            self._flip(run, promoted, committed=_took_traffic)
        self._record(run)
        self._retire_old(run)
        self._hook("post-deploy", app, run.context, run.base, must_pass=False)
        operation.finish(tag=run.release.tag, set=run.new_set, digest=run.release.digest)
        return run.result()

    def _start_canary(
        self, operation: Operation, app: AppConfig, release: Release, split: CanaryStart, *, actor: str, job: str | None
    ) -> DeployResult:
        """A deploy that starts a canary: the same steps up to the flip, which gives the new instance `split`'s
        share of new flows; both serve until promote or abort, so nothing is retired."""
        before = self._open(operation, app, release, canary=split.weight)
        if before.active is None:
            raise CanaryError(
                f"app {app.name!r} has no active instance to split traffic with; deploy it without --canary first",
                app=app.name,
            )
        run = self._prepare(operation, app, release, actor=actor, job=job)

        def started(instance: Instance) -> AppState:
            return canary.started(
                run.state,
                instance,
                weight=split.weight,
                sticky=split.sticky,
                seed=split.seed,
                now=utc_now(),
                actor=actor,
                bake_until=split.bake_until,
            )

        with self._abandoned_on_failure(run):
            self._start_new(run)
            self._gate(run)
            self._flip(run, started, detail={"canary": split.weight})
        self._record(run)
        operation.finish(tag=run.release.tag, set=run.new_set, digest=run.release.digest, canary=split.weight)
        return run.result()

    # --- the steps of a deploy -----------------------------------------------------------------

    def _open(self, operation: Operation, app: AppConfig, release: Release, **detail: Any) -> AppState:
        """The operation starts; a third instance has no port set, so a running canary is promoted or aborted
        first. Returns the record as it was."""
        operation.failed["tag"] = release.tag
        operation.start(tag=release.tag, **detail)
        before = self.store.load(app.name)
        canary.refuse_deploy(before)
        return before

    def _prepare(
        self,
        operation: Operation,
        app: AppConfig,
        release: Release,
        *,
        actor: str,
        job: str | None,
        reconciled: bool = False,
    ) -> DeployRun:
        """Reconcile first (unless done: a rollback reconciled before it chose its release), then read the record
        the deploy builds on."""
        if not reconciled:
            try:
                reconcile_app(self, app, actor=actor, job=job)
            except DeployerError as exc:
                # Most often a daemon that does not answer: nothing moved, but a job that gives up on it is a
                # failed deploy, and on-failure is told so.
                if not operation.waits(exc):
                    with contextlib.suppress(DeployerError):
                        context = self._hook_context(app, release, actor, job, self.store.load(app.name))
                        self._hook("on-failure", app, replace(context, error=str(exc)), operation.base, must_pass=False)
                raise
        state = self.store.load(app.name)
        return DeployRun(
            operation,
            app,
            release,
            state,
            self._hook_context(app, release, actor, job, state),
            new_set=other_set(state.active.port_set if state.active else None),
        )

    @contextlib.contextmanager
    def _abandoned_on_failure(self, run: DeployRun) -> Iterator[None]:
        """Before the flip, a failure removes the new instance and leaves traffic where it was."""
        try:
            yield
        except DeployerError as exc:
            self._abandon(run.app, run.new, run.base)
            if not run.operation.waits(exc):
                self._hook("on-failure", run.app, replace(run.context, error=str(exc)), run.base, must_pass=False)
            raise

    def _start_new(self, run: DeployRun, *, rollback: bool = False) -> None:
        """pre-deploy, pull, then run the new instance on the free port set."""
        app, old = run.app, run.old
        self._hook("pre-deploy", app, run.context, run.base)
        with run.operation.step("pull") as step:
            run.release = self._obtain_image(app, run.release, rollback=rollback)
            step.detail.update(image=run.release.reference, digest=run.release.digest)
        run.context = replace(run.context, digest=run.release.digest)
        with run.operation.step("start") as step:
            self._remove_leftovers(app, run.new_set, keep=old.container_id if old else None)
            self.chains.ensure_network()
            arguments = run_arguments(self.settings, app, run.new_set, run.release)
            # No restarts before the gate passed: a crash stays a crash, with its exit code, not a loop.
            arguments["restart_policy"] = restart_policy("no")
            new = run.new = self.docker.run(run.release.reference, arguments)
            run.address = new.address(self.settings.network)
            step.detail.update(container=new.name, set=run.new_set, address=run.address)
            if not run.address:
                # Most often the process has already exited: say so with its exit code, as the gate does.
                raise BootError(
                    self._not_running(new)
                    or self._exit_reason(
                        new.id, f"container {new.name} has no address on network {self.settings.network!r}"
                    ),
                    app=app.name,
                )
            address6 = new.address6(self.settings.network) if self.chains.dual(app) else None
            if address6:
                step.detail["address6"] = address6
                self.chains.ipv6_of[run.address] = address6
            elif self.chains.dual(app) and self.settings.ipv6_explicit:
                raise BootError(
                    f"container {new.name} has no IPv6 address on network {self.settings.network!r}, and "
                    f"[deployer] ipv6 = true",
                    app=app.name,
                )

    def _gate(self, run: DeployRun) -> None:
        """Consecutive passing probes, then the app's restart policy, then post-healthy, which can still refuse."""
        new = run.started()
        with run.operation.step("health") as step:
            probe = set_port_probe(self.prober, run.app, run.new_set)
            step.detail["probes"] = wait_healthy(
                run.app.health, probe, lambda: self._not_running(new), clock=self.clock, sleep=self.sleep
            )
            address6 = self.chains.ipv6_of.get(run.address) if self.chains.dual(run.app) else None
            if address6:
                # The same check over the instance's IPv6 address, through the bridge: for a second or so after
                # its start its addresses are tentative (duplicate address detection) and it cannot answer IPv6,
                # and the flip must not send IPv6 clients to it before it can.
                probe6 = self.prober.health(run.app.health, address6, run.app.health.port)
                step.detail["probes6"] = wait_healthy(
                    run.app.health, probe6, lambda: self._not_running(new), clock=self.clock, sleep=self.sleep
                )
            self.docker.set_restart_policy(new.id, restart_policy(run.app.restart))
        self._hook("post-healthy", run.app, run.context, run.base)

    def _flip(
        self,
        run: DeployRun,
        decide: Callable[[Instance], AppState],
        *,
        committed: Callable[[AppState, str], AppState] = lambda after, at: after,
        detail: Mapping[str, Any] | None = None,
    ) -> None:
        """Point the app's chain at the new instance in one transaction, as the record `decide` makes says."""
        new, release = run.started(), run.release
        with run.operation.step("flip") as step:
            instance = Instance(
                port_set=run.new_set,
                tag=release.tag,
                image=release.image,
                digest=release.digest,
                container_id=new.id,
                container_name=new.name,
                address=run.address,
                since=utc_now(),
                address6=new.address6(self.settings.network) if self.chains.dual(run.app) else None,
            )
            after = decide(instance)
            run.old_addresses = self.chains.flip(run.app, self.chains.wanted(run.app, after), step.detail, tidy=False)
            run.after = committed(after, step.detail.get("committed_at", utc_now()))
            step.detail.update(detail or {})
            step.detail.update(**app_chain.flip_detail(run.state, run.after))
            step.detail.update(
                to=f"{run.new_set} {run.address}",
                **({"from": ",".join(sorted(run.old_addresses))} if run.old_addresses else {}),
            )

    def _record(self, run: DeployRun) -> None:
        """Traffic is on the new instance now. What follows tidies up; a failure no longer moves traffic.

        The record is written first: from here on it must say what is live, whatever fails next. A fault
        from here on (a full disk under the record) is a failure, not a wait: the flip happened."""
        app, operation = run.app, run.operation
        operation.waits_on_transient = False
        with operation.step("record"):
            self.store.save(run.after)  # the app lock is held: nothing else changed the record since the flip
        with contextlib.suppress(DeployerError), operation.step("conntrack") as step:
            step.detail["deleted"] = self.chains.clean_flows(conntrack.after_flip(app, run.old_addresses))
        if app.name in self.chains.shadowed:  # the flip's deleting rewrite, out of its timed step
            with contextlib.suppress(DeployerError), operation.step("tidy"):
                self.chains.tidy(app)
        self._hook("post-flip", app, run.context, run.base, must_pass=False)

    def _retire_old(self, run: DeployRun) -> None:
        """Drain and stop the instance that served before, and end the forward this deploy replaced."""
        if run.old is not None:
            self.retire(run.app, run.old, run.base, drain=True)
        if run.state.mode == forwarding.MODE:  # the forward this deploy replaced: drain it, then drop its rules
            with contextlib.suppress(DeployerError):
                self.forwarder.leave(run.app, run.state.mode_detail, run.base)

    def _obtain_image(self, app: AppConfig, release: Release, *, rollback: bool = False) -> Release:
        """Pull the tag; a rollback uses the image kept locally by digest, pulling only if it is gone.

        A release loaded from a release asset has no registry digest, and its tag may exist in no
        registry at all: its rollback runs the image still tagged locally, the one that ran.
        """
        if release.digest and self.docker.has_image(release.pinned_reference):
            self.docker.tag_image(release.pinned_reference, release)
            return release
        if rollback and not release.digest and self.docker.has_image(release.reference):
            return release
        pulled = self.docker.pull(release, self._registry_auth(app))
        if release.digest and pulled.digest and pulled.digest != release.digest:
            # The tag moved since; a rollback must run what ran before, so fetch that exact digest.
            self.docker.pull(Release(tag=release.digest, image=release.image), self._registry_auth(app))
            self.docker.tag_image(release.pinned_reference, release)
            return release
        return pulled

    def retire(self, app: AppConfig, old: Instance, base: dict[str, Any], *, drain: bool) -> None:
        """Let the old instance's open connections finish, then stop and remove it (its image stays)."""
        if drain:
            with self.journal.step("drain", **base) as step:
                step.detail["remaining"] = self.chains.wait_for_old_flows(
                    conntrack.established_tcp(app, old.address), app.drain_seconds
                )
        with self.journal.step("stop", container=old.container_name, **base):
            self.docker.stop(old.container_id, app.stop_timeout)
            self.docker.remove(old.container_id)
            self.chains.clean_flows(conntrack.after_stop(app, old.address))

    def _abandon(self, app: AppConfig, new: ContainerInfo | None, base: dict[str, Any]) -> None:
        """Remove a new instance that never took traffic."""
        if new is None:
            return
        with contextlib.suppress(DeployerError):
            with self.journal.step("remove-new", container=new.name, **base):
                self.docker.remove(new.id)

    # --- helpers -------------------------------------------------------------------------------

    def _remove_leftovers(self, app: AppConfig, port_set: str, keep: str | None) -> None:
        name = container_name(self.settings, app.name, port_set)
        for container in self.docker.containers(selector(self.settings, app.name)):
            if container.id != keep and (container.labels.get(LABEL_SET) == port_set or container.name == name):
                self.docker.remove(container.id)

    def _not_running(self, container: ContainerInfo) -> str | None:
        info = self.docker.inspect(container.id)
        if info is None:
            return f"container {container.name} disappeared"
        if info.status in ("exited", "dead") or info.restart_count > 0 or info.status == "restarting":
            return self._exit_reason(
                container.id, f"container {container.name} exited (exit code {info.exit_code}) before it became healthy"
            )
        return None

    def _exit_reason(self, container_id: str, message: str) -> str:
        logs = self.docker.logs_tail(container_id, 20)
        return f"{message}; last log lines:\n{logs}" if logs else message

    def _set_ports(self, app: AppConfig, port_set: str) -> dict[str, int]:
        return {f"{p.container}/{p.protocol}": p.set_port(port_set) for p in app.ports}

    def _registry_auth(self, app: AppConfig) -> dict[str, str] | None:
        auth = self.config.registries.get(app.registry or "")
        return {"username": auth.username, "password": auth.password} if auth else None

    def _hook_context(
        self, app: AppConfig, release: Release, actor: str, job: str | None, state: AppState
    ) -> HookContext:
        old = state.active
        new_set = other_set(old.port_set if old else None)
        return HookContext(
            app=app.name,
            tag=release.tag,
            actor=actor,
            job=job,
            old_set=old.port_set if old else None,
            new_set=new_set,
            old_tag=old.tag if old else None,
            new_ports=self._set_ports(app, new_set),
            old_ports=self._set_ports(app, old.port_set) if old else None,
            bind=app.bind,
            health_path=app.health.path if app.health.type == "http" else None,
        )

    def _hook(
        self, name: str, app: AppConfig, context: HookContext, base: dict[str, Any], *, must_pass: bool = True
    ) -> None:
        path = hook_path(self.config.hooks_dir_for(app), name)
        if path is None:
            return
        env = hook_environment(name, context, self.environ, self.config.secret_env_names)
        try:
            with self.journal.step(f"hook {name}", **base) as step:
                outcome = self.run_hook(path, env, self.settings.hook_timeout)
                step.detail["output"] = _tail(outcome.output)
                if outcome.exit_code is None:
                    raise HookFailed(f"hook {name} timed out after {self.settings.hook_timeout:g}s", app=app.name)
                step.detail["exit_code"] = outcome.exit_code
                if outcome.exit_code != 0:
                    raise HookFailed(
                        f"hook {name} exited with {outcome.exit_code}: {_tail(outcome.output, 3)}", app=app.name
                    )
        except HookFailed:
            if must_pass:
                raise


def _took_traffic(after: AppState, committed_at: str) -> AppState:
    """`since` is when the instance took the traffic: the commit, not the moment it was described."""
    assert after.active is not None
    return replace(after, active=replace(after.active, since=committed_at))


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
