"""What the deployer records of each app: its active and previous instance and its mode.

Plain values; the store in host/state.py writes them to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Instance:
    """A release running on one port set."""

    port_set: str
    tag: str
    image: str
    digest: str | None
    container_id: str
    container_name: str
    address: str
    since: str  # ISO 8601 UTC time it became active
    address6: str | None = None  # on a dual-stack host; kept for the cleanup of a dead instance's IPv6 flows


SERVING = "serving"  # the mode in which the external ports lead to the active instance


@dataclass(frozen=True)
class AppState:
    app: str
    active: Instance | None = None
    previous: Instance | None = None  # what `rollback` returns to
    updated_at: str | None = None
    # What the external ports lead to: "serving" (the active instance) or another mode's target,
    # e.g. a maintenance page or another host; `mode_detail` holds that mode's facts.
    mode: str = SERVING
    mode_detail: dict[str, Any] = field(default_factory=dict)
    # Out of an upstream load balancer's rotation (its status port closed): who drained it and since when.
    # Apart from the mode, so a drained host can be redeployed or put in maintenance and stay drained.
    drained: dict[str, Any] | None = None

    def promoted(self, instance: Instance, now: str) -> AppState:
        """The state after `instance` took over traffic: the old active becomes the rollback target."""
        previous = self.active if self.active and self.active.container_id != instance.container_id else self.previous
        return replace(self, active=instance, previous=previous, updated_at=now)


def instance_from(data: Any) -> Instance | None:
    """An instance as saved (a dict), or None for an empty slot."""
    return Instance(**data) if data else None
