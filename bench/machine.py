"""The machine a run measured on: read from /proc and uname, parsed by pure functions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return "unknown"


def memory_gib(meminfo: str) -> float | None:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def describe() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text()
        except OSError:
            return ""

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib(read("/proc/meminfo")),
        "kernel": platform.release(),
        "cpu": cpu_model(read("/proc/cpuinfo")),
        "os": read("/etc/debian_version").strip() and f"Debian {read('/etc/debian_version').strip()}",
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
