"""A rollout across the fleet, decided before anything moves: the batches, the hosts skipped, what a failure reverts.

    hosts h1 h2 h3 h4 h5, canary h3, max_parallel 2, h5 already on the tag:

    batch 0  [h3]        the canary: alone, first; a failure here touches no other host
    batch 1  [h1, h2]
    batch 2  [h4]
    skipped  [h5]

Each host keeps its own zero-downtime swap; the controller only orders them. A host already on the tag is
skipped, so a rollout that is started again (or resumed after a crash) never deploys a host twice. On a
failure, the hosts already done go back to the tag each had before, and so does the failed host when its
tag changed (its own deploy reverts itself when it fails its health gate); the hosts not reached yet stay.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PERCENT_RE = re.compile(r"^([0-9]{1,3})%$")

# A host's progress, as the controller records it before and after each step.
PENDING, POSTING, DEPLOYING, DONE, FAILED, SKIPPED = "pending", "posting", "deploying", "done", "failed", "skipped"
REVERTING, REVERTED, REVERT_FAILED = "reverting", "reverted", "revert_failed"
STATES = (PENDING, POSTING, DEPLOYING, DONE, FAILED, SKIPPED, REVERTING, REVERTED, REVERT_FAILED)


@dataclass(frozen=True)
class Options:
    """What one rollout was asked for: the config's [fleet] values, overridden by the command's flags."""

    max_parallel: int | str = 1
    canary: int | str | None = None
    bake: float = 0.0
    revert: bool = True

    def as_dict(self) -> dict[str, object]:
        return {"max_parallel": self.max_parallel, "canary": self.canary, "bake": self.bake, "revert": self.revert}


@dataclass(frozen=True)
class HostStep:
    """One host's place in the rollout: its batch, and the tag it had when the rollout was planned."""

    host: str
    batch: int
    previous: str | None
    state: str = PENDING


def batch_size(max_parallel: int | str, host_count: int) -> int:
    """A count as it is; "N%" of the hosts, rounded up; never below 1 (and never above the host count)."""
    if isinstance(max_parallel, str):
        match = PERCENT_RE.fullmatch(max_parallel)
        if match is None:
            raise ValueError(f"not a count or a percentage: {max_parallel!r}")
        size = math.ceil(host_count * int(match[1]) / 100)
    else:
        size = max_parallel
    return max(1, min(size, max(1, host_count)))


def batches(hosts: Sequence[str], *, max_parallel: int | str, canary: int | str | None = None) -> list[list[str]]:
    """The hosts in the order they are deployed: the canary batch first, then batches of max_parallel.

    `max_parallel` counts against every host given, so "50%" of four hosts is two at a time.
    """
    rest = list(hosts)
    first: list[str] = []
    if isinstance(canary, str):
        if canary in rest:
            first = [canary]
    elif canary:
        first = rest[:canary]
    rest = [h for h in rest if h not in first]
    size = batch_size(max_parallel, len(hosts))
    return ([first] if first else []) + [rest[i : i + size] for i in range(0, len(rest), size)]


def plan(hosts: Sequence[str], current: Mapping[str, str | None], tag: str, options: Options) -> list[HostStep]:
    """Every host's step, in deploy order: those already on `tag` skipped, the others batched."""
    todo = [h for h in hosts if current.get(h) != tag]
    order = batches(todo, max_parallel=options.max_parallel, canary=options.canary)
    steps = [HostStep(h, n, current.get(h)) for n, batch in enumerate(order) for h in batch]
    steps += [HostStep(h, -1, current.get(h), SKIPPED) for h in hosts if h not in todo]
    return steps


def reverts(steps: Sequence[HostStep], current: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """(host, tag) to deploy back after a failure: each host done (or whose revert began), and a failed one
    whose tag changed.

    A host that had no release before has nothing to go back to, and one whose tag is unknown (it does not
    answer) is not touched: both stay as they are, and the failure names them.
    """
    back = []
    for step in steps:
        if step.previous is None:
            continue
        if step.state in (DONE, REVERTING) or (
            step.state == FAILED and current.get(step.host) not in (None, step.previous)
        ):
            back.append((step.host, step.previous))
    return back


def odd_ones(tags: Mapping[str, str | None]) -> list[str]:
    """The hosts whose tag differs from the one most hosts run (ties: the first host's tag wins)."""
    counts: dict[str | None, int] = {}
    for tag in tags.values():
        counts[tag] = counts.get(tag, 0) + 1
    if len(counts) <= 1:
        return []
    usual = max(counts, key=lambda t: (counts[t], -list(tags.values()).index(t)))
    return [host for host, tag in tags.items() if tag != usual]
