"""The audit log's store: one SQLite file that every process appends to, verifies and prunes.

Storage is one SQLite file, `<state_dir>/audit/audit.db`, in WAL mode, so the web workers, the
deploy worker and every CLI append at once. An append reads the head of the chain and inserts the
next entry in one `BEGIN IMMEDIATE` transaction: appends queue behind each other, none is lost and
none forks the chain. The folder is shared with the receiver's group like the queue's (see
folders.py), so an unprivileged receiver records its deliveries and manual requests too.

The chain's pure functions (chain.py) and the queries' (query.py) decide; `AuditLog` only runs their SQL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from deployer.audit.chain import GENESIS, ROW_COLUMNS, Entry, Verdict, check_chain, entry_from_row, record_for, row_for
from deployer.audit.query import Query, build_select, deploy_span
from deployer.errors import AuditError
from deployer.folders import check_database, check_same_database, flock_within, open_entry, share_folder
from deployer.journal import Event, utc_now

log = logging.getLogger("deployer.audit")

FOLDER = "audit"
DB_NAME = "audit.db"  # <state_dir>/audit/audit.db; before the folder, <state_dir>/audit.db
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 60_000
INIT_LOCK_WAIT = 30.0  # seconds; the receiver's group can open the init lock too, so the wait has a bound

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
    "CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 0), seq INTEGER NOT NULL, hash TEXT NOT NULL)",
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


def audit_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FOLDER / DB_NAME


class AuditLog:
    """The audit database of one state folder. One connection per process and thread."""

    def __init__(self, path: str | os.PathLike[str], *, legacy: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.legacy = Path(legacy) if legacy is not None else None  # where an older deployer kept it
        self._local = threading.local()

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str]) -> AuditLog:
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
                conn = sqlite3.connect(
                    path.absolute().as_uri() + "?mode=rw",
                    uri=True,
                    timeout=BUSY_TIMEOUT_MS / 1000,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                if create:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with contextlib.suppress(FileExistsError):
                        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))
                identity = check_database(path)  # the receiver's group can plant links here
                conn = sqlite3.connect(
                    path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
                )
                try:
                    check_same_database(path, identity)
                except BaseException:
                    conn.close()
                    raise
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if (
                conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION
                or conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal"
            ):  # new, or just moved
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
                conn.executemany(
                    f"INSERT INTO entries ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' * len(ROW_COLUMNS))})", rows
                )
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

    def newest_seq(self) -> int:
        """The seq of the newest entry; 0 for an empty or missing log. Where a reader of the log stands against it."""
        newest = self.query(Query(limit=1))
        return newest[0].seq if newest else 0

    def timeline(self, job: str) -> list[Entry]:
        """One job's entries, oldest first: its start, each step, its end."""
        return self.query(Query(job=job, limit=None, oldest_first=True))

    def span_from(self, seq: int) -> list[Entry]:
        """The deploy that entry `seq` started (for deploys without a job id)."""
        first = self.query(Query(after=seq - 1, limit=1, oldest_first=True))
        if not first or first[0].seq != seq or not first[0].get("app"):
            return []
        return deploy_span(self.query(Query(app=first[0].get("app"), after=seq - 1, limit=10_000, oldest_first=True)))

    def flip_commits(self) -> list[tuple[str | None, float]]:
        """(app, milliseconds) of every flip step recorded with its commit's duration, oldest first (GET /metrics).

        Reads the `step` entries through the event index and each one's JSON: about a second per million steps."""
        return self._read(
            "SELECT app, json_extract(entry, '$.committed_ms') FROM entries WHERE event = 'step' "
            "AND json_extract(entry, '$.step') = 'flip' AND json_extract(entry, '$.committed_ms') IS NOT NULL "
            "ORDER BY seq"
        )

    def refusals(self) -> list[tuple[int | None, int]]:
        """(status, how many) of the requests the receivers refused: the counts of their `rejected_requests` rows
        (None: the overflow row, which has no status) and the authenticated requests refused one by one."""
        return self._read(
            "SELECT status, SUM(n) FROM ("
            "SELECT json_extract(entry, '$.status') AS status, json_extract(entry, '$.count') AS n FROM entries "
            "WHERE event = 'rejected_requests' UNION ALL "
            "SELECT json_extract(entry, '$.status'), 1 FROM entries "
            "WHERE event IN ('delivery', 'manual_request') AND outcome = 'rejected'"
            ") GROUP BY status ORDER BY status"
        )

    def _read(self, sql: str) -> list[tuple]:
        conn = self._connect(create=False)
        if conn is None:
            return []
        try:
            return conn.execute(sql).fetchall()
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc}", path=str(self.path)) from None

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

    def verify_from(self, seq: int) -> Verdict:
        """Whether the chain holds from entry `seq` to the head: the entries after it and the head, read once.

        The entry's own link to the one before is taken as given, so a page of entries is checked from its oldest
        entry without reading the whole log.
        """
        conn = self._connect(create=False)
        if conn is None:
            return Verdict(True, 0, 0, 0, GENESIS)
        try:
            with _transaction(conn, "BEGIN"):
                first = conn.execute("SELECT prev_hash FROM entries WHERE seq = ?", (seq,)).fetchone()
                head = conn.execute("SELECT seq, hash FROM head WHERE id = 0").fetchone()
                if first is None:
                    return Verdict(False, 0, seq - 1, head[0], head[1], seq, f"entry {seq} is not in the log")
                rows = conn.execute(f"SELECT {', '.join(ROW_COLUMNS)} FROM entries WHERE seq >= ? ORDER BY seq", (seq,))
                return check_chain(rows, start=(seq - 1, first[0]), head=tuple(head) if head else None)
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit log {self.path}: {exc}", path=str(self.path)) from None

    def prune(self, before: str, *, actor: str) -> Pruned:
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
                    count, first = conn.execute(
                        "SELECT COUNT(*), MIN(seq) FROM entries WHERE seq <= ?", (cut,)
                    ).fetchone()
                    conn.execute(
                        "INSERT INTO checkpoint (id, seq, hash, pruned_at) VALUES (0, ?, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
                        "pruned_at = excluded.pruned_at",
                        (last[0], last[1], utc_now()),
                    )
                    conn.execute("DELETE FROM entries WHERE seq <= ?", (cut,))
        except sqlite3.Error as exc:
            raise AuditError(f"cannot prune the audit log {self.path}: {exc}", path=str(self.path)) from None
        pruned = Pruned(count=count, first=first, last=last[0] if last else None, checkpoint=last[1] if last else None)
        self.append(
            {
                "event": "audit.pruned",
                "actor": actor,
                "before": before,
                "entries": count,
                "first_seq": first,
                "last_seq": pruned.last,
            }
        )
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
    lock = path.with_name(path.name + ".init-lock")
    fd = open_entry(lock, os.O_RDONLY | os.O_CREAT, 0o660)
    try:
        if not flock_within(fd, INIT_LOCK_WAIT):
            raise AuditError(
                f"the audit log's init lock ({lock}) is still held after {INIT_LOCK_WAIT:g}s; "
                "another process is creating the log, or holds the lock",
                path=str(lock),
            )
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
        log.warning(
            "audit: %s is in use by another process and stays there until the next start; "
            "until then the receiver cannot write it",
            where,
        )
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
