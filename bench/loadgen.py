"""wrk: the command for one measurement and the figures read from its report. Pure."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^\s*([\d.]+)(us|ms|s|m|h)\s*$")
_PERCENTILE = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+(\S+)\s*$")
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h)", re.M)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkOutputError(ValueError):
    """wrk printed no report we can read (it failed to start, or the target refused everything)."""


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors (connect, read, write, timeout) plus non-2xx/3xx responses

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def wrk_argv(url: str, *, threads: int, connections: int, seconds: float, timeout_s: float = 2.0) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{_seconds(seconds)}",
        f"--timeout={_seconds(timeout_s)}",
        "--latency",
        url,
    ]


def _seconds(value: float) -> str:
    """wrk reads -d and --timeout as whole seconds, minutes or hours ("1s", "2m"): "300ms" is refused with its usage
    text, so a fraction is rounded up to the next second."""
    return f"{max(1, math.ceil(value))}s"


def duration_ms(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise WrkOutputError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNIT_MS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    rps = _RPS.search(output)
    total = _TOTAL.search(output)
    if not rps or not total:
        raise WrkOutputError(f"wrk printed no report: {output.strip()[-300:]!r}")
    percentiles: dict[float, float] = {}
    in_distribution = False
    for line in output.splitlines():
        if line.strip() == "Latency Distribution":
            in_distribution = True
            continue
        if in_distribution:
            match = _PERCENTILE.match(line)
            if not match:
                break
            percentiles[float(match.group(1))] = duration_ms(match.group(2))
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise WrkOutputError("wrk printed no latency distribution (run it with --latency)")
    errors = sum(int(n) for n in _SOCKET_ERRORS.search(output).groups()) if _SOCKET_ERRORS.search(output) else 0
    non_2xx = _NON_2XX.search(output)
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return WrkResult(
        rps=float(rps.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        requests=int(total.group(1)),
        errors=errors,
    )
