"""What one health probe reports: the gate (host/health.py) decides on it, the probes (adapters/probes.py) make it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


Probe = Callable[[], ProbeResult]
