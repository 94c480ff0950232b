"""What the console's pages show, made from the queue's rows and the audit log's entries. Pure: no I/O, no clock.

The receiver cannot read the host's records, so an app's digest, mode and canary come from what the engine wrote
to the audit log, and its live tag and port set from the queue's copy (`deployer/queue/live.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from deployer.audit import Entry, Verdict
from deployer.plan.flows import ROLES, effective_share
from deployer.queue.flows import FlowSample

RELEASE_KINDS = ("deploy", "rollback", "promote", "abort")
CHART_STEPS = ("pull", "start", "health", "flip", "drain", "stop")
CHART_DEPLOYS = 10
CHART_WIDTH, BAR_HEIGHT, BAR_GAP, LABEL_WIDTH = 600, 18, 6, 120
# Fields an entry's row shows in columns of their own, so its details leave them out.
SHOWN = {"seq", "ts", "event", "app", "actor", "job", "outcome", "step", "duration_ms", "started_at", "output"}


def seconds_between(start: str, end: str) -> float | None:
    """The seconds from one stored time to another (`2024-05-01T12:00:00.123Z`); None when either is unreadable."""
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except (TypeError, ValueError):
        return None


def details(entry: Entry) -> list[tuple[str, str]]:
    """An entry's other fields, sorted, as text: what its row shows after the columns."""
    return [(name, str(value)) for name, value in sorted(entry.fields.items()) if name not in SHOWN]


# --- the chain, per page ------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """Whether the chain verifies from an entry to the head, and if not, where it breaks."""

    ok: bool
    problem: str | None = None


def chain_marks(seqs: Iterable[int], verify_from: Callable[[int], Verdict]) -> dict[int, Mark]:
    """A mark for each seq of a page, from one check of the chain from its oldest entry to the head.

    A break at entry k fails every entry at or before k; the entries after k are checked again from the next one on
    the page, so a page costs one read of its span of the log, and one more per break it holds.
    """
    pending = sorted(set(seqs))
    marks: dict[int, Mark] = {}
    while pending:
        verdict = verify_from(pending[0])
        if verdict.ok:
            marks.update((seq, Mark(True)) for seq in pending)
            break
        broken = verdict.first_bad if verdict.first_bad is not None and verdict.first_bad >= pending[0] else None
        if broken is None:  # a break outside the span (the end was cut): nothing on the page reaches the head
            marks.update((seq, Mark(False, verdict.problem)) for seq in pending)
            break
        marks.update((seq, Mark(False, verdict.problem)) for seq in pending if seq <= broken)
        pending = [seq for seq in pending if seq > broken]
    return marks


# --- releases: an app's history ------------------------------------------------------------------


@dataclass
class Release:
    """One deploy, rollback, canary start, promote or abort of an app, from its entries."""

    kind: str  # deploy, canary, rollback, promote, abort
    seq: int
    started: str
    actor: str | None
    job: str | None
    tag: str | None
    previous: str | None = None  # the tag that was live before it
    outcome: str = "running"  # ok, failed, running
    duration: float | None = None
    error: str | None = None
    steps: dict[str, float] = field(default_factory=dict)  # step -> milliseconds


def releases(entries: Iterable[Entry]) -> list[Release]:
    """An app's releases, newest first, from its entries oldest first.

    A release opens at `<kind>.started` and takes the steps of its job (or, without a job, the steps that follow,
    as the app's lock keeps one at a time) until `<kind>.finished` or `.failed`.
    """
    found: list[Release] = []
    open_: Release | None = None
    live: str | None = None
    for entry in entries:
        kind, _, phase = entry.event.rpartition(".")
        if kind in RELEASE_KINDS and phase == "started":
            open_ = Release(
                kind="canary" if kind == "deploy" and entry.get("canary") is not None else kind,
                seq=entry.seq,
                started=entry.ts,
                actor=entry.get("actor"),
                job=entry.get("job"),
                tag=entry.get("tag"),
                previous=live,
            )
            found.append(open_)
        elif open_ is None or entry.get("job") != open_.job:
            continue
        elif entry.event == "step" and entry.get("step") and entry.get("duration_ms") is not None:
            open_.steps[str(entry.get("step"))] = float(entry.get("duration_ms"))
        elif kind in RELEASE_KINDS and phase in ("finished", "failed"):
            open_.outcome = "ok" if phase == "finished" else "failed"
            open_.duration = seconds_between(open_.started, entry.ts)
            open_.error = entry.get("error")
            # A canary's start leaves the live release as it was: only its promote makes its tag live.
            if phase == "finished" and entry.get("tag") is not None and open_.kind != "canary":
                live = entry.get("tag")
            open_ = None
    return found[::-1]


# --- the chart of step durations -----------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    step: str
    x: float
    width: float
    ms: float


@dataclass(frozen=True)
class Bar:
    label: str
    y: float
    segments: tuple[Segment, ...]
    total_ms: float


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    label_width: int
    bars: tuple[Bar, ...]
    steps: tuple[str, ...]
    scale_ms: float  # the milliseconds the full width stands for


