"""The queue's one SQLite file, `<state_dir>/queue/jobs.db`, shared by processes: connections, transactions,
migrations.

The receiver (gunicorn workers, possibly an unprivileged user) inserts jobs, deliveries it has seen and nonces it
has used (a failed release's delivery, delivered again, gets its retry's answer in place of the first), and keeps
the console's sign-in attempts, a row per source address. The deploy worker claims and finishes jobs. A job is
committed (WAL, synchronous=FULL) before the receiver answers 202, so an accepted job survives SIGKILL of every
process and a power loss.

Every write is one `BEGIN IMMEDIATE` transaction: the write lock is taken before anything is read, so two processes
can never both decide "this app is idle" or "this nonce is new".
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from deployer.errors import DiskFull, StateError
from deployer.folders import check_database, check_same_database, share_folder

FOLDER = "queue"
DB_NAME = "jobs.db"
BUSY_TIMEOUT_MS = 30_000

# Named migrations, applied once each, in order (never edit one that has shipped: add another).
MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0001_jobs",
        [
            """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            app TEXT NOT NULL,
            tag TEXT,                      -- NULL: redeploy whatever is active when the job runs
            kind TEXT NOT NULL,            -- release | redeploy
            actor TEXT NOT NULL,
            source TEXT NOT NULL,          -- JSON: delivery, hook id, action / key id, reason
            status TEXT NOT NULL,
            reason TEXT,
            superseded_by TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            not_before REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL
        )""",
            "CREATE INDEX jobs_app_status ON jobs (app, status, seq)",
            "CREATE INDEX jobs_status ON jobs (status, seq)",
            "CREATE INDEX jobs_app_tag ON jobs (app, tag, kind)",
            """CREATE TABLE steps (
            job_id TEXT NOT NULL,
            n INTEGER NOT NULL,
            at REAL NOT NULL,
            name TEXT NOT NULL,
            outcome TEXT,
            detail TEXT NOT NULL,
            PRIMARY KEY (job_id, n)
        )""",
            """CREATE TABLE deliveries (
            hook_id TEXT NOT NULL,
            delivery TEXT NOT NULL,
            job_id TEXT,
            verdict TEXT NOT NULL,
            reason TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (hook_id, delivery)
        )""",
            """CREATE TABLE nonces (
            key_id TEXT NOT NULL,
            nonce TEXT NOT NULL,
            expires_at REAL NOT NULL,
            PRIMARY KEY (key_id, nonce)
        )""",
            "CREATE INDEX nonces_expiry ON nonces (expires_at)",
            # What the worker last saw live, so the receiver (which cannot read app state) can dedupe.
            "CREATE TABLE active (app TEXT PRIMARY KEY, tag TEXT, job_id TEXT, updated_at REAL NOT NULL)",
            """CREATE TABLE worker (
            id INTEGER PRIMARY KEY CHECK (id = 0),
            pid INTEGER NOT NULL,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            docker TEXT,                   -- NULL: not checked yet; "ok" or the reason it failed
            netfilter TEXT,
            checked_at REAL
        )""",
        ],
    ),
    # When GitHub published each release: a late or redelivered older release must not deploy over it.
    (
        "0002_jobs_published_at",
        [
            "ALTER TABLE jobs ADD COLUMN published_at TEXT",  # release.published_at (UTC, ...Z); NULL: not a release
            "CREATE INDEX jobs_app_published ON jobs (app, kind, published_at)",
        ],
    ),
    # The host's faults: what a waiting job waits on, and what the worker last saw wrong (JSON, see `heartbeat`).
    (
        "0003_faults",
        [
            "ALTER TABLE jobs ADD COLUMN waiting_on TEXT",
            "ALTER TABLE worker ADD COLUMN faults TEXT",
        ],
    ),
    # Whether the registries the apps pull from answer: "ok", the reason, or NULL when no app names one.
    (
        "0004_registry_health",
        [
            "ALTER TABLE worker ADD COLUMN registry TEXT",
        ],
    ),
    # A controller's rollouts: each host's progress, written before and after each step, so a rollout resumes
    # where it stood. And, on every host, the port set of the live release, for the controller to read.
    (
        "0005_rollouts",
        [
            """CREATE TABLE rollout_hosts (
            rollout_id TEXT NOT NULL,      -- the controller's job id of the rollout
            host TEXT NOT NULL,
            position INTEGER NOT NULL,     -- the deploy order
            batch INTEGER NOT NULL,        -- -1: skipped, already on the tag
            previous TEXT,                 -- the tag the host had when the rollout was planned
            state TEXT NOT NULL,           -- see deployer/plan/rollout.py
            host_job TEXT,                 -- the job on the host that deploys it (or reverts it)
            reason TEXT,                   -- the latest note on it
            failure TEXT,                  -- why its deploy failed: kept while it is reverted
            since REAL NOT NULL,           -- when the state was entered: a host's deadline counts from here
            PRIMARY KEY (rollout_id, host)
        )""",
            "ALTER TABLE active ADD COLUMN port_set TEXT",
        ],
    ),
    # An operator's abort of a rollout: recorded here, carried out by the rollout's run (at once if it runs, else
    # when a worker next runs it), so an abort outlives a controller that is down.
    (
        "0006_rollout_aborts",
        [
            """CREATE TABLE rollout_aborts (
            rollout_id TEXT PRIMARY KEY,   -- the controller's job id of the rollout
            actor TEXT NOT NULL,
            reason TEXT,
            at REAL NOT NULL
        )""",
        ],
    ),
    # Each report feed's cursor over the audit log (deployer/report/outbox.py): the last entry whose messages were
    # all delivered, how many of the next one's were, the feed's state (JSON), and its retry.
    (
        "0007_report_cursors",
        [
            """CREATE TABLE report_cursors (
            feed TEXT PRIMARY KEY,         -- "github" or "notify:<name>"
            seq INTEGER NOT NULL,          -- the audit entry last delivered whole
            done INTEGER NOT NULL,         -- the messages of entry seq+1 delivered already
            state TEXT NOT NULL,           -- JSON: the plan's state and the deployments' ids
            attempts INTEGER NOT NULL,     -- failures in a row of the message it is on
            retry_at REAL,                 -- when it is tried again; NULL: now
            problem TEXT,                  -- the last failure, without any secret
            updated_at REAL NOT NULL
        )""",
        ],
    ),
    # What GET /metrics reports of each app's live release that only root's record held: the image's digest and
    # the canary's share of new flows (NULL: no canary).
    (
        "0008_live_digest_canary",
        [
            "ALTER TABLE active ADD COLUMN digest TEXT",
            "ALTER TABLE active ADD COLUMN canary_weight INTEGER",
        ],
    ),
    # The console's sign-in attempts per source address (deployer/queue/attempts.py): one token bucket a row,
    # shared by every gunicorn worker.
    (
        "0009_signin_attempts",
        [
            """CREATE TABLE signin_attempts (
            source TEXT PRIMARY KEY,       -- the address, as the receiver saw it
            tokens REAL NOT NULL,          -- the attempts left at `at`
            at REAL NOT NULL               -- when the bucket was last taken from
        )""",
        ],
    ),
    # What the worker last sampled of each app for the console (deployer/queue/flows.py): the live flows per
    # instance (NULL: no such instance) and the live container's health, with the sample's time.
    (
        "0010_flows",
        [
            """CREATE TABLE flows (
            app TEXT PRIMARY KEY,
            sampled_at REAL NOT NULL,
            live INTEGER,
            canary INTEGER,
            old INTEGER,
            health TEXT
        )""",
        ],
    ),
    # What the console shows of other hosts, written by the privileged side that learnt it: on a controller, each
    # fleet host's app as it last answered (deployer/queue/sightings.py); on a cluster host, its agent's heartbeat
    # and each bucket's owner as this host sees it.
    (
        "0011_sightings",
        [
            """CREATE TABLE fleet_hosts (
            host TEXT NOT NULL,
            app TEXT NOT NULL,
            tag TEXT,                      -- as the host last answered; kept while it does not answer
            port_set TEXT,
            health TEXT NOT NULL,          -- JSON: part -> "ok" or what is wrong
            last_job TEXT,
            last_status TEXT,
            seen_at REAL,                  -- when it last answered; NULL: never
            problem TEXT,                  -- why the last ask failed; NULL: it answered
            checked_at REAL NOT NULL,      -- when it was last asked
            PRIMARY KEY (host, app)
        )""",
            """CREATE TABLE cluster_agent (
            id INTEGER PRIMARY KEY CHECK (id = 0),
            host TEXT NOT NULL,
            address TEXT NOT NULL,         -- the shared address
            healthy INTEGER NOT NULL,
            intent TEXT NOT NULL,          -- join or leave
            problem TEXT,
            heartbeat_at REAL NOT NULL
        )""",
            """CREATE TABLE bucket_owners (
            bucket INTEGER PRIMARY KEY,
            state TEXT NOT NULL,           -- keepalived's state of it on this host
            owner TEXT,
            known INTEGER NOT NULL,        -- 1: this host takes it in; 0: the owner the ranking expects
            since REAL NOT NULL            -- when this owner and state began
        )""",
        ],
    ),
]


def state_error(what: str, exc: BaseException) -> StateError:
    """SQLite's "database or disk is full" (or ENOSPC) is DiskFull, a fault that waiting clears; the rest is StateError."""
    full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or (
        isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    )
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return (DiskFull if full else StateError)(f"{what}: {detail}")


