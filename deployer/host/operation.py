"""One operation's bookkeeping, written once: lock, "<kind>.started", timed steps, "<kind>.failed" or ".finished".

A deploy, a rollback, a forward or a mode change writes its steps; this writes what the journal and the audit
log say around them. Three shapes, so every event stays what readers of the audit log already know:

- BRACKETED (deploy, rollback, forward, forward-off, forward-return, forward-return-off): "<kind>.started" at
  `start()`, then "<kind>.finished" (outcome ok) or "<kind>.failed" (outcome failed, error, error_type);
- ONE_EVENT (maintenance, failover, drain): nothing at `start()`, then one "<kind>" event with outcome ok and
  its duration, or outcome failed with the error;
- FAILURES_ONLY (reconcile, whose repairs are its record): "<kind>.failed" if it fails, nothing else.

A failure is journaled only once `start()` was called: what is refused before it (a bad argument, a mode that
does not allow the change) changed nothing and is the caller's error to report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from deployer.errors import DeployerError
from deployer.journal import Journal, Step

BRACKETED = "bracketed"
ONE_EVENT = "one-event"
FAILURES_ONLY = "failures-only"


class Operation:
    def __init__(
        self,
        journal: Journal,
        kind: str,
        base: Mapping[str, Any],
        *,
        lock: AbstractContextManager[Any] | None = None,
        shape: str = BRACKETED,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.journal = journal
        self.kind = kind
        self.base = dict(base)
        self.lock = lock
        self.shape = shape
        self.clock = clock
        self.failed: dict[str, Any] = {}  # extra fields of the failure event, e.g. the tag
        # The caller tries again after a transient fault: it ends the operation as "<kind>.waiting", not failed.
        self.waits_on_transient = False
        self.started = False
        self.ended = False
        self._began = 0.0

    def __enter__(self) -> Operation:
        if self.lock is not None:
            self.lock.__enter__()
        return self

    def start(self, **fields: Any) -> None:
        """From here on the operation changes things: a failure is journaled."""
        self.started = True
        self._began = self.clock()
        if self.shape == BRACKETED:
            self.journal.record(f"{self.kind}.started", **fields, **self.base)

    def step(self, name: str, **fields: Any) -> AbstractContextManager[Step]:
        """A timed, journaled step with the operation's fields."""
        return self.journal.step(name, **fields, **self.base)

    def finish(self, **fields: Any) -> None:
        """Journal the success now, with these fields (otherwise it is journaled, without, at the end)."""
        self.ended = True
        if self.shape == BRACKETED:
            self.journal.record(f"{self.kind}.finished", outcome="ok", **fields, **self.base)
        elif self.shape == ONE_EVENT:
            self.journal.record(
                self.kind,
                **self.base,
                outcome="ok",
                **fields,
                duration_ms=round((self.clock() - self._began) * 1000, 1),
            )

    def waits(self, exc: DeployerError) -> bool:
        """Whether this failure only makes the caller wait and try again (a transient fault it waits on)."""
        return self.waits_on_transient and exc.transient

    def fail(self, exc: DeployerError) -> None:
        self.ended = True
        if self.waits(exc):
            self.journal.record(
                f"{self.kind}.waiting",
                outcome="waiting",
                **self.failed,
                error=str(exc),
                error_type=type(exc).__name__,
                fault=exc.fault,
                **self.base,
            )
            return
        name = self.kind if self.shape == ONE_EVENT else f"{self.kind}.failed"
        self.journal.record(
            name, outcome="failed", **self.failed, error=str(exc), error_type=type(exc).__name__, **self.base
        )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.started and not self.ended:
                if exc is None:
                    self.finish()
                elif isinstance(exc, DeployerError):
                    self.fail(exc)
        finally:
            if self.lock is not None:
                self.lock.__exit__(exc_type, exc, tb)


def record_repairs(journal: Journal, repairs: list[str], **base: Any) -> None:
    """One "reconcile.repair" event per repair: what reconcile changed, for the audit log."""
    for repair in repairs:
        journal.record("reconcile.repair", **base, detail=repair)