def step_chart(history: Sequence[Release], *, steps: Sequence[str] = CHART_STEPS, count: int = CHART_DEPLOYS) -> Chart:
    """The last `count` deploys' steps as stacked horizontal bars on one scale, oldest at the top."""
    deploys = [r for r in history if r.kind in ("deploy", "rollback", "canary") and r.steps][:count][::-1]
    totals = [sum(r.steps.get(step, 0.0) for step in steps) for r in deploys]
    scale = max(totals, default=0.0) or 1.0
    span = CHART_WIDTH - LABEL_WIDTH
    bars = []
    for row, (release, total) in enumerate(zip(deploys, totals)):
        x, segments = float(LABEL_WIDTH), []
        for step in steps:
            ms = release.steps.get(step)
            if ms:
                width = round(ms / scale * span, 1)
                segments.append(Segment(step, round(x, 1), width, ms))
                x += width
        bars.append(Bar(f"{release.tag or '-'} ({release.kind})", row * (BAR_HEIGHT + BAR_GAP), tuple(segments), total))
    height = max(1, len(bars)) * (BAR_HEIGHT + BAR_GAP)
    return Chart(CHART_WIDTH, height, LABEL_WIDTH, tuple(bars), tuple(steps), scale)


# --- an app on the overview ----------------------------------------------------------------------


@dataclass(frozen=True)
class AppSummary:
    name: str
    tag: str | None
    port_set: str | None
    digest: str | None
    mode: str  # serving, maintenance, failover, drained, forward ... as the last mode change recorded it
    canary: int | None  # the running canary's weight
    canary_tag: str | None
    last_job: Mapping[str, Any] | None


def app_summary(name: str, live: Mapping[str, Any], recent: Iterable[Entry]) -> AppSummary:
    """What the overview shows of an app: `live` as GET /apps/<app> answers it, `recent` its entries newest first.

    The live digest is the last finished deploy's or rollback's, but a canary's image is live only once promoted:
    a running or aborted canary's digest is passed over, and a promote takes its canary's."""
    digest = mode = canary = canary_tag = None
    canary_settled = promoted = False
    for entry in recent:
        kind, _, phase = entry.event.rpartition(".")
        if digest is None and phase == "finished" and kind in RELEASE_KINDS:
            if kind == "promote":
                promoted = True
            elif kind == "deploy" and entry.get("canary") is not None:
                digest, promoted = (entry.get("digest") if promoted else None), False
            elif kind in ("deploy", "rollback"):
                digest = entry.get("digest")
        if mode is None and entry.get("mode") is not None:
            mode = str(entry.get("mode"))
        if not canary_settled and phase == "finished" and kind in RELEASE_KINDS:
            canary_settled = True
            if kind == "deploy" and entry.get("canary") is not None:
                canary, canary_tag = entry.get("canary"), entry.get("tag")
    return AppSummary(
        name=name,
        tag=live.get("tag"),
        port_set=live.get("port_set"),
        digest=digest,
        mode=mode or "serving",
        canary=canary,
        canary_tag=canary_tag,
        last_job=live.get("last_job"),
    )


# --- what the worker last sampled of an app -------------------------------------------------------


@dataclass(frozen=True)
class LiveSample:
    """An app's live container's health and each instance's live flows, as the worker last sampled them."""

    health: str | None  # None: Docker did not answer that sample
    flows: tuple[tuple[str, int], ...]  # (live, canary or old; flows), the old one only while it has flows
    share: float | None  # a running canary's flows over the app's, in percent
    sampled_at: float

    @property
    def unwell(self) -> bool:
        """The container is not running, or its HEALTHCHECK fails (not: Docker did not answer)."""
        return self.health is not None and (not self.health.startswith("running") or "unhealthy" in self.health)


def live_sample(sample: FlowSample | None) -> LiveSample | None:
    """What the overview shows of an app's sample; None: no sample (the page says so, and shows no number)."""
    if sample is None:
        return None
    counts = sample.counts()
    shown = tuple((role, counts[role]) for role in ROLES if role in counts and (role != "old" or counts[role]))
    return LiveSample(sample.health, shown, effective_share(counts), sample.sampled_at)


# --- a job's time line ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    """One entry of a job's time line: its offset from the first, and what it says."""

    seq: int
    offset: float | None
    entry: Entry
    details: list[tuple[str, str]]


def timeline(entries: Sequence[Entry]) -> list[Moment]:
    """A job's entries (oldest first) on a time line that starts at its first."""
    first = entries[0].ts if entries else None
    return [Moment(e.seq, seconds_between(first, e.ts) if first else None, e, details(e)) for e in entries]


def hook_outputs(entries: Iterable[Entry]) -> list[tuple[str, str]]:
    """(hook, output) of each hook step a job recorded."""
    return [
        (str(e.get("step")).removeprefix("hook "), str(e.get("output")))
        for e in entries
        if e.event == "step" and str(e.get("step", "")).startswith("hook ") and e.get("output")
    ]


def failure(entries: Iterable[Entry]) -> str | None:
    """Why the job failed, as its last failing entry says."""
    reasons = [
        e.get("error") or e.get("reason")
        for e in entries
        if e.get("outcome") == "failed" and (e.get("error") or e.get("reason"))
    ]
    return str(reasons[-1]) if reasons else None
