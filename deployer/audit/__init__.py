"""The audit log: a durable, append-only, hash-chained record of what happened to the host.

Storage is one SQLite file, `<state_dir>/audit/audit.db`, in WAL mode, so the web workers, the
deploy worker and every CLI append at once. An append reads the head of the chain and inserts the
next entry in one `BEGIN IMMEDIATE` transaction: appends queue behind each other, none is lost and
none forks the chain. The folder is shared with the receiver's group like the queue's (see
folders.py), so an unprivileged receiver records its deliveries and manual requests too.

Each entry stores its canonical JSON (every field, its own `seq` included) and
hash = SHA-256(prev_hash + canonical JSON). Editing, removing or reordering a row breaks the
chain, and `verify` names the first entry that no longer fits. A hash chain held in the same
file proves nothing against someone who rewrites the whole chain; copy the head that `verify`
prints somewhere else to pin it.

Pure functions decide (canonical JSON, hashing, chain checking, query building, time parsing);
`AuditLog` only runs their SQL. Secret-looking fields are dropped before anything is stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import sqlite3
import sys
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from deployer.errors import AuditError
from deployer.folders import check_database, check_same_database, open_entry, share_folder
from deployer.journal import Event, Journal, Sink, log_sink, utc_now

if TYPE_CHECKING:
    from deployer.config import Config

log = logging.getLogger("deployer.audit")

GENESIS = "0" * 64
FOLDER = "audit"
DB_NAME = "audit.db"  # <state_dir>/audit/audit.db; before the folder, <state_dir>/audit.db
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000
COLUMNS = ("ts", "event", "app", "actor", "job", "outcome")
ROW_COLUMNS = ("seq", *COLUMNS, "entry", "prev_hash", "hash")

# Key names that may carry credentials or raw request data. Matched as substrings of the
# lowercased key, so `X-Hub-Signature-256`, `api_token` and `raw_headers` all go.
SECRET_KEY_PARTS = ("signature", "secret", "token", "password", "passwd", "authorization", "headers", "cookie")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        seq INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        event TEXT NOT NULL,
        app TEXT,
        actor TEXT,
        job TEXT,
        outcome TEXT,
        entry TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS entries_app ON entries (app, seq)",
    "CREATE INDEX IF NOT EXISTS entries_ts ON entries (ts)",
    "CREATE INDEX IF NOT EXISTS entries_event ON entries (event, seq)",
    "CREATE INDEX IF NOT EXISTS entries_job ON entries (job, seq)",
    # The seq and hash of the last entry appended: reveals entries removed from the end.
    "CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL, "
    "hash TEXT NOT NULL)",
    f"INSERT OR IGNORE INTO head (id, seq, hash) VALUES (0, 0, '{GENESIS}')",
    # The seq and hash of the last pruned entry: where verify starts.
    "CREATE TABLE IF NOT EXISTS checkpoint (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL, "
    "hash TEXT NOT NULL, pruned_at TEXT NOT NULL)",
    # Guards against accidents, not against an attacker (who can drop them; the chain catches that).
    "CREATE TRIGGER IF NOT EXISTS entries_no_update BEFORE UPDATE ON entries "
    "BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS entries_prune_only BEFORE DELETE ON entries "
    "WHEN OLD.seq > COALESCE((SELECT seq FROM checkpoint WHERE id = 0), 0) "
    "BEGIN SELECT RAISE(ABORT, 'audit entries are removed only by prune'); END",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)


# --- canonical form and hashing (pure) -----------------------------------------------------------


def canonical_json(value: Any) -> str:
    """One spelling per value, so the same record always hashes the same."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def chain_hash(prev_hash: str, entry_json: str) -> str:
    return hashlib.sha256((prev_hash + entry_json).encode("utf-8")).hexdigest()


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def scrubbed(value: Any) -> Any:
    """Drop secret-looking keys at any depth and make every value plain JSON."""
    if isinstance(value, Mapping):
        return {str(k): scrubbed(v) for k, v in value.items() if not is_secret_key(str(k))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [scrubbed(v) for v in items]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def format_ts(moment: datetime) -> str:
    """The journal's spelling (`2024-05-01T12:00:00.123Z`): stored times compare as plain strings."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record_for(event: Event, *, now: str | None = None) -> dict[str, Any]:
    """The fields an event is stored with: scrubbed, without `_durable`, with a normalised `ts`."""
    record = scrubbed({k: v for k, v in event.items() if k not in ("_durable", "_required", "seq") and v is not None})
    if not record.get("event"):
        raise AuditError("an audit event needs an `event` name", field="event")
    record["event"] = str(record["event"])
    given = record.get("ts")
    try:
        record["ts"] = format_ts(datetime.fromisoformat(str(given))) if given else (now or utc_now())
    except ValueError:
        record["ts"], record["ts_given"] = now or utc_now(), str(given)
    return record


def _text(value: Any) -> str | None:
    return None if value is None else value if isinstance(value, str) else canonical_json(value)


def columns_for(record: Mapping[str, Any]) -> tuple[str | None, ...]:
    """The indexed columns, derived from the hashed record (so verify can recompute them).

    A delivery or manual request has a `verdict` rather than an `outcome`: it fills the outcome
    column, so `--outcome rejected` finds what was refused.
    """
    return tuple(_text(record.get(c) if c != "outcome" else record.get("outcome", record.get("verdict")))
                 for c in COLUMNS)


def row_for(seq: int, prev_hash: str, record: Mapping[str, Any]) -> tuple:
    """The row to insert for `record` as entry `seq`, chained to `prev_hash`."""
    entry_json = canonical_json({**record, "seq": seq})
    return (seq, *columns_for(record), entry_json, prev_hash, chain_hash(prev_hash, entry_json))


# --- checking the chain (pure) -------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: ok, or the first entry that no longer fits and why."""

    ok: bool
    checked: int
    start_seq: int  # the checkpoint the check started from (0: the log was never pruned)
    head_seq: int
    head_hash: str
    first_bad: int | None = None
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "checkpoint_seq": self.start_seq,
                "head_seq": self.head_seq, "head_hash": self.head_hash, "first_bad": self.first_bad,
                "problem": self.problem}


