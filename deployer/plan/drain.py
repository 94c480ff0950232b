"""Draining a host out of an upstream load balancer (HAProxy), through the app's status port.

The status port is one more DNAT rule in the app's chain: `status_port` on every local address to the active
instance's health port. The upstream health-checks it (HAProxy: `server a HOST:PORT check port STATUS_PORT`), as
in HAProxy's "backup server on the same host" recipe. While the forward exists the host is in rotation; `drain`
removes it, the upstream's checks are refused, it marks the server down and sends it no new sessions, and the
sessions it has finish. `undrain` puts it back. It rides along in the app chain, so a deploy, a maintenance flip
and a drain are each one transaction on that chain, and a deploy moves the forward to the new instance with the
external ports. In maintenance mode the forward is gone too: a host that shows the maintenance page is out.

`wait_idle` decides when the app is idle from conntrack: no tcp flow to its external ports is open (established
or being set up or torn down), none closed within the last `settle` seconds, and at least `settle` seconds have
passed since the drain. Until the upstream notices the refused check (its interval x fall) it still opens short
connections, and a moment with none open proves nothing; so `settle` should exceed that check period. A closed
flow stays in conntrack as TIME_WAIT (or CLOSE, after a reset) with a timer that started at the close, which
dates it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from deployer.config import AppConfig
from deployer.plan.records import AppState, Instance
from deployer.plan.rules import Forward

CLOSED_STATES = ("TIME_WAIT", "CLOSE")


def status_forward(app: AppConfig, instance: Instance) -> Forward | None:
    """The forward the upstream checks, to the instance's health port; None when the app has no status port."""
    if app.status_port is None:
        return None
    return Forward(
        "tcp",
        app.status_port,
        instance.address,
        app.health.port,
        f"{app.name} status {instance.port_set} {instance.tag}",
    )


def drained(state: AppState, *, actor: str, now: str) -> AppState:
    return replace(state, drained={"actor": actor, "since": now}, updated_at=now)


def undrained(state: AppState, *, now: str) -> AppState:
    return replace(state, drained=None, updated_at=now)


def describe(state: AppState) -> str | None:
    if not state.drained:
        return None
    return (
        f"drained: out of the upstream's rotation (status port closed) by {state.drained.get('actor')} "
        f"since {state.drained.get('since')}"
    )


# --- the idle test -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Census:
    open: int  # flows not closed: established, or being set up or torn down
    closed_recently: int  # closed within the settle window


def census(lines: Iterable[str], *, settle: float, time_wait_timeout: float, close_timeout: float) -> Census:
    """Count `conntrack -L` lines: `tcp 6 117 TIME_WAIT src=...` (protocol, number, seconds left, state)."""
    open_flows = closed_recently = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 4 or fields[0] != "tcp" or not fields[2].isdigit():
            continue
        left, state = int(fields[2]), fields[3]
        if state not in CLOSED_STATES:
            open_flows += 1
            continue
        timeout = time_wait_timeout if state == "TIME_WAIT" else close_timeout
        if timeout - left < settle:
            closed_recently += 1
    return Census(open_flows, closed_recently)


@dataclass(frozen=True)
class IdleResult:
    idle: bool
    open: int  # flows open when the wait ended
    recent: int  # flows closed within the settle window when it ended
    waited: float  # seconds


def wait_idle(
    count: Callable[[], Census],
    *,
    timeout: float,
    min_wait: float = 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll: float = 0.25,
) -> IdleResult:
    """Poll until a census shows nothing open and nothing closed recently, or until `timeout`.

    Never idle before `min_wait`: a quiet moment right after the drain may only mean the upstream has not
    checked yet (and an app with little traffic has such moments), so the wait covers its check period.
    """
    started = clock()
    while True:
        now_census = count()
        waited = clock() - started
        if now_census.open == 0 and now_census.closed_recently == 0 and waited >= min_wait:
            return IdleResult(True, 0, 0, round(waited, 2))
        if waited >= timeout:
            return IdleResult(False, now_census.open, now_census.closed_recently, round(waited, 2))
        sleep(min(poll, max(0.0, timeout - waited)))
