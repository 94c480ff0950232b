"""Carry out a canary on one app: change its weight, promote it, abort it. The thin side of plan/canary.py.

A canary starts with a deploy (`Engine.deploy(..., canary=PERCENT)`): the new instance passes the same health
gate, then the app's chain splits new flows between the two instances in one transaction, and the record says so.
Promote and abort each hold the app's lock for the whole move: decide from the record, flip the chain to one
instance (the add-only takeover, as a deploy's flip), record, delete the udp flows pinned to the instance that lost
its rules, then drain and stop that instance, as a deploy retires its old one. A weight change is a mode change
(`modes.apply`): lock, decide, flip, record, journal.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from deployer.config import AppConfig
from deployer.errors import CanaryError, DeployerError
from deployer.host import modes
from deployer.host.modes import ModeHost
from deployer.host.operation import Operation
from deployer.journal import utc_now
from deployer.plan import canary, conntrack
from deployer.plan.records import AppState, Instance


class CanaryHost(ModeHost, Protocol):
    """A mode host that can also retire an instance (the engine)."""

    def retire(self, app: AppConfig, old: Instance, base: dict[str, Any], *, drain: bool) -> None: ...


def reweight(host: ModeHost, app_name: str, weight: int, *, actor: str) -> AppState | None:
    """Give the canary `weight` percent of new flows; None if it already has that."""
    app = host.config.app(app_name)
    canary.check_weight(weight)
    after = modes.apply(
        host,
        app,
        lambda state: canary.reweighted(state, weight, now=utc_now()),
        event="canary.weight",
        actor=actor,
        weight=weight,
    )
    if after is not None:
        with contextlib.suppress(DeployerError):
            host.chains.clean_flows(
                [f for address in canary.rehashed_udp(after) for f in conntrack.flows_to(app, "udp", address)]
            )
    return after


def promote(
    host: CanaryHost, app_name: str, *, actor: str, job: str | None = None, reason: str | None = None
) -> AppState:
    """All traffic to the canary, recorded as the release; the old active instance drains and stops."""
    return _end(host, app_name, promote=True, actor=actor, job=job, reason=reason)


def abort(
    host: CanaryHost, app_name: str, *, actor: str, job: str | None = None, reason: str | None = None
) -> AppState:
    """All traffic back to the active instance; the canary drains and stops."""
    return _end(host, app_name, promote=False, actor=actor, job=job, reason=reason)


def _end(
    host: CanaryHost, app_name: str, *, promote: bool, actor: str, job: str | None, reason: str | None
) -> AppState:
    app = host.config.app(app_name)
    kind = "promote" if promote else "abort"
    base: dict[str, Any] = {"app": app.name, "job": job, "actor": actor}
    lock = host.chains.app_lock(app.name, tag=kind, actor=actor)
    with Operation(host.journal, kind, base, lock=lock, clock=host.clock) as operation:
        state = host.store.load(app.name)
        split = canary.Split.of(state)
        if split is None or state.active is None:
            raise CanaryError(f"app {app.name!r} runs no canary (mode {state.mode!r}): nothing to {kind}", app=app.name)
        after = canary.promoted(state, now=utc_now()) if promote else canary.aborted(state, now=utc_now())
        retired = state.active if promote else split.canary
        operation.failed["tag"] = split.canary.tag
        operation.start(tag=split.canary.tag, weight=split.weight, **({"reason": reason} if reason else {}))
        with operation.step("flip") as step:
            gone = host.chains.flip(app, host.chains.wanted(app, after), step.detail)
            step.detail["to"] = f"{after.active.port_set} {after.active.address}" if after.active else ""
        with operation.step("record"):
            host.store.save(after)
        with contextlib.suppress(DeployerError), operation.step("conntrack") as step:
            step.detail["deleted"] = host.chains.clean_flows(conntrack.after_flip(app, gone))
        host.retire(app, retired, operation.base, drain=True)
        operation.finish(
            tag=after.active.tag if after.active else None,
            stopped=retired.container_name,
            **({"reason": reason} if reason else {}),  # what the reports of the end say why with
        )
        return after
