"""The durable deploy queue: one SQLite file, `<state_dir>/queue/jobs.db`, shared by processes.

The receiver (gunicorn workers, possibly an unprivileged user) only inserts: jobs, deliveries it
has seen, nonces it has used. The deploy worker claims and finishes jobs. A job is committed
(WAL, synchronous=FULL) before the receiver answers 202, so an accepted job survives SIGKILL of
every process and a power loss.

Every write is one `BEGIN IMMEDIATE` transaction: the write lock is taken before anything is
read, so two processes can never both decide "this app is idle" or "this nonce is new".

Job states: queued -> running -> succeeded | failed; queued -> superseded | skipped; a running job
whose worker died, whose app was busy, or that met a transient fault of the host (`waiting_on` names
it: docker, registry, disk) goes back to queued. A job the receiver is still accepting is `accepting`:
no worker claims it until its audit record is written (`confirm`); if that record cannot be written,
the job is deleted again (`withdraw`) and never ran. No other job is ever deleted.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from deployer.config import AppConfig
from deployer.errors import DiskFull, InvalidTag, StateError, Unauthorized
from deployer.folders import check_database, check_same_database, share_folder
from deployer.plan.tags import DOCKER_TAG_RE, check_tag

FOLDER = "queue"
DB_NAME = "jobs.db"
BUSY_TIMEOUT_MS = 30_000
TERMINAL = frozenset({"succeeded", "failed", "superseded", "skipped"})
WAITING = frozenset({"queued", "running"})
ACCEPTING = "accepting"

# Named migrations, applied once each, in order (never edit one that has shipped: add another).
MIGRATIONS: list[tuple[str, list[str]]] = [
    ("0001_jobs", [
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
    ]),
    # When GitHub published each release: a late or redelivered older release must not deploy over it.
    ("0002_jobs_published_at", [
        "ALTER TABLE jobs ADD COLUMN published_at TEXT",  # release.published_at (UTC, ...Z); NULL: not a release
        "CREATE INDEX jobs_app_published ON jobs (app, kind, published_at)",
    ]),
    # The host's faults: what a waiting job waits on, and what the worker last saw wrong (JSON, see `heartbeat`).
    ("0003_faults", [
        "ALTER TABLE jobs ADD COLUMN waiting_on TEXT",
        "ALTER TABLE worker ADD COLUMN faults TEXT",
    ]),
    # Whether the registries the apps pull from answer: "ok", the reason, or NULL when no app names one.
    ("0004_registry_health", [
        "ALTER TABLE worker ADD COLUMN registry TEXT",
    ]),
    # A controller's rollouts: each host's progress, written before and after each step, so a rollout resumes
    # where it stood. And, on every host, the port set of the live release, for the controller to read.
    ("0005_rollouts", [
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
    ]),
]


@dataclass(frozen=True)
class Job:
    id: str
    app: str
    tag: str | None
    kind: str
    actor: str
    status: str
    source: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    superseded_by: str | None = None
    attempts: int = 0
    not_before: float = 0.0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    waiting_on: str | None = None
    seq: int = 0

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["source"] = dict(self.source) if isinstance(self.source, Mapping) else None
        data.pop("seq")
        return data


@dataclass(frozen=True)
class RolloutHost:
    """One host's row of a rollout: its batch, the tag it had, where it stands (deployer/plan/rollout.py)."""

    host: str
    batch: int
    previous: str | None
    state: str
    host_job: str | None = None
    reason: str | None = None
    failure: str | None = None
    since: float = 0.0


@dataclass(frozen=True)
class Submission:
    """What a delivery or request led to: a new job, an existing one, or none (ignored).

    verdict: "queued", "duplicate" (this delivery or release has its job), "older" (a newer release is
    live or queued) or "ignored".
    """

    job: Job | None
    created: bool
    reason: str
    verdict: str = "duplicate"


@dataclass(frozen=True)
class Claim:
    job: Job
    superseded: list[Job]


_JOB_COLUMNS = ("seq, id, app, tag, kind, actor, status, source, reason, superseded_by, attempts, not_before, "
                "created_at, started_at, finished_at, waiting_on")