def queue_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FOLDER / DB_NAME


def prepare_folder(state_dir: str | os.PathLike[str], group: str | None = None) -> Path:
    """Create the queue folder and database file with the modes that let `group` enqueue.

    Run by the privileged side (serve, worker) before the receiver starts; see `folders.share_folder`.
    """
    return share_folder(state_dir, FOLDER, DB_NAME, group)


class Database:
    """The queue database. One connection per process and thread; never shared across a fork."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            identity = check_database(self.path)  # the receiver's group can plant links here
            conn = sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
            )
            try:
                check_same_database(self.path, identity)
            except BaseException:
                conn.close()
                raise
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # a 202 promises the job survives a power loss
            migrate(conn)
        except sqlite3.Error as exc:
            raise state_error(f"cannot open the job queue {self.path}", exc) from None
        except OSError as exc:
            raise state_error(f"cannot open the job queue {self.path}", exc) from None
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction: committed when the block ends, rolled back when it raises."""
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise state_error(f"the job queue {self.path} is not writable", exc) from None
        try:
            yield conn
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise state_error(f"cannot write to the job queue {self.path}", exc) from None
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise state_error(f"cannot commit to the job queue {self.path}", exc) from None

    def read(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self.connection().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise state_error(f"cannot read the job queue {self.path}", exc) from None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations not applied yet, in one transaction."""
    conn.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
    if all(name in done for name, _ in MIGRATIONS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        done = {row[0] for row in conn.execute("SELECT name FROM migrations")}
        for name, statements in MIGRATIONS:
            if name in done:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute("INSERT INTO migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
