"""Queries on the audit log: filters from the web route's query string and the CLI's flags, and their SQL (pure)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from deployer.audit.chain import ROW_COLUMNS, Entry, format_ts
from deployer.errors import AuditError

MAX_SEQ = 2**63 - 1
RELATIVE_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
QUERY_KEYS = ("app", "since", "until", "event", "outcome", "actor", "job", "limit", "after")


def parse_time(text: str, *, now: datetime | None = None, field_name: str = "since") -> str:
    """`24h`, `30m`, `7d` (ago), or an ISO date or time (UTC unless it says otherwise) -> stored spelling."""
    match = RELATIVE_RE.match(text)
    try:
        if match:
            now = now or datetime.now(UTC)
            return format_ts(now - timedelta(**{UNITS[match.group(2)]: int(match.group(1))}))
        return format_ts(datetime.fromisoformat(text.strip()))
    except OverflowError:  # before year 1 or after 9999, once made relative or moved to UTC
        raise AuditError(f"{field_name}: {text.strip()[:40]} is out of range", field=field_name) from None
    except ValueError:
        raise AuditError(
            f"{field_name}: expected a time like 24h, 30m, 7d, 2024-05-01 or 2024-05-01T12:00Z, not {text!r}",
            field=field_name,
        ) from None


@dataclass(frozen=True)
class Query:
    """Filters on the audit log. Times are stored spellings; `event`/`actor` patterns may end in `*`."""

    app: str | None = None
    since: str | None = None  # inclusive
    until: str | None = None  # exclusive
    event: tuple[str, ...] = ()  # any of these
    outcome: str | None = None
    actor: str | None = None
    job: str | None = None
    limit: int | None = 50
    after: int | None = None  # only entries with a larger seq (paging, --follow)
    oldest_first: bool = False
    before: int | None = None  # only entries with a smaller seq (paging newest first: the console)

    def as_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "since": self.since,
            "until": self.until,
            "event": list(self.event),
            "outcome": self.outcome,
            "actor": self.actor,
            "job": self.job,
            "limit": self.limit,
            "after": self.after,
            **({"before": self.before} if self.before is not None else {}),
        }


def _pattern(column: str, pattern: str) -> tuple[str, list[Any]]:
    """Exact match, or a prefix range for `deploy.*`: a range uses the index and is case-sensitive, unlike LIKE."""
    if not pattern.endswith("*"):
        return f"{column} = ?", [pattern]
    prefix = pattern.rstrip("*")
    if not prefix:
        return f"{column} IS NOT NULL", []
    return f"({column} >= ? AND {column} < ?)", [prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)]


def build_select(query: Query) -> tuple[str, list[Any]]:
    """The SQL and parameters that answer `query`, newest first unless asked otherwise."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("app", query.app), ("outcome", query.outcome), ("job", query.job)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if query.since is not None:
        where.append("ts >= ?")
        params.append(query.since)
    if query.until is not None:
        where.append("ts < ?")
        params.append(query.until)
    if query.event:
        clauses = [_pattern("event", p) for p in query.event]
        where.append("(" + " OR ".join(c for c, _ in clauses) + ")")
        params.extend(p for _, ps in clauses for p in ps)
    if query.actor is not None:
        clause, values = _pattern("actor", query.actor)
        where.append(clause)
        params.extend(values)
    if query.after is not None:
        where.append("seq > ?")
        params.append(query.after)
    if query.before is not None:
        where.append("seq < ?")
        params.append(query.before)
    sql = f"SELECT {', '.join(ROW_COLUMNS)} FROM entries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq " + ("ASC" if query.oldest_first else "DESC")
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(query.limit)
    return sql, params


def audit_query_from_args(
    args: Mapping[str, str | None],
    *,
    now: datetime | None = None,
    default_limit: int | None = 100,
    max_limit: int | None = 1000,
) -> Query:
    """Build a Query from string arguments (the web route's query string, the CLI's flags).

    Unknown keys are refused: a mistyped filter must not silently return everything.
    `limit=0` means no limit where `max_limit` is None. Raises AuditError with `field`.
    """
    unknown = sorted(set(args) - set(QUERY_KEYS))
    if unknown:
        raise AuditError(f"unknown filter {unknown[0]!r} (known: {', '.join(QUERY_KEYS)})", field=unknown[0])
    value = {k: (v.strip() if isinstance(v, str) else v) or None for k, v in args.items()}
    now = now or datetime.now(UTC)
    limit = _whole_number(value.get("limit"), "limit") if value.get("limit") is not None else default_limit
    if limit == 0 and max_limit is None:
        limit = None
    elif limit is not None and (limit < 1 or (max_limit is not None and limit > max_limit)):
        most = f" and at most {max_limit}" if max_limit is not None else " (0: no limit)"
        raise AuditError(f"limit: must be at least 1{most}", field="limit")
    events = tuple(_pattern_arg(e.strip(), "event") for e in (value.get("event") or "").split(",") if e.strip())
    return Query(
        app=value.get("app"),
        since=parse_time(value["since"], now=now, field_name="since") if value.get("since") else None,
        until=parse_time(value["until"], now=now, field_name="until") if value.get("until") else None,
        event=events,
        outcome=value.get("outcome"),
        actor=_pattern_arg(value["actor"], "actor") if value.get("actor") else None,
        job=value.get("job"),
        limit=limit,
        after=_seq_number(value["after"], "after") if value.get("after") else None,
    )


def _whole_number(text: str, name: str) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise AuditError(f"{name}: must be a whole number, not {text!r}", field=name) from None


def _seq_number(text: str, name: str) -> int:
    """A seq to compare with: SQLite's integers stop at 2**63 - 1, and a larger one cannot be bound."""
    number = _whole_number(text, name)
    if number < 0:
        raise AuditError(f"{name}: must not be negative", field=name)
    if number > MAX_SEQ:
        raise AuditError(f"{name}: must be at most {MAX_SEQ}", field=name)
    return number


def _pattern_arg(pattern: str, name: str) -> str:
    """A `prefix*` pattern becomes a range up to the prefix's next code point; U+10FFFF has none."""
    if pattern.endswith("*") and pattern.rstrip("*")[-1:] == chr(sys.maxunicode):
        raise AuditError(f"{name}: a pattern must not end in U+10FFFF before its '*'", field=name)
    return pattern


def query_to_json(query: Query, entries: Sequence[Entry]) -> dict[str, Any]:
    """The JSON document `GET /audit` and `deployer audit --json` answer with."""
    return {"query": query.as_dict(), "count": len(entries), "entries": [e.as_dict() for e in entries]}


TERMINAL_SUFFIXES = (".finished", ".failed")


def deploy_span(entries: Iterable[Entry]) -> list[Entry]:
    """From a `*.started` entry on (oldest first, one app), the entries up to its end.

    For deploys without a job id (the CLI's): the app lock keeps one deploy of an app at a time,
    so the app's entries between its start and its end are that deploy's.
    """
    span: list[Entry] = []
    kind: str | None = None
    for entry in entries:
        if kind is None:
            if not entry.event.endswith(".started"):
                return []
            kind = entry.event.removesuffix(".started")
        elif entry.event in ("delivery", "manual_request") or entry.event.startswith("job."):
            continue
        span.append(entry)
        if entry.event in (kind + s for s in TERMINAL_SUFFIXES):
            break
    return span