def _job(row: tuple) -> Job:
    (seq, id_, app, tag, kind, actor, status, source, reason, superseded_by, attempts, not_before, created_at,
     started_at, finished_at, waiting_on) = row
    try:
        source = json.loads(source)
    except (TypeError, ValueError):
        source = None  # a row the receiver's group wrote by hand; `row_problem` refuses it
    return Job(id=id_, app=app, tag=tag, kind=kind, actor=actor, status=status, source=source,
               reason=reason, superseded_by=superseded_by, attempts=attempts, not_before=not_before,
               created_at=created_at, started_at=started_at, finished_at=finished_at, waiting_on=waiting_on, seq=seq)


def new_job_id() -> str:
    return "job-" + secrets.token_hex(8)


JOB_ID_RE = re.compile(r"^job-[0-9a-f]{16}$")
CANARY_KINDS = frozenset({"promote", "abort"})  # a signed request ends a running canary; it names no tag
ROLLOUT = "rollout"  # a controller's job: a tag rolled out across the fleet's hosts (deployer/fleet/rollout.py)
KINDS = frozenset({"release", "redeploy", ROLLOUT}) | CANARY_KINDS
MAX_ACTOR_CHARS = 200


def row_problem(job: Job, apps: Mapping[str, AppConfig], fleet_apps: tuple[str, ...] = ()) -> str | None:
    """Why a job read from the queue must not be acted on, or None.

    The receiver's group can write the queue file, so the worker checks every field it uses again:
    the id becomes a path, the app and tag reach Docker and hooks, the actor reaches the audit log.
    A rollout names a fleet app (`fleet_apps`); every other kind an app of this host.
    """
    if not isinstance(job.id, str) or not JOB_ID_RE.fullmatch(job.id):
        return f"job id {_shown(job.id)} is not a job id (job-<16 hex digits>)"
    if job.kind not in KINDS:
        return f"job kind {_shown(job.kind)} is not one of {', '.join(sorted(KINDS))}"
    if job.kind == ROLLOUT:
        if not isinstance(job.app, str) or job.app not in fleet_apps:
            return f"app {_shown(job.app)} is not a fleet app ([fleet] apps)"
        if not isinstance(job.tag, str) or not DOCKER_TAG_RE.fullmatch(job.tag):
            return f"tag {_shown(job.tag)} is not a Docker tag"  # each host checks its own tag_pattern too
    elif not isinstance(job.app, str) or job.app not in apps:
        return f"app {_shown(job.app)} is not in the config"
    elif job.kind in CANARY_KINDS:
        if job.tag is not None:
            return f"a {job.kind} job names no tag, but this one names {_shown(job.tag)}"
    elif job.tag is None:
        if job.kind != "redeploy":
            return "a release job names no tag"
    else:
        try:
            check_tag(apps[job.app], job.tag)
        except InvalidTag as exc:
            return str(exc)
    if not isinstance(job.actor, str) or not 0 < len(job.actor) <= MAX_ACTOR_CHARS or not job.actor.isprintable():
        return f"actor {_shown(job.actor)} is not printable text of at most {MAX_ACTOR_CHARS} characters"
    if not isinstance(job.source, Mapping):
        return "the job's source is not a JSON object"
    numbers = (job.attempts, job.not_before, job.created_at)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        return "the job's attempts and times are not numbers"
    return None


def _shown(value: object) -> str:
    return repr(value)[:60]


def state_error(what: str, exc: BaseException) -> StateError:
    """SQLite's "database or disk is full" (or ENOSPC) is DiskFull, a fault that waiting clears; the rest is StateError."""
    full = (getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
            or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC))
    detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
    return (DiskFull if full else StateError)(f"{what}: {detail}")


def queue_path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / FOLDER / DB_NAME


def prepare_folder(state_dir: str | os.PathLike[str], group: str | None = None) -> Path:
    """Create the queue folder and database file with the modes that let `group` enqueue.

    Run by the privileged side (serve, worker) before the receiver starts; see `folders.share_folder`.
    """
    return share_folder(state_dir, FOLDER, DB_NAME, group)


