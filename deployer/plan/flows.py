"""Live flows per instance and the live container's health, as the worker samples them for the console. Pure: the
sampler (deployer/host/flows.py) runs one `conntrack -L` over the whole table and one container list for all apps,
and hands their text here.

A flow belongs to an instance when it came in on one of its app's external ports (the original direction's
destination port) and the instance answers it (the reply direction's source is the instance's address): the match
of conntrack.py's filters. A TCP entry in TIME_WAIT or CLOSE is a connection that has ended, and is not counted.
Each app's instances are its live one, a running canary, and the one before (`old`: flows to it are a drain that
has not ended yet).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from deployer.config import AppConfig
from deployer.plan.canary import Split
from deployer.plan.drain import CLOSED_STATES
from deployer.plan.records import AppState

FLOWS_SECONDS = 10.0  # the shortest pause between two samples
FLOWS_SHARE = 0.02  # a sample that takes t seconds waits t / FLOWS_SHARE before the next: 2 % of one core at most
ROLES = ("live", "canary", "old")
_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")


@dataclass(frozen=True)
class Flow:
    protocol: str
    port: int  # the original destination port: the app's external port for a DNATed flow
    answered_by: str  # the reply's source address: the instance that answers


def parse_flow(line: str) -> Flow | None:
    """One line of `conntrack -L` (or `-o extended`, which prefixes the family); None: not a live tcp/udp flow.

    tcp      6 431999 ESTABLISHED src=198.51.100.7 dst=203.0.113.1 sport=51234 dport=80 src=172.18.0.5 ...
    """
    fields = line.split()
    if fields[:1] in (["ipv4"], ["ipv6"]):
        fields = fields[2:]
    if not fields or fields[0] not in ("tcp", "udp"):
        return None
    if fields[0] == "tcp" and len(fields) > 3 and fields[3] in CLOSED_STATES:  # ended, as the drain counts it
        return None
    sources = [field[4:] for field in fields if field.startswith("src=")]
    ports = [field[6:] for field in fields if field.startswith("dport=")]
    if len(sources) < 2 or not ports or not ports[0].isdigit():
        return None
    return Flow(fields[0], int(ports[0]), sources[1])


Target = tuple[str, int, str]  # (protocol, external port, instance address)


def instances(state: AppState) -> dict[str, str]:
    """role -> address of the app's instances that may have flows: live, a running canary, the one before."""
    split = Split.of(state)
    found = {
        "old": state.previous.address if state.previous else None,
        "canary": split.canary.address if split else None,
        "live": state.active.address if state.active else None,
    }
    return {role: address for role, address in found.items() if address}


def targets(apps: Mapping[str, AppConfig], states: Iterable[AppState]) -> dict[Target, tuple[str, str]]:
    """Every (protocol, external port, address) a flow may match, and the (app, role) it counts for. An address
    the live instance shares with an older one (Docker reuses addresses) counts for the live one."""
    found: dict[Target, tuple[str, str]] = {}
    for state in states:
        app = apps.get(state.app)
        if app is None:
            continue
        for role, address in instances(state).items():  # live last: it wins a shared address
            for port in app.ports:
                found[(port.protocol, port.external, address)] = (app.name, role)
    return found


def count(lines: Iterable[str], wanted: Mapping[Target, tuple[str, str]]) -> dict[str, dict[str, int]]:
    """app -> role -> live flows, over one dump; every role of `wanted` is there, at 0 when nothing matched."""
    counts: dict[str, dict[str, int]] = {}
    for app, role in wanted.values():
        counts.setdefault(app, {})[role] = 0
    for line in lines:
        flow = parse_flow(line)
        hit = wanted.get((flow.protocol, flow.port, flow.answered_by)) if flow else None
        if hit is not None:
            counts[hit[0]][hit[1]] += 1
    return counts


def health(state: str | None, status: str | None) -> str:
    """The live container's health as Docker lists it: its state, and its HEALTHCHECK's verdict when the image has
    one (`running (healthy)`); `missing` when Docker lists no such container."""
    if not state:
        return "missing"
    verdict = _HEALTH.search(status or "")
    if verdict is None:
        return state
    return f"{state} ({verdict.group(1).replace('health: ', '')})"


def effective_share(counts: Mapping[str, int]) -> float | None:
    """The canary's flows over the app's live and canary flows, in percent; None without a canary or any flow."""
    canary, live = counts.get("canary"), counts.get("live") or 0
    if canary is None or canary + live == 0:
        return None
    return round(100 * canary / (canary + live), 1)


def sample_due(now: float, last: float | None, spent: float, *, changed: bool) -> bool:
    """Whether the heartbeat samples now: every FLOWS_SECONDS, and at once when what is live changed (a deploy, a
    canary, a rollback), so the page follows it; but never sooner than a sample's cost allows (`spent`, the last
    one's seconds: at most FLOWS_SHARE of the time), however big the conntrack table."""
    if last is None:
        return True
    floor = spent / FLOWS_SHARE
    return now - last >= (floor if changed else max(FLOWS_SECONDS, floor))
