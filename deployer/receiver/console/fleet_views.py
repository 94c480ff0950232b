"""What the console's fleet and cluster pages show, made from the queue's rows. Pure: no I/O, no clock.

The rows are what the privileged side last learnt (deployer/queue/sightings.py): each page says how old they are,
and a host never asked or not answering is shown as such, never as running what it ran before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from deployer.plan.cluster import BucketOwner
from deployer.plan.rollout import odd_ones
from deployer.queue.model import Job, RolloutHost
from deployer.queue.sightings import OwnerRow, SeenHost

UNKNOWN, UNREACHABLE, ANSWERED = "unknown", "unreachable", "answered"


@dataclass(frozen=True)
class Cell:
    """One host's app: `state` says whether the facts are its last answer (answered), an older one kept while it
    does not answer (unreachable), or nothing (unknown: never asked)."""

    host: str
    app: str
    state: str
    tag: str | None = None
    port_set: str | None = None
    healthy: bool | None = None
    unwell: tuple[tuple[str, str], ...] = ()  # the health parts that are not ok
    last_job: str | None = None
    last_status: str | None = None
    problem: str | None = None
    checked_at: float | None = None
    seen_at: float | None = None
    differs: bool = False


@dataclass(frozen=True)
class FleetGrid:
    apps: tuple[str, ...]
    rows: tuple[tuple[str, tuple[Cell, ...]], ...]  # (host, a cell per app), in the config's order

    @property
    def differing(self) -> list[tuple[str, str]]:
        return [(cell.host, cell.app) for _, cells in self.rows for cell in cells if cell.differs]


def fleet_grid(hosts: Sequence[str], apps: Sequence[str], seen: Iterable[SeenHost]) -> FleetGrid:
    """Hosts × apps from the recorded sightings; per app, a host whose tag (as it last answered) differs from the
    one most hosts answered is marked. A host that does not answer now is not counted: its tag is not known."""
    known = {(s.fact.host, s.fact.app): s for s in seen}
    cells: dict[tuple[str, str], Cell] = {}
    for app in apps:
        for host in hosts:
            cells[host, app] = _cell(host, app, known.get((host, app)))
        answered = {h: cells[h, app].tag for h in hosts if cells[h, app].state == ANSWERED}
        for host in odd_ones(answered):
            cells[host, app] = _with_differs(cells[host, app])
    return FleetGrid(tuple(apps), tuple((host, tuple(cells[host, app] for app in apps)) for host in hosts))


def _cell(host: str, app: str, seen: SeenHost | None) -> Cell:
    if seen is None:
        return Cell(host, app, UNKNOWN)
    fact = seen.fact
    return Cell(
        host=host,
        app=app,
        state=ANSWERED if fact.problem is None else UNREACHABLE,
        tag=fact.tag if seen.seen_at is not None else None,
        port_set=fact.port_set,
        healthy=fact.healthy,
        unwell=tuple((part, state) for part, state in fact.health.items() if state != "ok"),
        last_job=fact.last_job,
        last_status=fact.last_status,
        problem=fact.problem,
        checked_at=fact.checked_at,
        seen_at=seen.seen_at,
    )


def _with_differs(cell: Cell) -> Cell:
    return Cell(**{**cell.__dict__, "differs": True})


# --- rollouts --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    number: int  # -1: the hosts skipped, already on the tag
    hosts: tuple[RolloutHost, ...]

    @property
    def label(self) -> str:
        return "skipped (already on the tag)" if self.number < 0 else f"batch {self.number + 1}"


@dataclass(frozen=True)
class RolloutView:
    job: Job
    batches: tuple[Batch, ...]  # in deploy order, the skipped hosts last
    counts: tuple[tuple[str, int], ...]  # state -> hosts, in the order the states first appear

    @property
    def planned(self) -> bool:
        return bool(self.batches)


def rollout_view(job: Job, rows: Sequence[RolloutHost]) -> RolloutView:
    """A rollout's hosts (rows in deploy order) grouped by batch, the batches in the order they run."""
    numbers = sorted({r.batch for r in rows}, key=lambda n: (n < 0, n))
    batches = tuple(Batch(n, tuple(r for r in rows if r.batch == n)) for n in numbers)
    counts: dict[str, int] = {}
    for batch in batches:
        for row in batch.hosts:
            counts[row.state] = counts.get(row.state, 0) + 1
    return RolloutView(job, batches, tuple(counts.items()))


def rollouts_newest_first(
    jobs: Iterable[Job], rows_of: Callable[[str], Sequence[RolloutHost]], count: int
) -> list[RolloutView]:
    """The last `count` rollouts, newest first (by when they were queued, then by the queue's order); `rows_of`
    reads a rollout's hosts, asked only for those shown, however long the history."""
    newest = sorted(jobs, key=lambda j: (j.created_at, j.seq), reverse=True)[:count]
    return [rollout_view(job, rows_of(job.id)) for job in newest]


# --- the cluster --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BucketLine:
    bucket: int
    state: str
    owner: str | None
    known: bool
    mine: bool
    home: str | None
    since: float | None


def bucket_lines(host: str, buckets: int, rows: Iterable[OwnerRow], homes: Mapping[int, str]) -> list[BucketLine]:
    """Every bucket of the config, with its owner as the agent last recorded it (or unknown)."""
    by_bucket = {row.owner.bucket: row for row in rows}
    lines = []
    for b in range(buckets):
        row = by_bucket.get(b)
        owner = row.owner if row is not None else BucketOwner(b, "unknown", None, False)
        lines.append(
            BucketLine(
                bucket=b,
                state=owner.state,
                owner=owner.owner,
                known=owner.known,
                mine=owner.known and owner.owner == host,
                home=homes.get(b),
                since=row.since if row is not None else None,
            )
        )
    return lines
