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
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from deployer.config import AppConfig, Config
from deployer.errors import BootError, CanaryError, DeployerError, HookFailed, NothingToRollBack
from deployer.host import modes
from deployer.host.netfilter.backend import NetfilterBackend
from deployer.host.netfilter.chains import Chains
from deployer.host.forwarder import Forwarder, RoutingPort
from deployer.host.health import Prober, set_port_probe, wait_healthy
from deployer.host.operation import BRACKETED, FAILURES_ONLY, Operation, record_repairs
from deployer.host.state import StateStore
from deployer.journal import Journal, utc_now
from deployer.plan import app_chain, canary, conntrack, forwarding, hostbound, maintenance, nft, rules
from deployer.plan.containers import (
    LABEL_DIGEST,
    LABEL_IMAGE,
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
    def ensure_network(self, name: str, bridge: str) -> None: ...
    def containers(self, filters: Mapping[str, Any]) -> list[ContainerInfo]: ...
    def inspect(self, container_id: str) -> ContainerInfo | None: ...
    def run(self, reference: str, arguments: Mapping[str, Any]) -> ContainerInfo: ...
    def logs_tail(self, container_id: str, lines: int = 20) -> str: ...
    def set_restart_policy(self, container_id: str, policy: Mapping[str, Any]) -> None: ...
    def stop(self, container_id: str, timeout: int) -> None: ...
    def remove(self, container_id: str) -> None: ...


HookRunner = Callable[[Path, Mapping[str, str], float], HookOutcome]


@dataclass(frozen=True)
class CanaryStart:
    """How a deploy splits traffic with the instance it leaves serving (see plan/canary.py)."""

    weight: int
    sticky: bool = False
    seed: int = canary.DEFAULT_SEED
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


class Engine:
    def __init__(self, config: Config, docker: DockerPort, netfilter: NetfilterBackend, *, routing: RoutingPort,
                 prober: Prober, run_hook: HookRunner, journal: Journal | None = None,
                 environ: Mapping[str, str] | None = None, retired_netfilter: NetfilterBackend | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
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
        self.store = StateStore(self.settings.state_dir)
        self.chains = Chains(netfilter, docker, self.settings, retired=retired_netfilter, clock=clock, sleep=sleep)
        self.names = self.chains.names
        self.forwarder = Forwarder(self, routing)

    # --- public operations ---------------------------------------------------------------------

    def deploy(self, app_name: str, tag: str, *, actor: str, job: str | None = None,
               wait_on_transient: bool = False, canary_split: CanaryStart | None = None) -> DeployResult:
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
            return self._deploy(operation, app, Release(tag=tag, image=app.image), actor=actor, job=job,
                                canary_split=canary_split)

    def rollback(self, app_name: str, *, actor: str, job: str | None = None) -> DeployResult:
        """Go back to the previous release, pinned by digest, behind the same health gate."""
        app = self.config.app(app_name)
        hostbound.check_deployable(app)
        with self._operation("rollback", app, actor, job, tag="rollback") as operation:
            self._reconcile_app(app, actor=actor, job=job)
            previous = self.store.load(app.name).previous
            if previous is None:
                raise NothingToRollBack(f"app {app.name!r} has no previous release to roll back to", app=app.name)
            release = Release(tag=previous.tag, image=previous.image, digest=previous.digest)
            return self._deploy(operation, app, release, actor=actor, job=job, rollback=True)

    def reconcile(self, app_name: str | None = None, *, actor: str) -> list[str]:
        """Bring rules, containers and the record back into agreement; return the repairs made."""
        apps = [self.config.app(app_name)] if app_name else list(self.config.apps.values())
        repairs: list[str] = []
        for app in apps:
            with self._operation("reconcile", app, actor, None, tag="reconcile", shape=FAILURES_ONLY) as operation:
                operation.start()
                repairs.extend(self._reconcile_app(app, actor=actor))
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
                {"name": c.name, "id": c.id[:12], "status": c.status, "set": c.labels.get(LABEL_SET),
                 "tag": c.labels.get(LABEL_TAG), "address": c.address(self.settings.network)}
                for c in self.docker.containers(selector(self.settings, app.name))
            ]
            # Once deployed, the jumps into the app's chain must be there too, or outside clients miss it.
            jumps_ok = state.active is None or not self.chains.base_missing(live, app)
            if app.host_bound:
                live_rules = live_rules + hostbound.live_app_rules(live, self.names, app)
                wanted = wanted + hostbound.app_rules(self.names, app, self.settings.maintenance_port)
                jumps_ok = (not self.chains.base_missing(live, app)
                            and hostbound.jump(self.names) in live.rules("PREROUTING"))
            notes = forwarding.status_notes(app_chain.notes(app, state), state) + self._canary_flows(app, state)
            # A forward also needs its accept rules and IPv4 forwarding, or the old host never sees a packet.
            forward_problems = self.forwarder.drift(app.name, state, live) if state.mode == forwarding.MODE else []
            result.append(AppStatus(app.name, state.active, state.previous,
                                    live_rules == wanted and jumps_ok and not forward_problems, live_rules, wanted,
                                    containers, state.mode, state.mode_detail, state.drained,
                                    notes + forward_problems))
        return result

    def _canary_flows(self, app: AppConfig, state: AppState) -> list[str]:
        """While a canary runs: the live conntrack flows each instance answers, tcp and udp."""
        split = canary.Split.of(state)
        if split is None or state.active is None:
            return []
        counts = []
        for instance in (state.active, split.canary):
            try:
                flows = sum(self.chains.count_flows(conntrack.flows_to(app, protocol, instance.address))
                            for protocol in ("tcp", "udp"))
            except DeployerError as exc:
                return [f"live flows: unknown ({exc})"]
            counts.append(f"{instance.tag} ({instance.port_set} {instance.address}) {flows}")
        return ["live flows: " + ", ".join(counts)]

    def rules_text(self, app_name: str) -> str:
        """Every rule the deployer keeps for the app's recorded active instance, as one transaction: the
        iptables-restore text, or on the nftables backend the nft commands it becomes.

        Rendered against an empty table, so it shows the jumps and chains too, not a diff.
        """
        app = self.config.app(app_name)
        chain_rules = self.chains.wanted(app, self.store.load(app.name))
        text = rules.render_restore(rules.SavedTable(), self.names, self.settings.bridge, {app.name: chain_rules})
        if app.host_bound:
            text = hostbound.with_socket_rules(text, self.names, app, self.settings.maintenance_port)
        if self.settings.backend == "nftables":
            prefix = self.settings.chain_prefix
            return nft.translate_restore(text, nft.table_name(prefix), prefix, nft.Table()).nat
        return text

    def uninstall(self, *, actor: str) -> list[str]:
        """Remove everything the deployer made on this host: its containers, rules and records.

        Images stay. Traffic to the apps stops: this is for taking a host out of service.
        """
        removed = []
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

    def _operation(self, kind: str, app: AppConfig, actor: str, job: str | None, *, tag: str,
                   shape: str = BRACKETED) -> Operation:
        """The operation's bookkeeping around its steps, holding the app's lock (`tag` says for what)."""
        return Operation(self.journal, kind, {"app": app.name, "job": job, "actor": actor},
                         lock=self.chains.app_lock(app.name, tag=tag, actor=actor), shape=shape, clock=self.clock)

    def _deploy(self, operation: Operation, app: AppConfig, release: Release, *, actor: str, job: str | None,
                rollback: bool = False, canary_split: CanaryStart | None = None) -> DeployResult:
        """The steps of a deploy (and a rollback) inside its operation, which holds the app's lock."""
        base = operation.base
        operation.failed["tag"] = release.tag
        operation.start(tag=release.tag, **({"canary": canary_split.weight} if canary_split else {}))
        # A third instance has no port set: the running canary is promoted or aborted first.
        before = self.store.load(app.name)
        canary.refuse_deploy(before)
        if canary_split is not None and before.active is None:
            raise CanaryError(f"app {app.name!r} has no active instance to split traffic with; deploy it "
                              f"without --canary first", app=app.name)
        if not rollback:  # a rollback reconciled before it chose its release
            try:
                self._reconcile_app(app, actor=actor, job=job)
            except DeployerError as exc:
                # Most often a daemon that does not answer: nothing moved, but a job that gives up on it is a
                # failed deploy, and on-failure is told so.
                if not operation.waits(exc):
                    with contextlib.suppress(DeployerError):
                        context = self._hook_context(app, release, actor, job, self.store.load(app.name))
                        self._hook("on-failure", app, replace(context, error=str(exc)), base, must_pass=False)
                raise
        state = self.store.load(app.name)
        old = state.active
        new_set = other_set(old.port_set if old else None)
        context = self._hook_context(app, release, actor, job, state)

        new: ContainerInfo | None = None
        try:
            self._hook("pre-deploy", app, context, base)
            with operation.step("pull") as step:
                release = self._obtain_image(app, release, rollback=rollback)
                step.detail.update(image=release.reference, digest=release.digest)
            context = replace(context, digest=release.digest)
            with operation.step("start") as step:
                self._remove_leftovers(app, new_set, keep=old.container_id if old else None)
                self.docker.ensure_network(self.settings.network, self.settings.bridge)
                arguments = run_arguments(self.settings, app, new_set, release)
                # No restarts before the gate passed: a crash stays a crash, with its exit code, not a loop.
                arguments["restart_policy"] = restart_policy("no")
                new = self.docker.run(release.reference, arguments)
                address = new.address(self.settings.network)
                step.detail.update(container=new.name, set=new_set, address=address)
                if not address:
                    # Most often the process has already exited: say so with its exit code, as the gate does.
                    raise BootError(self._not_running(new) or self._exit_reason(
                        new.id, f"container {new.name} has no address on network {self.settings.network!r}"),
                        app=app.name)
            with operation.step("health") as step:
                probe = set_port_probe(self.prober, app, new_set)
                step.detail["probes"] = wait_healthy(app.health, probe, lambda: self._not_running(new),
                                                     clock=self.clock, sleep=self.sleep)
                self.docker.set_restart_policy(new.id, restart_policy(app.restart))
            self._hook("post-healthy", app, context, base)
            with operation.step("flip") as step:
                instance = Instance(port_set=new_set, tag=release.tag, image=release.image, digest=release.digest,
                                    container_id=new.id, container_name=new.name, address=address, since=utc_now())
                # The mode decides what the chain leads to: a manual maintenance stays, a failover of the old
                # instance ends, and a status-port forward moves along with the ports.
                if canary_split is not None:
                    after = canary.started(state, instance, weight=canary_split.weight, sticky=canary_split.sticky,
                                           seed=canary_split.seed, now=utc_now(), actor=actor,
                                           bake_until=canary_split.bake_until)
                else:
                    after = forwarding.after_promotion(maintenance.after_promotion(state.promoted(instance,
                                                                                                  utc_now())))
                old_addresses = self.chains.flip(app, self.chains.wanted(app, after), step.detail, tidy=False)
                # `since` is when the instance took the traffic: the commit, not the moment it was described.
                if canary_split is None:
                    after = replace(after, active=replace(after.active,
                                                          since=step.detail.get("committed_at", utc_now())))
                else:
                    step.detail["canary"] = canary_split.weight
                step.detail.update(**app_chain.flip_detail(state, after))
                step.detail.update(to=f"{new_set} {address}", **({"from": ",".join(sorted(old_addresses))}
                                                                 if old_addresses else {}))
        except DeployerError as exc:
            self._abandon(app, new, base)
            if not operation.waits(exc):
                self._hook("on-failure", app, replace(context, error=str(exc)), base, must_pass=False)
            raise

        # Traffic is on the new instance now. What follows tidies up; a failure no longer moves traffic.
        # The record is written first: from here on it must say what is live, whatever fails next. A fault
        # from here on (a full disk under the record) is a failure, not a wait: the flip happened.
        operation.waits_on_transient = False
        with operation.step("record"):
            self.store.save(after)  # the app lock is held: nothing else changed the record since the flip
        with contextlib.suppress(DeployerError), operation.step("conntrack") as step:
            step.detail["deleted"] = self.chains.clean_flows(conntrack.after_flip(app, old_addresses))
        if app.name in self.chains.shadowed:  # the flip's deleting rewrite, out of its timed step
            with contextlib.suppress(DeployerError), operation.step("tidy"):
                self.chains.tidy(app)
        self._hook("post-flip", app, context, base, must_pass=False)
        if canary_split is not None:  # both serve until promote or abort
            operation.finish(tag=release.tag, set=new_set, digest=release.digest, canary=canary_split.weight)
            return DeployResult(app.name, release.tag, new_set, release.digest, new.name, old.tag if old else None)
        if old is not None:
            self.retire(app, old, base, drain=True)
        if state.mode == forwarding.MODE:  # the forward this deploy replaced: drain it, then drop its rules
            with contextlib.suppress(DeployerError):
                self.forwarder.leave(app, state.mode_detail, base)
        self._hook("post-deploy", app, context, base, must_pass=False)
        operation.finish(tag=release.tag, set=new_set, digest=release.digest)
        return DeployResult(app.name, release.tag, new_set, release.digest, new.name, old.tag if old else None)

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
                step.detail["remaining"] = self.chains.wait_for_old_flows(conntrack.established_tcp(app, old.address),
                                                                          app.drain_seconds)
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

    # --- reconcile -----------------------------------------------------------------------------

    def _reconcile_app(self, app: AppConfig, *, actor: str, job: str | None = None) -> list[str]:
        """Make rules, containers and the record agree, choosing the instance that serves now.

        The serving instance is, in order: a running instance the live rules already point at
        (traffic is there; never move it needlessly); the recorded active instance if it runs;
        any other running instance of the app that passes a health probe. The rules are pointed
        at it before anything else is stopped, so there is no moment without a target.
        """
        if app.host_bound:
            return modes.reconcile_host_bound(self, app, actor=actor, job=job)
        repairs: list[str] = []
        state = self.store.load(app.name)
        containers = self.docker.containers(selector(self.settings, app.name))
        running = [c for c in containers if c.status == "running" and c.address(self.settings.network)]
        live = self.chains.table("nat")
        # The rules that still match new flows: an untidied flip leaves the old ones shadowed behind them.
        targets = rules.dnat_destinations(rules.unshadowed(live.rules(self.names.app(app.name))))
        active_id = state.active.container_id if state.active else None
        if state.mode == forwarding.MODE:
            if not any(c.address(self.settings.network) in targets for c in running):
                repairs = self.forwarder.reconcile(app, state, live)  # instances are left as they are
                record_repairs(self.journal, repairs, app=app.name, actor=actor, job=job)
                return repairs
            # A deploy from forward mode stopped after its flip: the instance serves, so the forward ends.
            self.store.save(forwarding.after_promotion(state))
            repairs.extend(self.forwarder.leave(app, state.mode_detail, {"app": app.name, "actor": actor}))
            state = self.store.load(app.name)

        split = canary.Split.of(state)
        if split is not None:
            kept = self._reconcile_canary(app, state, split, running, live, repairs)
            if kept:
                repairs.extend(self.chains.retire_other(app))
                repairs.extend(self._remove_others(app, containers, kept))
                record_repairs(self.journal, repairs, app=app.name, actor=actor, job=job)
                return repairs
            state = self.store.load(app.name)
            active_id = state.active.container_id if state.active else None

        serving = (next((c for c in running if c.address(self.settings.network) in targets and c.id == active_id),
                        None)
                   or next((c for c in running if c.address(self.settings.network) in targets), None)
                   or next((c for c in running if c.id == active_id), None)
                   or next((c for c in running if self._probe_once(app, c)), None))
        if serving is None:
            if state.active is not None:
                repairs.append(f"no running instance of {app.name}: the recorded {state.active.port_set} "
                               f"instance {state.active.container_name} is gone; rules left as they are")
                self.chains.ensure_base(app)
            record_repairs(self.journal, repairs, app=app.name, actor=actor, job=job)
            return repairs

        port_set = serving.labels.get(LABEL_SET, "blue")
        tag = serving.labels.get(LABEL_TAG, "unknown")
        address = serving.address(self.settings.network)
        instance = Instance(port_set=port_set, tag=tag, image=serving.labels.get(LABEL_IMAGE, app.image),
                            digest=serving.labels.get(LABEL_DIGEST) or None, container_id=serving.id,
                            container_name=serving.name, address=address, since=utc_now())
        wanted = self.chains.wanted(app, state.promoted(instance, utc_now()))  # as the mode says
        if self.chains.base_missing(live, app):
            self.chains.ensure_base(app)
            repairs.append(f"jumps and chains of {app.name} restored")
        else:
            self.chains.prepare_bridge()
        live_chain = live.rules(self.names.app(app.name))
        if live_chain != wanted:
            old_addresses = self.chains.flip(app, wanted)
            self.chains.clean_flows(conntrack.after_flip(app, old_addresses))
            repairs.append(f"shadowed rules of {app.name} removed" if rules.unshadowed(live_chain) == wanted
                           else f"rules of {app.name} pointed at {port_set} {address} ({tag})")

        if state.active is None or state.active.container_id != serving.id or state.active.address != address:
            self.store.save(state.promoted(instance, utc_now()))
            repairs.append(f"record of {app.name} set to {port_set} {serving.name} ({tag})")

        repairs.extend(self.chains.retire_other(app))  # after a switch of backends, once this one serves
        repairs.extend(self._remove_others(app, containers, {serving.id}))
        record_repairs(self.journal, repairs, app=app.name, actor=actor, job=job)
        return repairs

    def _remove_others(self, app: AppConfig, containers: list[ContainerInfo], keep: set[str]) -> list[str]:
        """Stop and remove the app's containers that serve nothing."""
        repairs = []
        for other in containers:
            if other.id in keep:
                continue
            if other.status == "running":
                self.docker.stop(other.id, app.stop_timeout)
            self.docker.remove(other.id)
            if other.address(self.settings.network):
                self.chains.clean_flows(conntrack.after_stop(app, other.address(self.settings.network)))
            repairs.append(f"removed {other.name} ({other.labels.get(LABEL_TAG, '?')}, {other.status}), "
                           f"which was not serving")
        return repairs

    def _reconcile_canary(self, app: AppConfig, state: AppState, split: canary.Split, running: list[ContainerInfo],
                          live: rules.SavedTable, repairs: list[str]) -> set[str]:
        """Keep the split the record names while both instances run; the ids kept, or none when it ended.

        With one of them gone the canary is over: the record is set to the survivor (the canary promoted when
        the active one died, aborted when the canary did) and the ordinary reconcile takes it from there.
        """
        assert state.active is not None
        address = {c.id: c.address(self.settings.network) for c in running}
        active_up, canary_up = state.active.container_id in address, split.canary.container_id in address
        if active_up and canary_up:
            state = replace(state, active=replace(state.active, address=address[state.active.container_id]),
                            mode_detail=replace(split, canary=replace(
                                split.canary, address=address[split.canary.container_id])).detail())
            if self.chains.base_missing(live, app):
                self.chains.ensure_base(app)
                repairs.append(f"jumps and chains of {app.name} restored")
            wanted = self.chains.wanted(app, state)
            if live.rules(self.names.app(app.name)) != wanted:
                self.chains.clean_flows(conntrack.after_flip(app, self.chains.flip(app, wanted)))
                repairs.append(f"rules of {app.name} set to the canary split the record names "
                               f"({split.weight}% to {split.canary.tag})")
            if state != self.store.load(app.name):
                self.store.save(state)
                repairs.append(f"record of {app.name}: the instances' addresses updated")
            return {state.active.container_id, split.canary.container_id}
        if canary_up:
            self.store.save(canary.promoted(state, now=utc_now()))
            repairs.append(f"canary of {app.name} promoted: the active instance {state.active.container_name} "
                           f"is not running")
        else:
            self.store.save(canary.aborted(state, now=utc_now()))
            repairs.append(f"canary of {app.name} ended: {split.canary.container_name} is not running")
        return set()

    def _probe_once(self, app: AppConfig, container: ContainerInfo) -> bool:
        port_set = container.labels.get(LABEL_SET)
        if port_set not in ("blue", "green"):
            return False
        return set_port_probe(self.prober, app, port_set)().ok

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
            return self._exit_reason(container.id, f"container {container.name} exited "
                                                   f"(exit code {info.exit_code}) before it became healthy")
        return None

    def _exit_reason(self, container_id: str, message: str) -> str:
        logs = self.docker.logs_tail(container_id, 20)
        return f"{message}; last log lines:\n{logs}" if logs else message

    def _set_ports(self, app: AppConfig, port_set: str) -> dict[str, int]:
        return {f"{p.container}/{p.protocol}": p.set_port(port_set) for p in app.ports}

    def _registry_auth(self, app: AppConfig) -> dict[str, str] | None:
        auth = self.config.registries.get(app.registry or "")
        return {"username": auth.username, "password": auth.password} if auth else None

    def _hook_context(self, app: AppConfig, release: Release, actor: str, job: str | None,
                      state: AppState) -> HookContext:
        old = state.active
        new_set = other_set(old.port_set if old else None)
        return HookContext(app=app.name, tag=release.tag, actor=actor, job=job, old_set=old.port_set if old
                           else None, new_set=new_set, old_tag=old.tag if old else None,
                           new_ports=self._set_ports(app, new_set),
                           old_ports=self._set_ports(app, old.port_set) if old else None,
                           bind=app.bind, health_path=app.health.path if app.health.type == "http" else None)

    def _hook(self, name: str, app: AppConfig, context: HookContext, base: dict[str, Any], *,
              must_pass: bool = True) -> None:
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
                    raise HookFailed(f"hook {name} exited with {outcome.exit_code}: {_tail(outcome.output, 3)}",
                                     app=app.name)
        except HookFailed:
            if must_pass:
                raise


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
