"""What one app's chain holds, decided from its record alone. Pure.

- serving: every external port DNATed to the active instance (the engine's forwards);
- maintenance (manual, or a failover of the active instance): tcp ports REDIRECTed to the responder, udp ports
  still forwarded to the instance;
- canary: each external port split between a new instance and the active one (canary.py); the status port
  stays on the active instance;
- plus the status-port forward while the app serves, has an instance and is not drained.

The engine flips the chain to this list in one transaction whatever changed: a deploy, a mode, a drain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from deployer.config import AppConfig
from deployer.plan import canary, drain, forwarding, maintenance
from deployer.plan.records import AppState
from deployer.plan.rules import ChainNames, Forward, app_rules


def forwards_to(app: AppConfig, address: str, port_set: str, tag: str) -> list[Forward]:
    """The DNAT forwards that send every external port of the app to one instance."""
    comment = f"{app.name} {port_set} {tag}"
    return [Forward(p.protocol, p.external, address, p.container, comment) for p in app.ports]


def ports(app: AppConfig) -> list[tuple[str, int]]:
    """The (protocol, external port) pairs the app's chain has rules for, in the order they are rendered: its
    ports as the config lists them, then the status port."""
    found = [(p.protocol, p.external) for p in app.ports]
    if app.status_port is not None:
        found.append(("tcp", app.status_port))
    return list(dict.fromkeys(found))


def for_record(names: ChainNames, app: AppConfig, state: AppState, maintenance_port: int) -> list[str]:
    """The app chain the record calls for, whatever its mode.

    Forward mode DNATs to another host (see forwarding.py); otherwise `wanted` decides from the active instance.
    """
    if state.mode == forwarding.MODE:
        return forwarding.app_rules(names, app.name, forwarding.Target.from_detail(state.mode_detail))
    active = state.active
    forwards = forwards_to(app, active.address, active.port_set, active.tag) if active else []
    split = canary.Split.of(state)
    if split is not None:
        new = split.canary
        canary_forwards = [
            replace(f, comment=f"{f.comment} canary") for f in forwards_to(app, new.address, new.port_set, new.tag)
        ]
        result = canary.split_rules(
            names.app(app.name), forwards, canary_forwards, split.weight, sticky=split.sticky, seed=split.seed
        )
        return result + _status(names, app, state)
    return wanted(names, app, state, forwards, maintenance_port)


def _status(names: ChainNames, app: AppConfig, state: AppState) -> list[str]:
    if state.active is None or state.drained:
        return []
    status = drain.status_forward(app, state.active)
    return [] if status is None else [status.rule(names.app(app.name))]


def wanted(
    names: ChainNames, app: AppConfig, state: AppState, forwards: Sequence[Forward], maintenance_port: int
) -> list[str]:
    """`forwards`: the active instance's DNAT forwards (empty without one), as the engine renders them."""
    chain = names.app(app.name)
    if maintenance.in_maintenance(state):
        return maintenance.redirect_rules(chain, app, maintenance_port) + app_rules(
            names, app.name, [f for f in forwards if f.protocol != "tcp"]
        )
    return app_rules(names, app.name, forwards) + _status(names, app, state)


def notes(app: AppConfig, state: AppState) -> list[str]:
    """Lines for `deployer status`: the mode, a drain, and how a host-bound app is covered."""
    mode = canary.describe(state) if canary.in_canary(state) else maintenance.describe(state)
    lines = [line for line in (mode, drain.describe(state)) if line]
    if app.host_bound:
        ports = ", ".join(str(p.external) for p in app.ports)
        lines.append(
            f"host-bound: runs on the host; clients from other machines get the maintenance page while "
            f"nothing listens on port {ports}"
        )
    return lines


def flip_detail(before: AppState, after: AppState) -> dict[str, str]:
    """What a deploy's flip log line should say beyond "to": that the page stays up, or a failover ended."""
    if maintenance.in_maintenance(after):
        return {"mode": "maintenance", "note": "the new instance takes traffic when maintenance is turned off"}
    if maintenance.failover_applies(before):
        return {"failover": "ended by the new instance"}
    return {}
