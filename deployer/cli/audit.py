"""`deployer audit`: review, verify, show and prune the audit log. Thin: audit.py decides.

The formatting functions are pure (entries in, text out), so tests compare their output exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from deployer import config as config_module
from deployer.audit import AuditLog, Entry, Query, Verdict, audit_query_from_args, parse_time, query_to_json
from deployer.errors import AuditError

FILTERS = ("app", "since", "until", "event", "outcome", "actor", "limit")
FOLLOW_INTERVAL = 1.0
# Shown as their own columns (or not at all), so DETAIL leaves them out.
# What the log writes as an entry's outcome: a step's or a job's end, a mode change, a rollout's host, a cluster
# move; and the verdicts of deliveries and manual requests, which the filter matches as outcomes too.
OUTCOMES = (
    "ok",
    "failed",
    "skipped",
    "refused",
    "started",
    "stopped",
    "healthy",
    "unhealthy",
    "waiting",
    "requested",
    "joined",
    "left",
    "deploy",
    "ignore",
    "pong",
    "queued",
    "duplicate",
    "older",
    "answered",
    "rejected",
)
SHOWN = {"seq", "ts", "event", "app", "actor", "job", "outcome", "step", "duration_ms", "started_at"}
MAX_VALUE = 72


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "audit",
        cmd_audit,
        "review the audit log: who deployed what, each step, what was refused",
        "deployer audit --app demo --since 24h --event 'deploy.*'",
        "Show audit entries, newest first. Times are UTC. --since/--until take relative times\n"
        "(30m, 24h, 7d) or absolute ones (2024-05-01, 2024-05-01T12:00Z); --event and --actor\n"
        "match exactly, or by prefix when they end in '*' (deploy.*, github:*).\n"
        "ACTION: verify | show JOB | prune --before DATE (see deployer audit ACTION --help).",
    )
    p.add_argument("--app", help="only this app")
    p.add_argument("--since", type=_valid_time("since"), help="from this time on (inclusive): 24h, 2024-05-01 ...")
    p.add_argument("--until", type=_valid_time("until"), help="before this time (exclusive)")
    p.add_argument("--event", help="event name, a prefix like 'deploy.*', or several separated by commas")
    p.add_argument(
        "--outcome", type=outcome, metavar="OUTCOME", help=f"an outcome or a request's verdict: {', '.join(OUTCOMES)}"
    )
    p.add_argument("--actor", help="cli:USER, github:SENDER, key:ID ... or a prefix like 'github:*'")
    p.add_argument("--limit", type=_whole_number, default=50, help="at most this many entries (default 50; 0: all)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON document for tools")
    out.add_argument("--jsonl", action="store_true", help="one JSON entry per line")
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="print the latest entries oldest first, then stream new ones (Ctrl-C stops)",
    )
    actions = p.add_subparsers(dest="audit_action", metavar="ACTION")

    v = command(
        actions,
        "verify",
        cmd_verify,
        "check the hash chain: exit 1 naming the first entry edited, removed or reordered, else 0",
        "deployer audit verify",
    )
    v.add_argument("--json", action="store_true", help="print the verdict as JSON")

    s = command(
        actions,
        "show",
        cmd_show,
        "one deploy's timeline: each step's start time, duration and outcome",
        "deployer audit show 42",
        "Show the timeline of job JOB. A deploy started from the CLI has no job id: give the\n"
        "SEQ of its deploy.started entry instead (the first column of `deployer audit`).",
    )
    s.add_argument("ref", metavar="JOB", help="a job id, or the seq of a deploy.started entry")
    s.add_argument("--json", action="store_true", help="print the entries as JSON")

    r = command(
        actions,
        "prune",
        cmd_prune,
        "drop entries older than DATE, keeping a checkpoint so verify still passes on the rest",
        "deployer audit prune --before 90d",
    )
    r.add_argument(
        "--before",
        required=True,
        type=_valid_time("before"),
        help="drop entries older than this: 2024-01-01, or relative like 90d",
    )


def _valid_time(name: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            parse_time(text, field_name=name)
        except AuditError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return text  # resolved when the command runs, so "24h" means 24h before now

    return check


def outcome(text: str) -> str:
    """`--outcome`: one the log records, so a typo is refused instead of matching nothing."""
    if text not in OUTCOMES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is no outcome the audit log records (allowed: {', '.join(OUTCOMES)})"
        )
    return text


def _whole_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _log(args: argparse.Namespace) -> AuditLog:
    return AuditLog.for_state_dir(args.loaded_config.settings.state_dir)


# --- commands ------------------------------------------------------------------------------------


def cmd_audit(args: argparse.Namespace) -> int:
    if args.follow and args.json:
        raise AuditError("--follow streams entries: use it with --jsonl or the table, not --json")
    query = audit_query_from_args(
        {k: None if getattr(args, k) is None else str(getattr(args, k)) for k in FILTERS},
        default_limit=50,
        max_limit=None,
    )
    log = _log(args)
    entries = log.query(query)
    if args.follow:
        return _follow(log, query, entries, jsonl=args.jsonl)
    if args.json:
        print(json.dumps(query_to_json(query, entries), indent=2))
    elif args.jsonl:
        for entry in entries:
            print(json.dumps(entry.as_dict()))
    elif entries:
        print(format_table(entries))
    else:
        print("no audit entries match", file=sys.stderr)
    return 0


def _follow(log: AuditLog, query: Query, latest: list[Entry], *, jsonl: bool) -> int:
    def show(entries: Sequence[Entry]) -> None:
        for entry in entries:
            print(json.dumps(entry.as_dict()) if jsonl else format_row(entry, FOLLOW_WIDTHS), flush=True)

    if not jsonl:
        print(format_row(None, FOLLOW_WIDTHS), flush=True)
    show(list(reversed(latest)))
    cursor = max((e.seq for e in latest), default=0)
    stream = replace(query, limit=None, oldest_first=True)
    try:
        while True:
            time.sleep(FOLLOW_INTERVAL)
            fresh = log.query(replace(stream, after=cursor))
            show(fresh)
            cursor = fresh[-1].seq if fresh else cursor
    except (KeyboardInterrupt, BrokenPipeError):
        return 0


def cmd_verify(args: argparse.Namespace) -> int:
    verdict = _log(args).verify()
    if args.json:
        print(json.dumps(verdict.as_dict(), indent=2))
    else:
        print(format_verdict(verdict))
    return 0 if verdict.ok else 1


def cmd_show(args: argparse.Namespace) -> int:
    log = _log(args)
    entries = log.timeline(args.ref)
    if not entries and args.ref.isdigit():
        entries = log.span_from(int(args.ref))
    if not entries:
        raise AuditError(f"no job {args.ref!r} and no deploy started at entry {args.ref} in the audit log")
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=2))
    else:
        print(format_timeline(entries))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    before = parse_time(args.before, field_name="before")
    pruned = _log(args).prune(before, actor=config_module.local_actor())
    if not pruned.count:
        print(f"nothing to prune: no entry before {before} that is not followed only by newer ones")
    else:
        print(
            f"pruned {pruned.count} entries ({pruned.first}-{pruned.last}) older than {before}; "
            f"checkpoint: entry {pruned.last} {pruned.checkpoint}"
        )
    return 0


# --- formatting (pure) ---------------------------------------------------------------------------

HEADINGS = ("SEQ", "TIME (UTC)", "EVENT", "APP", "ACTOR", "JOB", "OUTCOME", "DETAIL")
FOLLOW_WIDTHS = (6, 19, 18, 12, 16, 12, 7)


def _time(ts: str | None, *, millis: bool = False) -> str:
    if not ts:
        return "-"
    text = ts.replace("T", " ").rstrip("Z")
    return text if millis else text[:19]


def compact(value: Any) -> str:
    """A value on one short line: the first line of multi-line text, long text cut with an ellipsis."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    lines = text.strip().splitlines() or [""]
    text = lines[0] + (" …" if len(lines) > 1 else "")
    return text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"


