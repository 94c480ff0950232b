"""Carry out mode changes on one app: maintenance on and off, failover on and off, drain and undrain.

The thin side of maintenance.py, drain.py and hostbound.py, which decide. Each change holds the app's lock (so
it never interleaves with a deploy), computes the new record from the current one, flips the app's chain to what
that record calls for in one transaction (`Engine._flip`: add-only takeover, then cleanup, read back), records
it, and journals it, so the log and the audit log say who changed what. Flip first, then record, as a deploy
does: from then on the record says what is live.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from deployer.config import AppConfig
from deployer.errors import DeployerError, ModeError
from deployer.host.health import probe_for
from deployer.host.locks import AppLock
from deployer.journal import utc_now
from deployer.plan import conntrack, drain, hostbound, maintenance, retries, rules
from deployer.plan.records import AppState
from deployer.server.responder import check

if TYPE_CHECKING:
    from deployer.host.engine import Engine

Decide = Callable[[AppState], "AppState | None"]


def apply(engine: Engine, app: AppConfig, decide: Decide, *, event: str, actor: str, wait: float | None = None,
          **fields: Any) -> AppState | None:
    """Lock, decide, flip, record, journal. `decide` returns None when there is nothing to change."""
    lock_wait = engine.settings.lock_wait if wait is None else wait
    with AppLock(engine.settings.state_dir, app.name, wait=lock_wait, holder={"tag": event, "actor": actor}):
        before = engine.store.load(app.name)
        after = decide(before)
        if after is None:
            return None
        started = engine.clock()
        detail: dict[str, Any] = {}
        try:
            gone = engine._flip(app, engine._wanted_rules(app, after), detail)
            engine.store.save(after)
        except DeployerError as exc:
            engine.journal.record(event, app=app.name, actor=actor, outcome="failed", error=str(exc), **fields)
            raise
        engine.journal.record(event, app=app.name, actor=actor, outcome="ok", mode=after.mode,
                              duration_ms=round((engine.clock() - started) * 1000, 1), **detail, **fields)
        with contextlib.suppress(DeployerError):
            engine._clean_flows(conntrack.after_flip(app, gone))
        return after


def _serving_or_maintenance(state: AppState) -> None:
    if state.mode not in (maintenance.SERVING, maintenance.MAINTENANCE):
        raise ModeError(f"app {state.app!r} is in mode {state.mode!r}; end that first", app=state.app)


def _current_address(engine: Engine, state: AppState) -> str | None:
    """Where the active instance is now: a container restarted by hand may have another address."""
    if state.active is None:
        return None
    info = engine.docker.inspect(state.active.container_id)
    if info is None or info.status != "running":
        return None
    return info.address(engine.settings.network)


def _probe_active(engine: Engine, app: AppConfig, state: AppState) -> str | None:
    """None when the active instance passes one health probe, else why not."""
    assert state.active is not None
    result = probe_for(app.health, app.bind, app.port_for(app.health.port).set_port(state.active.port_set))()
    return None if result.ok else result.detail


# --- maintenance ---------------------------------------------------------------------------------


def maintenance_on(engine: Engine, app_name: str, *, actor: str, message: str | None = None) -> AppState | None:
    app = engine.config.app(app_name)
    problem = check(engine.settings.maintenance_port)
    if problem:
        raise ModeError(f"no maintenance responder answers on port {engine.settings.maintenance_port} ({problem}); "
                        f"the app would refuse connections. Start one: deployer maintenance-server", app=app.name)

    def decide(state: AppState) -> AppState | None:
        _serving_or_maintenance(state)
        return maintenance.manual_on(state, actor=actor, now=utc_now(), message=message)

    return apply(engine, app, decide, event="maintenance.on", actor=actor, message=message)


def maintenance_off(engine: Engine, app_name: str, *, actor: str) -> AppState | None:
    """Serve the app again; refused while its instance fails, which would turn the page into refusals."""
    app = engine.config.app(app_name)

    def decide(state: AppState) -> AppState | None:
        if state.mode == maintenance.SERVING:
            return None
        _serving_or_maintenance(state)
        if state.active is None or app.host_bound:
            return maintenance.serving(state, now=utc_now())
        address = _current_address(engine, state)
        failing = "its container is not running" if address is None else _probe_active(engine, app, state)
        if failing:
            raise ModeError(f"the active instance of {app.name!r} ({state.active.container_name}) fails its health "
                            f"check: {failing}; maintenance stays on. Deploy a healthy release first.", app=app.name)
        return maintenance.back_to_serving(state, now=utc_now(), address=address)

    return apply(engine, app, decide, event="maintenance.off", actor=actor)


def failover_on(engine: Engine, app: AppConfig, *, container_id: str, failures: int, last: str) -> AppState | None:
    """The watchdog's flip to the page; a no-op if the instance is no longer the active one."""
    failed: dict[str, str] = {}

    def decide(state: AppState) -> AppState | None:
        if state.mode != maintenance.SERVING or state.active is None or state.active.container_id != container_id:
            return None
        failed["address"] = state.active.address
        return maintenance.failover_on(state, now=utc_now(), failures=failures, last=last)

    after = apply(engine, app, decide, event="failover.on", actor="watchdog", wait=0, failures=failures,
                  last_probe=last)
    if after is not None:
        # Connections to the dead instance cannot finish; without their entries, the clients' retransmitted
        # SYNs pass the nat table again and reach the page instead of a dead address.
        with contextlib.suppress(DeployerError):
            engine._clean_flows(conntrack.after_stop(app, failed["address"]))
    return after


