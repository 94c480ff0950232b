"""The health gate: probe a new instance through its set port until it passes or the deadline ends.

The gate needs `successes` consecutive passing probes: one lucky answer from a booting app
does not open it. The poller takes the probe and a liveness check as functions, so the same
loop is tested with plain functions and used with real sockets.
"""

from __future__ import annotations

import http.client
import socket
import time
from dataclasses import dataclass
from typing import Callable

from deployer.config import HealthCheck
from deployer.errors import BootError, HealthCheckFailed


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


Probe = Callable[[], ProbeResult]


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
                f"({probes} probes; last: {last.detail})")
        sleep(check.interval)


def http_probe(host: str, port: int, path: str, expect_status: int, timeout: float) -> Probe:
    def probe() -> ProbeResult:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            connection.request("GET", path, headers={"User-Agent": "deployer-health", "Connection": "close"})
            status = connection.getresponse().status
        except (OSError, http.client.HTTPException) as exc:
            return ProbeResult(False, f"GET {path}: {type(exc).__name__}: {exc}".rstrip(": "))
        finally:
            connection.close()
        if status != expect_status:
            return ProbeResult(False, f"GET {path}: status {status}, expected {expect_status}")
        return ProbeResult(True, f"GET {path}: {status}")

    return probe


def tcp_probe(host: str, port: int, timeout: float, hold: float = 0.2) -> Probe:
    """A TCP connect that the peer keeps open for `hold` seconds.

    A bare connect is not enough: Docker's userland proxy on the published set port accepts a
    connection even when nothing listens in the container, then closes it at once.
    """

    def probe() -> ProbeResult:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.settimeout(hold)
                try:
                    data = sock.recv(1)
                except socket.timeout:
                    return ProbeResult(True, f"tcp {port}: open")
                if data:
                    return ProbeResult(True, f"tcp {port}: open (banner)")
                return ProbeResult(False, f"tcp {port}: closed by peer right after connect")
        except OSError as exc:
            return ProbeResult(False, f"tcp {port}: {exc.strerror or exc}")

    return probe


def probe_for(check: HealthCheck, host: str, port: int) -> Probe:
    if check.type == "http":
        return http_probe(host, port, check.path, check.expect_status, check.timeout)
    return tcp_probe(host, port, check.timeout)
