"""Reconcile one app: make rules, containers and the record agree, choosing the instance that serves now.

A deploy reconciles first and builds on what it finds; `deployer reconcile` runs it alone, after a crash or by
hand. The rules are pointed at the serving instance before anything else is stopped, so there is no moment
without a target. It takes the host's parts as one `ReconcileHost` (the engine is one), so nothing here imports
the engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, Protocol

from deployer.config import AppConfig
from deployer.host import modes
from deployer.host.forwarder import Forwarder
from deployer.host.health import set_port_probe
from deployer.host.operation import record_repairs
from deployer.journal import utc_now
from deployer.plan import canary, conntrack, forwarding, rules
from deployer.plan.containers import LABEL_DIGEST, LABEL_IMAGE, LABEL_SET, LABEL_TAG, ContainerInfo, selector
from deployer.plan.records import AppState, Instance


class Containers(Protocol):
    """The Docker calls a reconcile makes."""

    def containers(self, filters: Mapping[str, Any]) -> list[ContainerInfo]: ...
    def inspect(self, container_id: str) -> ContainerInfo | None: ...
    def stop(self, container_id: str, timeout: int) -> None: ...
    def remove(self, container_id: str) -> None: ...


class ReconcileHost(modes.ModeHost, Protocol):
    """The parts of a host a reconcile uses: a mode host's, its containers and its forwarder."""

    docker: Containers
    forwarder: Forwarder


def reconcile_app(
    host: ReconcileHost, app: AppConfig, *, actor: str, job: str | None = None, live: rules.SavedTable | None = None
) -> list[str]:
    """Make rules, containers and the record agree, choosing the instance that serves now.

    `live` is the nat table as read once for a reconcile of every app (`Engine.reconcile`), so a host of N apps
    reads it once, not N times; without it the table is read here. An app whose chain in that read is not what
    its record calls for gets its chain read again (it may have changed since): the choice of the serving
    instance is never made from an old picture of the app's rules. Each repair's transaction is the same.

    The serving instance is, in order: a running instance the live rules already point at
    (traffic is there; never move it needlessly); the recorded active instance if it runs;
    any other running instance of the app that passes a health probe. The rules are pointed
    at it before anything else is stopped, so there is no moment without a target.
    """
    if app.host_bound:
        return modes.reconcile_host_bound(host, app, actor=actor, job=job, live=live)
    repairs: list[str] = []
    state = host.store.load(app.name)
    containers = host.docker.containers(selector(host.settings, app.name))
    running = [c for c in containers if c.status == "running" and c.address(host.settings.network)]
    if live is None:
        live = host.chains.table("nat")
    elif live.rules(host.chains.names.app(app.name)) != host.chains.wanted(app, state):
        live = _with_chain_now(host, app, live)  # changed since the shared read, or to be repaired: read it again
    # The rules that still match new flows: an untidied flip leaves the old ones shadowed behind them.
    targets = rules.dnat_destinations(rules.unshadowed(live.rules(host.chains.names.app(app.name))))
    active_id = state.active.container_id if state.active else None
    if state.mode == forwarding.MODE:
        if not any(c.address(host.settings.network) in targets for c in running):
            repairs = host.forwarder.reconcile(app, state, live)  # instances are left as they are
            record_repairs(host.journal, repairs, app=app.name, actor=actor, job=job)
            return repairs
        # A deploy from forward mode stopped after its flip: the instance serves, so the forward ends.
        host.store.save(forwarding.after_promotion(state))
        repairs.extend(host.forwarder.leave(app, state.mode_detail, {"app": app.name, "actor": actor}))
        state = host.store.load(app.name)

    split = canary.Split.of(state)
    if split is not None:
        kept = _reconcile_canary(host, app, state, split, running, live, repairs)
        if kept:
            repairs.extend(host.chains.retire_other(app))
            repairs.extend(_remove_others(host, app, containers, kept))
            record_repairs(host.journal, repairs, app=app.name, actor=actor, job=job)
            return repairs
        state = host.store.load(app.name)
        active_id = state.active.container_id if state.active else None

    serving = (
        next((c for c in running if c.address(host.settings.network) in targets and c.id == active_id), None)
        or next((c for c in running if c.address(host.settings.network) in targets), None)
        or next((c for c in running if c.id == active_id), None)
        or next((c for c in running if _probe_once(host, app, c)), None)
    )
    if serving is None:
        if state.active is not None:
            repairs.append(
                f"no running instance of {app.name}: the recorded {state.active.port_set} "
                f"instance {state.active.container_name} is gone; rules left as they are"
            )
            host.chains.ensure_base(app)
        record_repairs(host.journal, repairs, app=app.name, actor=actor, job=job)
        return repairs

    port_set = serving.labels.get(LABEL_SET, "blue")
    tag = serving.labels.get(LABEL_TAG, "unknown")
    address = serving.address(host.settings.network)
    instance = Instance(
        port_set=port_set,
        tag=tag,
        image=serving.labels.get(LABEL_IMAGE, app.image),
        digest=serving.labels.get(LABEL_DIGEST) or None,
        container_id=serving.id,
        container_name=serving.name,
        address=address,
        since=utc_now(),
        address6=serving.address6(host.settings.network) if host.chains.dual(app) else None,
    )
    wanted = host.chains.wanted(app, state.promoted(instance, utc_now()))  # as the mode says
    if host.chains.base_missing(live, app):
        host.chains.ensure_base(app)
        repairs.append(f"jumps and chains of {app.name} restored")
    else:
        host.chains.prepare_bridge()
    live_chain = live.rules(host.chains.names.app(app.name))
    if live_chain != wanted:
        old_addresses = host.chains.flip(app, wanted)
        host.chains.clean_flows(conntrack.after_flip(app, old_addresses))
        repairs.append(
            f"shadowed rules of {app.name} removed"
            if rules.unshadowed(live_chain) == wanted
            else f"rules of {app.name} pointed at {port_set} {address} ({tag})"
        )
    elif host.chains.drifted6(app, wanted):
        host.chains.flip(app, wanted)
        repairs.append(f"IPv6 rules of {app.name} pointed at {port_set} {address} ({tag}), as the IPv4 ones")

    if state.active is None or state.active.container_id != serving.id or state.active.address != address:
        host.store.save(state.promoted(instance, utc_now()))
        repairs.append(f"record of {app.name} set to {port_set} {serving.name} ({tag})")

    repairs.extend(host.chains.retire_other(app))  # after a switch of backends, once this one serves
    repairs.extend(_remove_others(host, app, containers, {serving.id}))
    record_repairs(host.journal, repairs, app=app.name, actor=actor, job=job)
    return repairs


