"""What is wrong with the host now, for `deployer status`: one line per fault, since when, and what waits on it.

Pure: it reads the worker's heartbeat record (its faults, each with the time it was first seen) and the
queue's jobs that wait on a fault. A worker whose heartbeat is stale is a fault of its own: it may have
stopped, or be unable to write the queue (a full disk).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from deployer.queue.model import Job

STALE_SECONDS = 15.0
# Parts that only a job sees, never the worker's checks: what their line says instead of a check's reason.
SEEN_BY_A_JOB = "seen by a job, not by the worker's checks"
JOB_PARTS = {"image": "a release waits for its image to appear in the registry"}


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fault_lines(worker: Mapping[str, Any] | None, waiting: Iterable[Job], now: float) -> list[str]:
    """`fault docker: <reason> (since <UTC>, 12 s); waiting: job-... (web v2, 3 tries)`; none when all is well."""
    waiting = list(waiting)
    lines = []
    if worker is None:
        lines.append("fault worker: no heartbeat recorded (is `deployer serve` or `deployer worker` running?)")
    elif now - worker["heartbeat_at"] >= STALE_SECONDS:
        lines.append(
            f"fault worker: last heartbeat {now - worker['heartbeat_at']:.0f} s ago, at {_when(worker['heartbeat_at'])}"
        )
    faults = dict((worker or {}).get("faults") or {})
    for part in sorted(set(faults) | {job.waiting_on for job in waiting if job.waiting_on}):
        fault = faults.get(part)
        head = (
            f"fault {part}: {fault.get('reason')} (since {_when(fault['since'])}, {now - fault['since']:.0f} s)"
            if isinstance(fault, Mapping) and isinstance(fault.get("since"), (int, float))
            else f"fault {part}: {JOB_PARTS.get(part, SEEN_BY_A_JOB)}"
        )
        jobs = [job for job in waiting if job.waiting_on == part]
        if jobs:
            head += "; waiting: " + ", ".join(
                f"{job.id} ({job.app} {job.tag or 'active release'}, "
                f"{job.attempts} {'try' if job.attempts == 1 else 'tries'})"
                for job in jobs
            )
        lines.append(head)
    return lines
