"""Carry out mode changes on one app: maintenance on and off, failover on and off, drain and undrain.

The thin side of maintenance.py, drain.py and hostbound.py, which decide. Each change holds the app's lock (so
it never interleaves with a deploy), computes the new record from the current one, flips the app's chain to what
that record calls for in one transaction (`Chains.flip`: add-only takeover, then cleanup, read back), records
it, and journals it, so the log and the audit log say who changed what. Flip first, then record, as a deploy
does: from then on the record says what is live.

Every function takes the host's parts as one `ModeHost` (the engine is one), so nothing here imports the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Protocol

from deployer.config import AppConfig, Config, Settings
from deployer.errors import DeployerError, ModeError
from deployer.host.health import Prober, set_port_probe
from deployer.host.netfilter.chains import Chains
from deployer.host.operation import ONE_EVENT, Operation, record_repairs
from deployer.host.state import StateStore
from deployer.journal import Journal, utc_now
from deployer.plan import conntrack, drain, hostbound, maintenance, retries
from deployer.plan.containers import ContainerInfo
from deployer.plan.records import SERVING, AppState
from deployer.plan.rules import SavedTable

Decide = Callable[[AppState], "AppState | None"]


class ContainerLookup(Protocol):
    def inspect(self, container_id: str) -> ContainerInfo | None: ...


class ModeHost(Protocol):
    """The parts of a host a mode change uses."""

    config: Config
    settings: Settings
    store: StateStore
    chains: Chains
    journal: Journal
    docker: ContainerLookup
    prober: Prober
    clock: Callable[[], float]
    sleep: Callable[[float], None]


def apply(
    host: ModeHost, app: AppConfig, decide: Decide, *, event: str, actor: str, wait: float | None = None, **fields: Any
) -> AppState | None:
    """Lock, decide, flip, record, journal. `decide` returns None when there is nothing to change."""
    lock = host.chains.app_lock(app.name, wait=wait, tag=event, actor=actor)
    with Operation(
        host.journal, event, {"app": app.name, "actor": actor, **fields}, lock=lock, shape=ONE_EVENT, clock=host.clock
    ) as operation:
        after = decide(host.store.load(app.name))
        if after is None:
            return None
        operation.start()
        detail: dict[str, Any] = {}
        gone = host.chains.flip(app, host.chains.wanted(app, after), detail)
        host.store.save(after)
        operation.finish(mode=after.mode, **detail)
        with contextlib.suppress(DeployerError):
            host.chains.clean_flows(conntrack.after_flip(app, gone))
        return after


def _serving_or_maintenance(state: AppState) -> None:
    if state.mode not in (SERVING, maintenance.MAINTENANCE):
        raise ModeError(f"app {state.app!r} is in mode {state.mode!r}; end that first", app=state.app)


def _current_address(host: ModeHost, state: AppState) -> str | None:
    """Where the active instance is now: a container restarted by hand may have another address."""
    if state.active is None:
        return None
    info = host.docker.inspect(state.active.container_id)
    if info is None or info.status != "running":
        return None
    return info.address(host.settings.network)


def _probe_active(host: ModeHost, app: AppConfig, state: AppState) -> str | None:
    """None when the active instance passes one health probe, else why not."""
    assert state.active is not None
    result = set_port_probe(host.prober, app, state.active.port_set)()
    return None if result.ok else result.detail


# --- maintenance ---------------------------------------------------------------------------------


def maintenance_on(host: ModeHost, app_name: str, *, actor: str, message: str | None = None) -> AppState | None:
    app = host.config.app(app_name)
    problem = host.prober.responder(host.settings.maintenance_port)
    if problem:
        raise ModeError(
            f"no maintenance responder answers on port {host.settings.maintenance_port} ({problem}); "
            f"the app would refuse connections. Start one: deployer maintenance-server",
            app=app.name,
        )

    def decide(state: AppState) -> AppState | None:
        _serving_or_maintenance(state)
        return maintenance.manual_on(state, actor=actor, now=utc_now(), message=message)

    return apply(host, app, decide, event="maintenance.on", actor=actor, message=message)


def maintenance_off(host: ModeHost, app_name: str, *, actor: str) -> AppState | None:
    """Serve the app again; refused while its instance fails, which would turn the page into refusals."""
    app = host.config.app(app_name)

    def decide(state: AppState) -> AppState | None:
        if state.mode == SERVING:
            return None
        _serving_or_maintenance(state)
        if state.active is None or app.host_bound:
            return maintenance.serving(state, now=utc_now())
        address = _current_address(host, state)
        failing = "its container is not running" if address is None else _probe_active(host, app, state)
        if failing:
            raise ModeError(
                f"the active instance of {app.name!r} ({state.active.container_name}) fails its health "
                f"check: {failing}; maintenance stays on. Deploy a healthy release first.",
                app=app.name,
            )
        return maintenance.back_to_serving(state, now=utc_now(), address=address)

    return apply(host, app, decide, event="maintenance.off", actor=actor)


def failover_on(host: ModeHost, app: AppConfig, *, container_id: str, failures: int, last: str) -> AppState | None:
    """The watchdog's flip to the page; a no-op if the instance is no longer the active one."""
    failed: dict[str, str] = {}

    def decide(state: AppState) -> AppState | None:
        if state.mode != SERVING or state.active is None or state.active.container_id != container_id:
            return None
        failed["address"] = state.active.address
        host.chains.learn_twin(state.active.address, state.active.address6)
        return maintenance.failover_on(state, now=utc_now(), failures=failures, last=last)

    after = apply(host, app, decide, event="failover.on", actor="watchdog", wait=0, failures=failures, last_probe=last)
    if after is not None:
        # Connections to the dead instance cannot finish; without their entries, the clients' retransmitted
        # SYNs pass the nat table again and reach the page instead of a dead address.
        with contextlib.suppress(DeployerError):
            host.chains.clean_flows(conntrack.after_stop(app, failed["address"]))
    return after


