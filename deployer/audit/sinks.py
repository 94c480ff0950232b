"""The journal's audit sink, and `build_journal`: the log, this host's audit log and any extra sinks."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from deployer.audit.log import AuditLog
from deployer.errors import AuditError
from deployer.journal import Event, Journal, Sink, log_sink

if TYPE_CHECKING:
    from deployer.config import Config

log = logging.getLogger("deployer.audit")


@dataclass
class AuditSink:
    """A journal sink that records durable events; progress notes stay in the log only.

    It never raises into the engine: a deploy must not fail because its record could not be
    written. A failure is logged as a warning, and counted so a caller can see it. The one exception
    is an event recorded with `Journal.record_or_raise` (the receiver's `job.queued`: no 202 without
    it): its failure is raised as AuditError.
    """

    store: AuditLog
    failures: int = field(default=0)

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str]) -> AuditSink:
        return cls(AuditLog.for_state_dir(state_dir))

    def __call__(self, event: Event) -> None:
        if not event.get("_durable"):
            return
        try:
            self.store.append(event)
        except Exception as exc:  # noqa: BLE001 - the record must never break the deploy
            self.failures += 1
            log.warning("audit: could not record %s: %s", event.get("event"), exc)
            if event.get("_required"):
                raise (
                    exc if isinstance(exc, AuditError) else AuditError(f"cannot append to the audit log: {exc}")
                ) from None


def build_journal(config: Config, extra_sinks: list[Sink] | None = None) -> Journal:
    """The journal every operation writes to: the log, this host's audit log, and any extra sinks."""
    audit = AuditSink.for_state_dir(config.settings.state_dir)
    return Journal([log_sink, audit, *(extra_sinks or [])], secrets=config.secrets())