def failover_off(engine: Engine, app: AppConfig, *, container_id: str, passes: int) -> AppState | None:
    def decide(state: AppState) -> AppState | None:
        if not maintenance.failover_applies(state) or state.active is None \
                or state.active.container_id != container_id:
            return None
        address = _current_address(engine, state)
        if address is None:
            return None
        return maintenance.back_to_serving(state, now=utc_now(), address=address)

    return apply(engine, app, decide, event="failover.off", actor="watchdog", wait=0, passes=passes)


# --- drain ---------------------------------------------------------------------------------------


def _with_status_port(engine: Engine, app_name: str) -> AppConfig:
    app = engine.config.app(app_name)
    if app.host_bound:
        raise ModeError(f"app {app.name!r} is host-bound and has no status port: point the upstream's checks at "
                        f"its port itself", app=app.name)
    if app.status_port is None:
        raise ModeError(f"app {app.name!r} has no status_port: an upstream load balancer has nothing to check, so "
                        f"there is nothing to drain. Set [apps.{app.name}] status_port.", app=app.name)
    return app


def drain_app(engine: Engine, app_name: str, *, actor: str) -> AppState | None:
    app = _with_status_port(engine, app_name)

    def decide(state: AppState) -> AppState | None:
        return None if state.drained else drain.drained(state, actor=actor, now=utc_now())

    return apply(engine, app, decide, event="drain", actor=actor, status_port=app.status_port)


def undrain_app(engine: Engine, app_name: str, *, actor: str) -> AppState | None:
    app = _with_status_port(engine, app_name)

    def decide(state: AppState) -> AppState | None:
        return drain.undrained(state, now=utc_now()) if state.drained else None

    return apply(engine, app, decide, event="undrain", actor=actor, status_port=app.status_port)


def wait_drained(engine: Engine, app_name: str, *, actor: str, timeout: float, settle: float,
                 proc_sys: Path = Path("/proc/sys")) -> drain.IdleResult:
    """Wait until conntrack shows the app idle (see drain.wait_idle); journal the outcome."""
    app = engine.config.app(app_name)
    ports = sorted({p.external for p in app.ports if p.protocol == "tcp"})
    time_wait = _sysctl_seconds(proc_sys, "nf_conntrack_tcp_timeout_time_wait", 120)
    close = _sysctl_seconds(proc_sys, "nf_conntrack_tcp_timeout_close", 10)

    def count() -> drain.Census:
        lines = [line for port in ports
                 for line in engine.netfilter.conntrack_list(["-p", "tcp", "--orig-port-dst", str(port)])]
        return drain.census(lines, settle=settle, time_wait_timeout=time_wait, close_timeout=close)

    result = drain.wait_idle(count, timeout=timeout, min_wait=settle, clock=engine.clock, sleep=engine.sleep)
    engine.journal.record("drain.wait", app=app.name, actor=actor, outcome="ok" if result.idle else "failed",
                          idle=result.idle, open=result.open, recent=result.recent, waited_s=result.waited)
    return result


def _sysctl_seconds(proc_sys: Path, name: str, default: int) -> int:
    try:
        return int((proc_sys / "net/netfilter" / name).read_text().strip())
    except (OSError, ValueError):
        return default


# --- host-bound apps -----------------------------------------------------------------------------


def reconcile_host_bound(engine: Engine, app: AppConfig, *, actor: str, job: str | None = None) -> list[str]:
    """Jumps, the socket-match chain and the app's own chain as the config and the record say."""
    repairs: list[str] = []
    if engine._base_missing(rules.parse_nat(engine.netfilter.save_nat()), app):
        engine._ensure_base(app)
        repairs.append(f"jumps and chains of {app.name} restored")
    with engine._netfilter_lock():
        live = rules.parse_nat(engine.netfilter.save_nat())
        text = hostbound.render_ensure(live, engine.names, engine.config.apps, engine.settings.maintenance_port)
        if text:
            engine.netfilter.restore(text)
            repairs.append(f"socket-match rules of the host-bound apps written ({hostbound.chain(engine.names)})")
    wanted = engine._wanted_rules(app, engine.store.load(app.name))
    if engine.netfilter.list_chain(engine.names.app(app.name)) != wanted:
        engine._flip(app, wanted)
        repairs.append(f"rules of {app.name} set as its record says")
    engine._report(repairs, app, actor, job)
    return repairs


# --- the watchdog's retry rules ------------------------------------------------------------------


def ensure_retries(engine: Engine, apps: list[AppConfig]) -> None:
    """Write the mangle chain that turns these apps' refused handshakes into retries (see retries.py)."""
    with engine._netfilter_lock():
        live = retries.parse(engine.netfilter.save_table(retries.TABLE))
        text = retries.render_ensure(live, engine.names, apps, engine.settings.bridge)
        if text:
            engine.netfilter.restore(text)


def remove_retries(engine: Engine) -> list[str]:
    with engine._netfilter_lock():
        text = retries.render_removal(retries.parse(engine.netfilter.save_table(retries.TABLE)), engine.names)
        if text is None:
            return []
        engine.netfilter.restore(text)
    return [f"mangle chain {retries.chain(engine.names)}"]