class Queue:
    """The queue database. One connection per process and thread; never shared across a fork."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._local = threading.local()

    @classmethod
    def for_state_dir(cls, state_dir: str | os.PathLike[str], **kwargs: Any) -> "Queue":
        return cls(queue_path(state_dir), **kwargs)

    # --- connection and transactions -----------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            identity = check_database(self.path)  # the receiver's group can plant links here
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                   check_same_thread=False)
            try:
                check_same_database(self.path, identity)
            except BaseException:
                conn.close()
                raise
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")  # a 202 promises the job survives a power loss
            self._migrate(conn)
        except sqlite3.Error as exc:
            raise state_error(f"cannot open the job queue {self.path}", exc) from None
        except OSError as exc:
            raise state_error(f"cannot open the job queue {self.path}", exc) from None
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
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

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise state_error(f"cannot read the job queue {self.path}", exc) from None

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
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

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    # --- the receiver's side -------------------------------------------------------------------

    def submit_release(self, *, app: str, tag: str, actor: str, hook_id: str, delivery: str,
                       source: Mapping[str, Any], published_at: str | None = None, hold: bool = False,
                       kind: str = "release") -> Submission:
        """Queue a release unless this delivery or this release already has its job, or a newer one is live or queued.

        "Newer" is GitHub's `published_at` (one spelling, `YYYY-MM-DDTHH:MM:SSZ`, so it compares as text): the
        order in which releases were published, which a redelivery keeps and an out-of-order arrival does not
        change. Without it (a caller that has none) the order is not checked. With `hold`, a new job is
        `accepting` until `confirm` (or `withdraw`). `kind`: a controller queues a fleet app's release as a rollout.
        """
        now = self.clock()
        with self._write() as conn:
            seen = self._seen_delivery(conn, hook_id, delivery)
            if seen is not None:
                return seen
            earlier = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE app = ? AND tag = ? AND status != 'accepting' "
                                   "AND (kind = ? OR status IN ('queued', 'running')) "
                                   "ORDER BY seq DESC LIMIT 1", (app, tag, kind)).fetchone()
            active = conn.execute("SELECT tag, job_id FROM active WHERE app = ?", (app,)).fetchone()
            if earlier is not None:
                job = _job(earlier)
                reason = _earlier_reason(job)
            elif active is not None and active[0] == tag:
                job = self._get(conn, active[1]) if active[1] else None
                reason = f"tag {tag} is already active"
            elif (newer := self._newer_release(conn, app, published_at, active[0] if active else None,
                                               kind)) is not None:
                job, where, newer_published_at = newer
                reason = (f"release {tag} (published {published_at}) is older than release {job.tag} "
                          f"(published {newer_published_at}), which is {where}; "
                          f"deploy it on purpose with POST /deploy")
                self._remember_delivery(conn, hook_id, delivery, job.id, "older", reason, now)
                return Submission(job, False, reason, "older")
            else:
                job = self._insert_job(conn, app=app, tag=tag, kind=kind, actor=actor, source=source, now=now,
                                       status=ACCEPTING if hold else "queued")
                if published_at is not None:
                    conn.execute("UPDATE jobs SET published_at = ? WHERE seq = ?", (published_at, job.seq))
                self._remember_delivery(conn, hook_id, delivery, job.id, "queued", "queued", now)
                return Submission(job, True, "queued", "queued")
            self._remember_delivery(conn, hook_id, delivery, job.id if job else None, "duplicate", reason, now)
            return Submission(job, False, reason)

    def record_ignored(self, *, hook_id: str, delivery: str, reason: str) -> Submission:
        """Remember a delivery that deploys nothing, so its redelivery gets the same answer."""
        with self._write() as conn:
            seen = self._seen_delivery(conn, hook_id, delivery)
            if seen is not None:
                return seen
            self._remember_delivery(conn, hook_id, delivery, None, "ignored", reason, self.clock())
        return Submission(None, False, reason, "ignored")

    def submit_manual(self, *, app: str, tag: str | None, actor: str, source: Mapping[str, Any],
                      hold: bool = False, kind: str = "redeploy") -> Job:
        """A signed redeploy (or promote, or abort) always makes a job: an operator who asks again means it.

        `hold`: as in submit_release."""
        assert kind in ("redeploy", ROLLOUT) or kind in CANARY_KINDS, kind
        with self._write() as conn:
            return self._insert_job(conn, app=app, tag=tag, kind=kind, actor=actor, source=source,
                                    now=self.clock(), status=ACCEPTING if hold else "queued")

    def confirm(self, job: Job) -> Job:
        """An accepting job's audit record is written: from now on a worker may claim it."""
        with self._write() as conn:
            row = conn.execute(f"UPDATE jobs SET status = 'queued' WHERE id = ? AND status = 'accepting' "
                               f"RETURNING {_JOB_COLUMNS}", (job.id,)).fetchone()
        if row is None:
            raise StateError(f"job {job.id} is no longer being accepted")
        return _job(row)

    def withdraw(self, job: Job) -> bool:
        """Delete an accepting job and the delivery that led to it: it was never accepted, so a redelivery is new."""
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM jobs WHERE id = ? AND status = 'accepting'", (job.id,)).rowcount
            if deleted:
                conn.execute("DELETE FROM deliveries WHERE job_id = ?", (job.id,))
        return deleted == 1

    def use_nonce(self, key_id: str, nonce: str, expires_at: float) -> None:
        """Remember a nonce until `expires_at`; a second use is Unauthorized."""
        now = self.clock()
        with self._write() as conn:
            conn.execute("DELETE FROM nonces WHERE expires_at < ?", (now,))
            try:
                conn.execute("INSERT INTO nonces (key_id, nonce, expires_at) VALUES (?, ?, ?)",
                             (key_id, nonce, expires_at))
            except sqlite3.IntegrityError:
                raise Unauthorized("nonce already used") from None

    def _newer_release(self, conn: sqlite3.Connection, app: str, published_at: str | None,
                       live_tag: str | None, kind: str = "release") -> tuple[Job, str, str] | None:
        """The newest release of `app` published after `published_at` that is queued, running or live:
        the job, where it is and when it was published."""
        if published_at is None:
            return None
        row = conn.execute(
            f"SELECT {_JOB_COLUMNS}, published_at FROM jobs WHERE app = ? AND kind = ? AND published_at > ? "
            "AND (status IN ('queued', 'running') OR (tag IS ? AND status != 'accepting')) "
            "ORDER BY published_at DESC, seq DESC LIMIT 1",
            (app, kind, published_at, live_tag)).fetchone()
        if row is None:
            return None
        job = _job(row[:-1])
        where = "live" if job.tag == live_tag and job.status not in WAITING else job.status
        return job, where, row[-1]

    def _seen_delivery(self, conn: sqlite3.Connection, hook_id: str, delivery: str) -> Submission | None:
        row = conn.execute("SELECT job_id, verdict, reason FROM deliveries WHERE hook_id = ? AND delivery = ?",
                           (hook_id, delivery)).fetchone()
        if row is None:
            return None
        job = self._get(conn, row[0]) if row[0] else None
        return Submission(job, False, f"delivery {delivery} was already received ({row[2]})")

    @staticmethod
    def _remember_delivery(conn: sqlite3.Connection, hook_id: str, delivery: str, job_id: str | None, verdict: str,
                           reason: str, now: float) -> None:
        conn.execute("INSERT INTO deliveries (hook_id, delivery, job_id, verdict, reason, at) VALUES (?, ?, ?, ?, ?, ?)",
                     (hook_id, delivery, job_id, verdict, reason, now))

    @staticmethod
    def _insert_job(conn: sqlite3.Connection, *, app: str, tag: str | None, kind: str, actor: str,
                    source: Mapping[str, Any], now: float, status: str = "queued") -> Job:
        job_id = new_job_id()
        row = conn.execute(
            f"INSERT INTO jobs (id, app, tag, kind, actor, source, status, created_at) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING {_JOB_COLUMNS}",
            (job_id, app, tag, kind, actor, json.dumps(dict(source), sort_keys=True), status, now)).fetchone()
        return _job(row)

    # --- reading -------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        rows = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    @staticmethod
    def _get(conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, *, app: str | None = None, status: str | None = None) -> list[Job]:
        where, args = [], []
        if app is not None:
            where.append("app = ?")
            args.append(app)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        return [_job(r) for r in self._read(f"SELECT {_JOB_COLUMNS} FROM jobs{clause} ORDER BY seq", tuple(args))]

    def steps(self, job_id: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT n, at, name, outcome, detail FROM steps WHERE job_id = ? ORDER BY n", (job_id,))
        return [{"n": n, "at": at, "name": name, "outcome": outcome, **({"detail": json.loads(detail)}
                                                                        if detail != "{}" else {})}
                for n, at, name, outcome, detail in rows]

    def delivery(self, hook_id: str, delivery: str) -> dict[str, Any] | None:
        rows = self._read("SELECT job_id, verdict, reason FROM deliveries WHERE hook_id = ? AND delivery = ?",
                          (hook_id, delivery))
        return dict(zip(("job_id", "verdict", "reason"), rows[0])) if rows else None

    def active_tag(self, app: str) -> str | None:
        rows = self._read("SELECT tag FROM active WHERE app = ?", (app,))
        return rows[0][0] if rows else None

    def worker_status(self) -> dict[str, Any] | None:
        """The worker's last heartbeat; `faults` maps each part it found wrong to {"reason", "since"}."""
        rows = self._read("SELECT pid, started_at, heartbeat_at, docker, netfilter, registry, checked_at, faults "
                          "FROM worker")
        if not rows:
            return None
        status = dict(zip(("pid", "started_at", "heartbeat_at", "docker", "netfilter", "registry", "checked_at"),
                          rows[0][:-1]))
        try:
            faults = json.loads(rows[0][-1] or "{}")
        except ValueError:
            faults = {}
        status["faults"] = faults if isinstance(faults, dict) else {}
        return status

    # --- the worker's side ---------------------------------------------------------------------

    def claim(self) -> Claim | None:
        """Start the newest waiting job of an idle app; the older waiting jobs of that app are superseded.

        Apps are served in the order their oldest waiting job arrived, so a busy app does not starve others.
        """
        now = self.clock()
        with self._write() as conn:
            busy = {row[0] for row in conn.execute("SELECT DISTINCT app FROM jobs WHERE status = 'running'")}
            waiting = [_job(r) for r in conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY seq")]
            order: list[str] = []
            for job in waiting:
                if job.app not in order:
                    order.append(job.app)
            for app in order:
                if app in busy:
                    continue
                jobs = [j for j in waiting if j.app == app]
                live = conn.execute("SELECT tag FROM active WHERE app = ?", (app,)).fetchone()
                # A promote or abort ends the canary the deploys after it would be refused during: it runs
                # first, alone, and supersedes nothing.
                action = next((j for j in jobs if j.kind in CANARY_KINDS), None)
                newest = action or _winner(jobs, live[0] if live else None)
                if isinstance(newest.not_before, (int, float)) and newest.not_before > now:
                    continue  # (a row with a malformed time is claimed at once, for the worker to refuse)
                superseded = []
                for older in (j for j in jobs if j.seq != newest.seq and action is None):
                    why = ("which was queued later" if older.seq < newest.seq
                           else "a newer release than the live one this would redeploy")
                    conn.execute("UPDATE jobs SET status = 'superseded', superseded_by = ?, reason = ?, "
                                 "finished_at = ? WHERE seq = ?",
                                 (newest.id, f"superseded by {newest.id} ({newest.tag or 'active release'}), "
                                             f"{why}", now, older.seq))
                    superseded.append(self._get(conn, older.id))
                row = conn.execute(f"UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ?, "
                                   f"reason = NULL, waiting_on = NULL WHERE seq = ? RETURNING {_JOB_COLUMNS}",
                                   (now, newest.seq)).fetchone()
                return Claim(_job(row), [j for j in superseded if j is not None])
        return None

    def finish(self, job: Job, status: str, reason: str | None = None) -> bool:
        """End a running job. False when this attempt no longer owns it (it was recovered meanwhile)."""
        assert status in TERMINAL, status
        with self._write() as conn:
            updated = conn.execute("UPDATE jobs SET status = ?, reason = ?, finished_at = ? "
                                   "WHERE id = ? AND status = 'running' AND attempts = ?",
                                   (status, reason, self.clock(), job.id, job.attempts)).rowcount
        return updated == 1

    def skip(self, job: Job, reason: str) -> bool:
        return self.finish(job, "skipped", reason)

    def requeue(self, job: Job, reason: str, *, delay: float = 0.0, waiting_on: str | None = None) -> bool:
        """Put a running job back: it runs again once `delay` has passed (or `wake(waiting_on)`), unless something
        newer supersedes it."""
        with self._write() as conn:
            updated = conn.execute("UPDATE jobs SET status = 'queued', reason = ?, not_before = ?, waiting_on = ? "
                                   "WHERE id = ? AND status = 'running' AND attempts = ?",
                                   (reason, self.clock() + delay, waiting_on, job.id, job.attempts)).rowcount
        return updated == 1

    def wake(self, fault: str) -> int:
        """The fault cleared: the jobs waiting on it may run now, not at the end of their backoff."""
        with self._write() as conn:
            return conn.execute("UPDATE jobs SET not_before = 0 WHERE status = 'queued' AND waiting_on = ?",
                                (fault,)).rowcount

    def waiting(self) -> list[Job]:
        """Queued jobs that wait on a fault of the host."""
        return [_job(r) for r in self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'queued' "
                                            "AND waiting_on IS NOT NULL ORDER BY seq")]

    def recover(self, *, max_attempts: int) -> list[Job]:
        """Jobs left running by a worker that died: back to the queue, or failed after too many tries.

        Only the one worker that holds the worker lock may call this: it knows no other worker runs.
        """
        now = self.clock()
        recovered = []
        with self._write() as conn:
            for job in [_job(r) for r in conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'running'")]:
                if job.attempts >= max_attempts:
                    reason = (f"the worker stopped while this job ran, {job.attempts} times; not tried again "
                              f"(check the worker's log, then redeploy by hand)")
                    conn.execute("UPDATE jobs SET status = 'failed', reason = ?, finished_at = ? WHERE seq = ?",
                                 (reason, now, job.seq))
                else:
                    reason = "the worker stopped while this job ran; queued again"
                    conn.execute("UPDATE jobs SET status = 'queued', reason = ?, not_before = 0 WHERE seq = ?",
                                 (reason, job.seq))
                self._add_step(conn, job.id, "interrupted", "failed" if job.attempts >= max_attempts else "requeued",
                               {"reason": reason}, now)
                recovered.append(self._get(conn, job.id))
        return [j for j in recovered if j is not None]

    def add_step(self, job_id: str, name: str, outcome: str | None, detail: Mapping[str, Any]) -> None:
        with self._write() as conn:
            self._add_step(conn, job_id, name, outcome, detail, self.clock())

    @staticmethod
    def _add_step(conn: sqlite3.Connection, job_id: str, name: str, outcome: str | None, detail: Mapping[str, Any],
                  now: float) -> None:
        n = conn.execute("SELECT COALESCE(MAX(n), 0) + 1 FROM steps WHERE job_id = ?", (job_id,)).fetchone()[0]
        conn.execute("INSERT INTO steps (job_id, n, at, name, outcome, detail) VALUES (?, ?, ?, ?, ?, ?)",
                     (job_id, n, now, name, outcome, json.dumps(dict(detail), sort_keys=True, default=str)))

    def set_active(self, app: str, tag: str | None, job_id: str | None = None, port_set: str | None = None) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO active (app, tag, job_id, updated_at, port_set) VALUES (?, ?, ?, ?, ?) "
                         "ON CONFLICT (app) DO UPDATE SET tag = excluded.tag, job_id = excluded.job_id, "
                         "updated_at = excluded.updated_at, port_set = excluded.port_set",
                         (app, tag, job_id, self.clock(), port_set))

    def live(self, app: str) -> dict[str, Any]:
        """What the worker last saw live of `app` and its last job: what GET /apps/<app> answers a controller."""
        rows = self._read("SELECT tag, port_set, job_id FROM active WHERE app = ?", (app,))
        tag, port_set, job_id = rows[0] if rows else (None, None, None)
        last = self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE app = ? AND status != 'accepting' "
                          "ORDER BY seq DESC LIMIT 1", (app,))
        job = _job(last[0]) if last else None
        return {"app": app, "tag": tag, "port_set": port_set, "job": job_id,
                "last_job": None if job is None else {
                    "id": job.id, "tag": job.tag, "kind": job.kind, "status": job.status, "reason": job.reason,
                    "rollout": job.source.get("rollout") if isinstance(job.source, Mapping) else None}}

    # --- a controller's rollouts ---------------------------------------------------------------

    def plan_rollout(self, rollout_id: str, steps: list[RolloutHost]) -> list[RolloutHost]:
        """Record each host's step once; a rollout that resumes keeps the plan it recorded first."""
        now = self.clock()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM rollout_hosts WHERE rollout_id = ?", (rollout_id,)).fetchone() is None:
                conn.executemany(
                    "INSERT INTO rollout_hosts (rollout_id, host, position, batch, previous, state, since) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(rollout_id, step.host, n, step.batch, step.previous, step.state, now)
                     for n, step in enumerate(steps)])
        return self.rollout_hosts(rollout_id)

    def rollout_hosts(self, rollout_id: str) -> list[RolloutHost]:
        rows = self._read("SELECT host, batch, previous, state, host_job, reason, failure, since FROM rollout_hosts "
                          "WHERE rollout_id = ? ORDER BY position", (rollout_id,))
        return [RolloutHost(*row) for row in rows]

    def set_rollout_host(self, rollout_id: str, host: str, state: str, *, host_job: str | None = None,
                         reason: str | None = None, failure: str | None = None) -> RolloutHost:
        """A host's new state; `failure` once set stays (a revert does not erase why the rollout stopped)."""
        with self._write() as conn:
            row = conn.execute("UPDATE rollout_hosts SET state = ?, host_job = ?, reason = ?, "
                               "failure = COALESCE(?, failure), since = ? WHERE rollout_id = ? AND host = ? "
                               "RETURNING host, batch, previous, state, host_job, reason, failure, since",
                               (state, host_job, reason, failure, self.clock(), rollout_id, host)).fetchone()
        if row is None:
            raise StateError(f"rollout {rollout_id} has no host {host!r}")
        return RolloutHost(*row)

    def heartbeat(self, *, pid: int, started_at: float, docker: str | None = None,
                  netfilter: str | None = None, registry: str | None = None, checked: bool = False,
                  faults: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        now = self.clock()
        with self._write() as conn:
            conn.execute("INSERT INTO worker (id, pid, started_at, heartbeat_at) VALUES (0, ?, ?, ?) "
                         "ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, started_at = excluded.started_at, "
                         "heartbeat_at = excluded.heartbeat_at", (pid, started_at, now))
            if checked:
                conn.execute("UPDATE worker SET docker = ?, netfilter = ?, registry = ?, checked_at = ? WHERE id = 0",
                             (docker, netfilter, registry, now))
            if faults is not None:
                conn.execute("UPDATE worker SET faults = ? WHERE id = 0", (json.dumps(dict(faults), sort_keys=True),))


def _winner(waiting: list[Job], live_tag: str | None) -> Job:
    """The waiting job of an app that runs: the last queued, unless that only redeploys the live release
    (no tag, or the live tag) while a release waits: a redeploy of what runs must not cancel something newer.
    An explicit redeploy of another tag (a rollback) is meant, and wins as the last queued.
    """
    newest = waiting[-1]
    if newest.kind == "redeploy" and newest.tag in (None, live_tag):
        releases = [job for job in waiting if job.kind == "release"]
        if releases:
            return releases[-1]
    return newest


def _earlier_reason(job: Job) -> str:
    tag = job.tag
    return {
        "queued": f"release {tag} is already queued as {job.id}",
        "running": f"release {tag} is already being deployed by {job.id}",
        "succeeded": f"release {tag} was already deployed by {job.id}",
        "superseded": f"release {tag} was superseded by {job.superseded_by}; redeploy it with POST /deploy",
        "skipped": f"release {tag} was already handled by {job.id} ({job.reason})",
        "failed": f"release {tag} already failed in {job.id}; retry with POST /deploy",
    }.get(job.status, f"release {tag} already has job {job.id}")