def check_chain(rows: Iterable[Sequence[Any]], *, start: tuple[int, str] = (0, GENESIS),
                head: tuple[int, str] | None = None) -> Verdict:
    """Walk rows (ROW_COLUMNS, in seq order) from a checkpoint; name the first entry that does not fit.

    `head` is the (seq, hash) the log last appended; it reveals entries removed from the end.
    """
    start_seq, prev = start
    expected = start_seq + 1
    checked = 0

    def bad(seq: int, problem: str) -> Verdict:
        head_seq, head_hash = head or (expected - 1, prev)
        return Verdict(False, checked, start_seq, head_seq, head_hash, seq, problem)

    for row in rows:
        seq, *columns, entry_json, prev_hash, digest = row
        if seq < expected:
            return bad(seq, f"entry {seq} lies at or before the checkpoint (entry {start_seq}): "
                            f"it was inserted, or the checkpoint was edited")
        if seq > expected:
            missing = f"entry {expected}" if seq == expected + 1 else f"entries {expected}-{seq - 1}"
            return bad(expected, f"{missing} removed: the chain jumps from entry {expected - 1} to entry {seq}")
        if chain_hash(prev_hash, entry_json) != digest:
            return bad(seq, f"entry {seq} was edited: its content no longer matches its hash")
        try:
            record = json.loads(entry_json)
        except ValueError:
            return bad(seq, f"entry {seq} was edited: its content is not JSON")
        if not isinstance(record, dict) or record.get("seq") != seq:
            held = record.get("seq") if isinstance(record, dict) else None
            return bad(seq, f"entry {seq} is out of order: its row holds entry {held} (rows were reordered)")
        if prev_hash != prev:
            if seq == start_seq + 1 and start_seq:
                return bad(seq, f"entry {seq} does not follow the checkpoint at entry {start_seq}: "
                                f"it or the checkpoint was edited")
            return bad(seq - 1, f"entry {seq - 1} was rewritten with a new hash: entry {seq} no longer links to it")
        for name, column, derived in zip(COLUMNS, columns, columns_for(record)):
            if column != derived:
                return bad(seq, f"entry {seq} was edited: its {name} column says {column!r}, "
                                f"its hashed content says {derived!r}")
        prev = digest
        expected += 1
        checked += 1

    last = expected - 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq > last:
            missing = f"entry {expected}" if head_seq == expected else f"entries {expected}-{head_seq}"
            return bad(expected, f"{missing} removed from the end: the log's head is entry {head_seq}")
        if head_seq < last:
            return bad(head_seq + 1, f"entry {head_seq + 1} was added outside the log: the head is entry {head_seq}")
        if head_hash != prev:
            return bad(last, f"entry {last} was rewritten with a new hash: the head records another hash")
    return Verdict(True, checked, start_seq, last, prev)


