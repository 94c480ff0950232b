"""What one health probe reports: the gate (host/health.py) decides on it, the probes (adapters/probes.py) make it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str


Probe = Callable[[], ProbeResult]
