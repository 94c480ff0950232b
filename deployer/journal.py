"""Where the engine reports what it does: events and timed steps, sent to one or more sinks.

A sink is a function that takes an event dict. The log sink prints one line per event; the
audit log adds a durable, hash-chained record. Known secret values are masked before any
sink sees an event, as a second line of defence: no code path should put one there at all.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Event = dict[str, Any]
Sink = Callable[[Event], None]

log = logging.getLogger("deployer")


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Step:
    """A running step; the body may add facts to `detail` before it ends."""

    name: str
    detail: dict[str, Any] = field(default_factory=dict)


class Journal:
    def __init__(
        self,
        sinks: list[Sink] | None = None,
        *,
        secrets: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sinks = list(sinks) if sinks is not None else [log_sink]
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = sorted({s for s in (secrets or []) if s}, key=len, reverse=True)
        self.clock = clock

    def record(self, event: str, **fields: Any) -> None:
        """A durable event: reaches every sink (log and audit)."""
        self._emit({"event": event, **fields}, durable=True)

    def record_or_raise(self, event: str, **fields: Any) -> None:
        """A durable event that must be in the audit log: the audit sink raises AuditError if it could not write it."""
        self._emit({"event": event, **fields}, durable=True, required=True)

    def note(self, event: str, **fields: Any) -> None:
        """Progress only (a step began): reaches the log, not the audit record."""
        self._emit({"event": event, **fields}, durable=False)

    @contextlib.contextmanager
    def step(self, name: str, **fields: Any) -> Iterator[Step]:
        """Time a step; record it once with its outcome, start time and duration."""
        step = Step(name)
        started_at = utc_now()
        start = self.clock()
        self.note("step.begin", step=name, **fields)
        try:
            yield step
        except BaseException as exc:
            self.record(
                "step",
                **{
                    **fields,
                    **step.detail,
                    "step": name,
                    "outcome": "failed",
                    "started_at": started_at,
                    "duration_ms": round((self.clock() - start) * 1000, 1),
                    "error": str(exc) or type(exc).__name__,
                },
            )
            raise
        self.record(
            "step",
            **{
                **fields,
                **step.detail,
                "step": name,
                "outcome": "ok",
                "started_at": started_at,
                "duration_ms": round((self.clock() - start) * 1000, 1),
            },
        )

    def _emit(self, event: Event, *, durable: bool, required: bool = False) -> None:
        event = {"ts": utc_now(), **{k: v for k, v in event.items() if v is not None}}
        event = self._masked(event)
        event["_durable"] = durable
        if required:
            event["_required"] = True
        for sink in self.sinks:
            sink(event)

    def _masked(self, value: Any) -> Any:
        if not self.secrets:
            return value
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, "***")
            return value
        if isinstance(value, dict):
            return {k: self._masked(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._masked(v) for v in value]
        return value


def format_event(event: Event) -> str:
    """One readable line: `[app] step pull ok 120.4ms digest=sha256:...`."""
    skip = {"ts", "event", "app", "step", "outcome", "duration_ms", "_durable", "_required", "started_at"}
    head = [f"[{event['app']}]" if event.get("app") else "[deployer]"]
    if event["event"] == "step.begin":
        head.append(f"{event['step']} ...")
    elif event["event"] == "step":
        head.append(f"{event['step']} {event['outcome']} {event['duration_ms']}ms")
    else:
        head.append(event["event"])
        if event.get("outcome"):
            head.append(str(event["outcome"]))
    tail = [f"{k}={v}" for k, v in event.items() if k not in skip and v not in (None, "", {})]
    return " ".join(head + tail)


def log_sink(event: Event) -> None:
    level = logging.WARNING if event.get("outcome") == "failed" else logging.INFO
    log.log(level, "%s", format_event(event))