def failover_off(host: ModeHost, app: AppConfig, *, container_id: str, passes: int) -> AppState | None:
    def decide(state: AppState) -> AppState | None:
        if not maintenance.failover_applies(state) or state.active is None or state.active.container_id != container_id:
            return None
        address = _current_address(host, state)
        if address is None:
            return None
        return maintenance.back_to_serving(state, now=utc_now(), address=address)

    return apply(host, app, decide, event="failover.off", actor="watchdog", wait=0, passes=passes)


# --- drain ---------------------------------------------------------------------------------------


def _with_status_port(host: ModeHost, app_name: str) -> AppConfig:
    app = host.config.app(app_name)
    if app.host_bound:
        raise ModeError(
            f"app {app.name!r} is host-bound and has no status port: point the upstream's checks at its port itself",
            app=app.name,
        )
    if app.status_port is None:
        raise ModeError(
            f"app {app.name!r} has no status_port: an upstream load balancer has nothing to check, so "
            f"there is nothing to drain. Set [apps.{app.name}] status_port.",
            app=app.name,
        )
    return app


def drain_app(host: ModeHost, app_name: str, *, actor: str) -> AppState | None:
    app = _with_status_port(host, app_name)

    def decide(state: AppState) -> AppState | None:
        return None if state.drained else drain.drained(state, actor=actor, now=utc_now())

    return apply(host, app, decide, event="drain", actor=actor, status_port=app.status_port)


def undrain_app(host: ModeHost, app_name: str, *, actor: str) -> AppState | None:
    app = _with_status_port(host, app_name)

    def decide(state: AppState) -> AppState | None:
        return drain.undrained(state, now=utc_now()) if state.drained else None

    return apply(host, app, decide, event="undrain", actor=actor, status_port=app.status_port)


def wait_drained(host: ModeHost, app_name: str, *, actor: str, timeout: float, settle: float) -> drain.IdleResult:
    """Wait until conntrack shows the app idle (see drain.wait_idle); journal the outcome."""
    app = host.config.app(app_name)
    ports = sorted({p.external for p in app.ports if p.protocol == "tcp"})
    time_wait = host.chains.conntrack_timeout("nf_conntrack_tcp_timeout_time_wait", 120)
    close = host.chains.conntrack_timeout("nf_conntrack_tcp_timeout_close", 10)
    filters = [["-p", "tcp", "--orig-port-dst", str(port)] for port in ports]

    def count() -> drain.Census:
        return drain.census(host.chains.flows(filters), settle=settle, time_wait_timeout=time_wait, close_timeout=close)

    result = drain.wait_idle(count, timeout=timeout, min_wait=settle, clock=host.clock, sleep=host.sleep)
    host.journal.record(
        "drain.wait",
        app=app.name,
        actor=actor,
        outcome="ok" if result.idle else "failed",
        idle=result.idle,
        open=result.open,
        recent=result.recent,
        waited_s=result.waited,
    )
    return result


# --- host-bound apps -----------------------------------------------------------------------------


def reconcile_host_bound(
    host: ModeHost, app: AppConfig, *, actor: str, job: str | None = None, live: SavedTable | None = None
) -> list[str]:
    """Jumps, the socket-match chain and the app's own chain as the config and the record say, in both families on
    a dual-stack host; `live` is the nat table when the caller read it already."""
    chains = host.chains
    repairs: list[str] = []
    if chains.base_missing(chains.table("nat") if live is None else live, app):
        chains.ensure_base(app)
        repairs.append(f"jumps and chains of {app.name} restored")

    def ensure(nat: SavedTable) -> str | None:
        return hostbound.render_ensure(nat, chains.names, host.config.apps, host.settings.maintenance_port)

    written = hostbound.chain(chains.names)
    if chains.rewrite(ensure, "nat"):
        repairs.append(f"socket-match rules of the host-bound apps written ({written})")
    if chains.rewrite6(ensure, "nat"):  # one rendering: the rules read the same in ip6tables
        repairs.append(f"IPv6 socket-match rules of the host-bound apps written ({written})")
    wanted = chains.wanted(app, host.store.load(app.name))
    if chains.chain(app.name) != wanted:
        chains.flip(app, wanted)
        repairs.append(f"rules of {app.name} set as its record says")
    elif chains.drifted6(app, wanted):
        chains.flip(app, wanted)
        repairs.append(f"IPv6 rules of {app.name} set as its record says")
    record_repairs(host.journal, repairs, app=app.name, actor=actor, job=job)
    return repairs


# --- the watchdog's retry rules ------------------------------------------------------------------


def ensure_retries(chains: Chains, apps: list[AppConfig]) -> None:
    """Write the mangle chain that turns these apps' refused handshakes into retries (see retries.py), in both
    families on a dual-stack host: an IPv6 client of a dying instance is refused as quickly as an IPv4 one."""
    bridge = chains.settings.bridge
    dual = [app for app in apps if chains.dual(app)]
    chains.rewrite6(lambda mangle: retries.render_ensure(mangle, chains.names, dual, bridge), retries.TABLE)
    chains.rewrite(lambda mangle: retries.render_ensure(mangle, chains.names, apps, bridge), retries.TABLE)


def remove_retries(chains: Chains) -> list[str]:
    removed = []
    for family, rewrite in (("", chains.rewrite), ("IPv6 ", chains.rewrite6)):
        if rewrite(lambda mangle: retries.render_removal(mangle, chains.names), retries.TABLE) is not None:
            removed.append(f"{family}mangle chain {retries.chain(chains.names)}")
    return removed