# --- queries (pure) ------------------------------------------------------------------------------


MAX_SEQ = 2 ** 63 - 1
RELATIVE_RE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
QUERY_KEYS = ("app", "since", "until", "event", "outcome", "actor", "job", "limit", "after")


def parse_time(text: str, *, now: datetime | None = None, field_name: str = "since") -> str:
    """`24h`, `30m`, `7d` (ago), or an ISO date or time (UTC unless it says otherwise) -> stored spelling."""
    match = RELATIVE_RE.match(text)
    try:
        if match:
            now = now or datetime.now(timezone.utc)
            return format_ts(now - timedelta(**{UNITS[match.group(2)]: int(match.group(1))}))
        return format_ts(datetime.fromisoformat(text.strip()))
    except OverflowError:  # before year 1 or after 9999, once made relative or moved to UTC
        raise AuditError(f"{field_name}: {text.strip()[:40]} is out of range", field=field_name) from None
    except ValueError:
        raise AuditError(f"{field_name}: expected a time like 24h, 30m, 7d, 2024-05-01 or 2024-05-01T12:00Z, "
                         f"not {text!r}", field=field_name) from None


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

    def as_dict(self) -> dict[str, Any]:
        return {"app": self.app, "since": self.since, "until": self.until, "event": list(self.event),
                "outcome": self.outcome, "actor": self.actor, "job": self.job, "limit": self.limit,
                "after": self.after}


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
    sql = f"SELECT {', '.join(ROW_COLUMNS)} FROM entries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY seq " + ("ASC" if query.oldest_first else "DESC")
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(query.limit)
    return sql, params


def audit_query_from_args(args: Mapping[str, str | None], *, now: datetime | None = None,
                          default_limit: int | None = 100, max_limit: int | None = 1000) -> Query:
    """Build a Query from string arguments (the web route's query string, the CLI's flags).

    Unknown keys are refused: a mistyped filter must not silently return everything.
    `limit=0` means no limit where `max_limit` is None. Raises AuditError with `field`.
    """
    unknown = sorted(set(args) - set(QUERY_KEYS))
    if unknown:
        raise AuditError(f"unknown filter {unknown[0]!r} (known: {', '.join(QUERY_KEYS)})", field=unknown[0])
    value = {k: (v.strip() if isinstance(v, str) else v) or None for k, v in args.items()}
    now = now or datetime.now(timezone.utc)
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


# --- entries as read back (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    seq: int
    fields: dict[str, Any]  # everything recorded, seq included
    prev_hash: str
    hash: str

    @property
    def event(self) -> str:
        return self.fields["event"]

    @property
    def ts(self) -> str:
        return self.fields["ts"]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)

    def as_dict(self) -> dict[str, Any]:
        return {**self.fields, "seq": self.seq, "prev_hash": self.prev_hash, "hash": self.hash}


def entry_from_row(row: Sequence[Any]) -> Entry:
    seq, *_, entry_json, prev_hash, digest = row
    return Entry(seq, json.loads(entry_json), prev_hash, digest)


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


# --- the store (thin) ----------------------------------------------------------------------------


def audit_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FOLDER / DB_NAME