def _with_chain_now(host: ReconcileHost, app: AppConfig, live: rules.SavedTable) -> rules.SavedTable:
    """`live` with the app's chain as it is now: one chain read, whatever the size of the table."""
    chain = host.chains.names.app(app.name)
    now = host.chains.chain(app.name)
    chains = {name: lines for name, lines in live.chains.items() if name != chain}
    if now is not None:
        chains[chain] = now
    return rules.SavedTable(chains)


def _remove_others(host: ReconcileHost, app: AppConfig, containers: list[ContainerInfo], keep: set[str]) -> list[str]:
    """Stop and remove the app's containers that serve nothing."""
    repairs = []
    for other in containers:
        if other.id in keep:
            continue
        if other.status == "running":
            host.docker.stop(other.id, app.stop_timeout)
        host.docker.remove(other.id)
        if other.address(host.settings.network):
            host.chains.clean_flows(conntrack.after_stop(app, other.address(host.settings.network)))
        repairs.append(
            f"removed {other.name} ({other.labels.get(LABEL_TAG, '?')}, {other.status}), which was not serving"
        )
    return repairs


def _reconcile_canary(
    host: ReconcileHost,
    app: AppConfig,
    state: AppState,
    split: canary.Split,
    running: list[ContainerInfo],
    live: rules.SavedTable,
    repairs: list[str],
) -> set[str]:
    """Keep the split the record names while both instances run; the ids kept, or none when it ended.

    With one of them gone the canary is over: the record is set to the survivor (the canary promoted when
    the active one died, aborted when the canary did) and the ordinary reconcile takes it from there.
    """
    assert state.active is not None
    address = {c.id: c.address(host.settings.network) for c in running}
    active_up, canary_up = state.active.container_id in address, split.canary.container_id in address
    if active_up and canary_up:
        state = replace(
            state,
            active=replace(state.active, address=address[state.active.container_id]),
            mode_detail=replace(
                split, canary=replace(split.canary, address=address[split.canary.container_id])
            ).detail(),
        )
        if host.chains.base_missing(live, app):
            host.chains.ensure_base(app)
            repairs.append(f"jumps and chains of {app.name} restored")
        wanted = host.chains.wanted(app, state)
        if live.rules(host.chains.names.app(app.name)) != wanted or host.chains.drifted6(app, wanted):
            host.chains.clean_flows(conntrack.after_flip(app, host.chains.flip(app, wanted)))
            repairs.append(
                f"rules of {app.name} set to the canary split the record names ({split.weight}% to {split.canary.tag})"
            )
        if state != host.store.load(app.name):
            host.store.save(state)
            repairs.append(f"record of {app.name}: the instances' addresses updated")
        return {state.active.container_id, split.canary.container_id}
    if canary_up:
        host.store.save(canary.promoted(state, now=utc_now()))
        repairs.append(
            f"canary of {app.name} promoted: the active instance {state.active.container_name} is not running"
        )
    else:
        host.store.save(canary.aborted(state, now=utc_now()))
        repairs.append(f"canary of {app.name} ended: {split.canary.container_name} is not running")
    return set()


def _probe_once(host: ReconcileHost, app: AppConfig, container: ContainerInfo) -> bool:
    port_set = container.labels.get(LABEL_SET)
    if port_set not in ("blue", "green"):
        return False
    return set_port_probe(host.prober, app, port_set)().ok