def detail(entry: Entry | dict[str, Any], *, skip: set[str] = SHOWN) -> str:
    fields = entry.fields if isinstance(entry, Entry) else entry
    return " ".join(f"{k}={compact(v)}" for k, v in fields.items() if k not in skip and v not in (None, "", {}, []))


def _cells(entry: Entry) -> tuple[str, ...]:
    event = entry.event
    info = detail(entry)
    if event == "step":
        event = f"step {entry.get('step', '?')}"
        if entry.get("duration_ms") is not None:
            info = f"{entry.get('duration_ms')}ms" + (f" {info}" if info else "")
    return (
        str(entry.seq),
        _time(entry.ts),
        event,
        entry.get("app") or "-",
        entry.get("actor") or "-",
        entry.get("job") or "-",
        entry.get("outcome") or entry.get("verdict") or "-",
        info,
    )


def format_row(entry: Entry | None, widths: Sequence[int]) -> str:
    """One line of the table (the heading when `entry` is None), padded to `widths`."""
    cells = HEADINGS if entry is None else _cells(entry)
    padded = [cells[0].rjust(widths[0])] + [c.ljust(w) for c, w in zip(cells[1:-1], widths[1:])]
    return "  ".join(padded + [cells[-1]]).rstrip()


def format_table(entries: Sequence[Entry]) -> str:
    rows = [_cells(e) for e in entries]
    widths = [max(len(HEADINGS[i]), *(len(r[i]) for r in rows)) for i in range(len(HEADINGS) - 1)]
    return "\n".join([format_row(None, widths)] + [format_row(e, widths) for e in entries])


