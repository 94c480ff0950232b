"""The health gate: probe a new instance through its set port until it passes or the deadline ends.

The gate needs `successes` consecutive passing probes: one lucky answer from a booting app
does not open it. The poller takes the probe and a liveness check as functions, so the same
loop is tested with plain functions and used with real sockets (adapters/probes.py), which
the engine, the modes and the watchdog receive as a `Prober`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from deployer.config import AppConfig, HealthCheck
from deployer.errors import BootError, HealthCheckFailed
from deployer.plan.health import Probe, ProbeResult

__all__ = ["Probe", "ProbeResult", "Prober", "set_port_probe", "wait_healthy"]


class Prober(Protocol):
    """Client probes: an instance's health check, and whether the maintenance responder answers."""

    def health(self, check: HealthCheck, host: str, port: int) -> Probe: ...
    def responder(self, port: int) -> str | None: ...


def set_port_probe(prober: Prober, app: AppConfig, port_set: str) -> Probe:
    """The app's health check against the instance on `port_set`, through that set's host port."""
    return prober.health(app.health, app.bind, app.port_for(app.health.port).set_port(port_set))


def wait_healthy(
    check: HealthCheck,
    probe: Probe,
    still_running: Callable[[], str | None],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Block until the gate passes; return the number of probes it took.

    `still_running()` returns None while the instance runs, or why it does not (it exited):
    then waiting longer is pointless and BootError is raised at once.
    """
    deadline = clock() + check.deadline
    streak = 0
    probes = 0
    last = ProbeResult(False, "no probe ran")
    while True:
        stopped = still_running()
        if stopped is not None:
            raise BootError(stopped)
        last = probe()
        probes += 1
        streak = streak + 1 if last.ok else 0
        if streak >= check.successes:
            return probes
        if clock() + check.interval > deadline:
            raise HealthCheckFailed(
                f"health check did not pass {check.successes} times in a row within {check.deadline:g}s "
                f"({probes} probes; last: {last.detail})"
            )
        sleep(check.interval)