class AuditLog:
    """The audit database of one state folder. One connection per process and thread."""

    def __init__(self, path: str | os.PathLike[str], *, legacy: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.legacy = Path(legacy) if legacy is not None else None  # where an older deployer kept it
        self._local = threading.local()

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str]) -> "AuditLog":
        return cls(audit_path(state_dir), legacy=Path(state_dir) / DB_NAME)

    def location(self) -> Path:
        """The log's file: `path`, after moving a log from `legacy` there when it can (see `move_log`)."""
        if self.legacy is None or self.path.exists() or not self.legacy.exists():
            return self.path
        return self.path if move_log(self.legacy, self.path) else self.legacy

    def open(self) -> Path:
        """Create the log and its schema now, as the privileged side does before the receiver starts."""
        self._connect(create=True)
        return self._local.path

    # connections: a connection must not cross a fork (gunicorn) or a thread
    def _connect(self, *, create: bool) -> sqlite3.Connection | None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        path = self.location()
        if not create and not path.exists():
            return None
        try:
            if path != self.path:  # a log not moved yet is used where it is, never created there
                conn = sqlite3.connect(path.absolute().as_uri() + "?mode=rw", uri=True,
                                       timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
            else:
                if create:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
                identity = check_database(path)  # the receiver's group can plant links here
                conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                       check_same_thread=False)
                try:
                    check_same_database(path, identity)
                except BaseException:
                    conn.close()
                    raise
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if (conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION
                    or conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal"):  # new, or just moved
                with _init_lock(path):
                    self._create_schema(conn)
            conn.execute("PRAGMA synchronous = FULL")  # an audit entry must survive a power loss
        except (sqlite3.Error, OSError) as exc:
            raise AuditError(f"cannot open the audit log {path}: {exc}", path=str(path)) from None
        self._local.conn, self._local.pid, self._local.path = conn, os.getpid(), path
        return conn

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode = WAL")  # persistent in the file; needs no open transaction
        with _transaction(conn, "BEGIN IMMEDIATE"):
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in SCHEMA:
                    conn.execute(statement)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    # writing
    def append(self, event: Event) -> int:
        """Record one event; returns its seq."""
        return self.append_many([event])[-1]

    def append_many(self, events: Iterable[Event]) -> list[int]:
        """Record events in one transaction, in order (bulk imports, benchmarks)."""
        records = [record_for(e) for e in events]
        conn = self._connect(create=True)
        try:
            with _transaction(conn, "BEGIN IMMEDIATE"):
                seq, prev = conn.execute("SELECT seq, hash FROM head WHERE id = 0").fetchone()
                rows = []
                for record in records:
                    seq += 1
                    row = row_for(seq, prev, record)
                    rows.append(row)
                    prev = row[-1]
                conn.executemany(f"INSERT INTO entries ({', '.join(ROW_COLUMNS)}) "
                                 f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})", rows)
                conn.execute("UPDATE head SET seq = ?, hash = ? WHERE id = 0", (seq, prev))
        except sqlite3.Error as exc:
            raise AuditError(f"cannot append to the audit log {self.path}: {exc}", path=str(self.path)) from None
        return [row[0] for row in rows]

    # reading
    def query(self, query: Query) -> list[Entry]:
        conn = self._connect(create=False)
        if conn is None:
            return []
        sql, params = build_select(query)
        try:
            return [entry_from_row(row) for row in conn.execute(sql, params)]
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc}", path=str(self.path)) from None

    def timeline(self, job: str) -> list[Entry]:
        """One job's entries, oldest first: its start, each step, its end."""
        return self.query(Query(job=job, limit=None, oldest_first=True))

    def span_from(self, seq: int) -> list[Entry]:
        """The deploy that entry `seq` started (for deploys without a job id)."""
        first = self.query(Query(after=seq - 1, limit=1, oldest_first=True))
        if not first or first[0].seq != seq or not first[0].get("app"):
            return []
        return deploy_span(self.query(Query(app=first[0].get("app"), after=seq - 1, limit=10_000,
                                            oldest_first=True)))

    def verify(self) -> Verdict:
        conn = self._connect(create=False)
        if conn is None:
            return Verdict(True, 0, 0, 0, GENESIS)
        try:
            with _transaction(conn, "BEGIN"):  # one snapshot: writers may append meanwhile
                start = conn.execute("SELECT seq, hash FROM checkpoint WHERE id = 0").fetchone() or (0, GENESIS)
                head = conn.execute("SELECT seq, hash FROM head WHERE id = 0").fetchone()
                rows = conn.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM entries ORDER BY seq")
                return check_chain(rows, start=tuple(start), head=tuple(head) if head else None)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc}", path=str(self.path)) from None

    def prune(self, before: str, *, actor: str) -> "Pruned":
        """Drop the entries older than `before` (a prefix of the chain) and keep a checkpoint.

        The checkpoint holds the seq and hash of the last dropped entry, so what remains still
        verifies. A broken chain is refused: pruning must not destroy the evidence. The prune is
        itself recorded.
        """
        verdict = self.verify()
        if not verdict.ok:
            raise AuditError(f"refusing to prune a broken audit log: {verdict.problem}", path=str(self.path))
        conn = self._connect(create=True)
        try:
            with _transaction(conn, "BEGIN IMMEDIATE"):
                first_kept = conn.execute("SELECT MIN(seq) FROM entries WHERE ts >= ?", (before,)).fetchone()[0]
                if first_kept is None:
                    cut = conn.execute("SELECT MAX(seq) FROM entries").fetchone()[0]
                else:
                    cut = first_kept - 1
                last = conn.execute("SELECT seq, hash FROM entries WHERE seq = ?", (cut,)).fetchone() if cut else None
                if last is None:
                    count, first = 0, None
                else:
                    count, first = conn.execute("SELECT COUNT(*), MIN(seq) FROM entries WHERE seq <= ?",
                                                (cut,)).fetchone()
                    conn.execute("INSERT INTO checkpoint (id, seq, hash, pruned_at) VALUES (0, ?, ?, ?) "
                                 "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                                 "pruned_at = excluded.pruned_at", (last[0], last[1], utc_now()))
                    conn.execute("DELETE FROM entries WHERE seq <= ?", (cut,))
        except sqlite3.Error as exc:
            raise AuditError(f"cannot prune the audit log {self.path}: {exc}", path=str(self.path)) from None
        pruned = Pruned(count=count, first=first, last=last[0] if last else None, checkpoint=last[1] if last else None)
        self.append({"event": "audit.pruned", "actor": actor, "before": before, "entries": count,
                     "first_seq": first, "last_seq": pruned.last})
        return pruned


@dataclass(frozen=True)
class Pruned:
    count: int
    first: int | None
    last: int | None
    checkpoint: str | None


@contextlib.contextmanager
def _init_lock(path: Path) -> Iterator[None]:
    """Serialise creating the schema: switching a new file to WAL while another process does
    the same fails at once with "database is locked" (SQLite does not wait in that case)."""
    fd = open_entry(path.with_name(path.name + ".init-lock"), os.O_RDONLY | os.O_CREAT, 0o660)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def move_log(old: Path, new: Path) -> bool:
    """Move a log kept where an older deployer kept it (`<state_dir>/audit.db`) to `new`, once.

    A WAL database is three files that every process using it holds open: moving them under a
    running process would split the log in two. Leaving WAL mode needs the only connection to the
    database, so it succeeds only when no other process has the log open, and leaves one
    self-contained file to rename. In use, or without the rights to move it (the receiver),
    the log stays where it is and is used there; a later open moves it. True when it is at `new`.
    """
    try:
        new.parent.mkdir(parents=True, exist_ok=True)
        with _init_lock(new):
            if new.exists():
                return True
            conn = sqlite3.connect(old.absolute().as_uri() + "?mode=rw", uri=True, timeout=0, isolation_level=None)
            try:
                if conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] != "delete":
                    return False
            finally:
                conn.close()
            os.rename(old, new)
    except (sqlite3.Error, OSError) as exc:
        log.info("audit: the audit log stays at %s for now: %s", old, exc)
        return False
    with contextlib.suppress(OSError):
        old.with_name(old.name + ".init-lock").unlink()
    log.info("audit: moved the audit log from %s to %s", old, new)
    return True