def format_verdict(verdict: Verdict) -> str:
    since = f" after the checkpoint at entry {verdict.start_seq}" if verdict.start_seq else ""
    if verdict.ok:
        return (
            f"audit log intact: {verdict.checked} entries checked{since}; "
            f"head entry {verdict.head_seq} {verdict.head_hash}"
        )
    return (
        f"audit log BROKEN at entry {verdict.first_bad}: {verdict.problem}\n"
        f"({verdict.checked} entries{since} checked before it)"
    )


def _seconds_between(start: str, end: str) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None


def format_timeline(entries: Sequence[Entry]) -> str:
    """A deploy's steps in order: start time, duration and outcome, then the total."""
    first, last = entries[0], entries[-1]
    what = first.event.removesuffix(".started")
    head = (
        f"{what} of {first.get('app', '?')} {first.get('tag', '')}".rstrip()
        + f" by {first.get('actor', '?')}"
        + (f", job {first.get('job')}" if first.get("job") else "")
        + f" (entries {first.seq}-{last.seq})"
    )
    rows = [("STARTED (UTC)", "STEP", "DURATION", "OUTCOME", "DETAIL")]
    for entry in entries:
        if entry.event == "step":
            duration = entry.get("duration_ms")
            rows.append(
                (
                    _time(entry.get("started_at") or entry.ts, millis=True),
                    entry.get("step", "?"),
                    f"{duration:.1f} ms" if isinstance(duration, (int, float)) else "-",
                    entry.get("outcome") or "-",
                    detail(entry),
                )
            )
        else:
            rows.append(
                (
                    _time(entry.ts, millis=True),
                    entry.event,
                    "",
                    entry.get("outcome") or "",
                    detail(entry, skip=SHOWN | {"tag"} if entry is first else SHOWN),
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            [r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]), r[3].ljust(widths[3]), r[4]]
        ).rstrip()
        for r in rows
    ]
    total = _seconds_between(first.ts, last.ts)
    ending = last.event if last is not first else "no end recorded yet"
    lines.append(
        f"total {total:.1f} s, {ending}" + (f" {last.get('outcome')}" if last.get("outcome") else "")
        if total is not None
        else ending
    )
    return "\n".join([head, *lines])