def prepare_folder(state_dir: str | os.PathLike[str], group: str | None = None) -> Path:
    """Create the audit folder and log with the modes that let `group` append; returns where the log is.

    Run by the privileged side (serve, worker) before the receiver starts, like the queue's
    `prepare_folder`. A log at the old place is moved in first; while another process holds it
    open it stays there unshared (the receiver's records then reach the log output only) and the
    next start moves it.
    """
    audit_log = AuditLog.for_state_dir(state_dir)
    try:
        where = audit_log.open()  # the schema, created by the privileged side
    except AuditError as exc:  # like every audit failure, it must not stop deploys
        log.warning("audit: %s; records reach the log output only", exc)
        return audit_log.path
    finally:
        audit_log.close()
    if where != audit_log.path:
        log.warning("audit: %s is in use by another process and stays there until the next start; "
                    "until then the receiver cannot write it", where)
        return where
    return share_folder(state_dir, FOLDER, DB_NAME, group)


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[None]:
    conn.execute(begin)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


# --- the journal sink ----------------------------------------------------------------------------


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
    def for_state_dir(cls, state_dir: str | os.PathLike[str]) -> "AuditSink":
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
                raise exc if isinstance(exc, AuditError) else AuditError(
                    f"cannot append to the audit log: {exc}") from None


def build_journal(config: "Config", extra_sinks: list[Sink] | None = None) -> Journal:
    """The journal every operation writes to: the log, this host's audit log, and any extra sinks."""
    audit = AuditSink.for_state_dir(config.settings.state_dir)
    return Journal([log_sink, audit, *(extra_sinks or [])], secrets=config.secrets())
