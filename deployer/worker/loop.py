"""The deploy worker: the one process that holds the Docker socket and netfilter.

It takes the worker lock (one worker per state folder), recovers jobs a dead worker left running,
runs `reconcile` so rules, containers and records agree before anything new happens, then claims
jobs from the queue. Each job runs in its own child process (deployer/worker/child.py), started by the
`launch` it is given, so a job can be timed out and killed, and a crash in one deploy cannot take the
worker down. A child that dies without recording an outcome is failed by the worker, which then
reconciles the app.

What it acts with (the launcher, reconcile, the host's checks) it receives from deployer/wiring.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployer.config import Config
from deployer.errors import DeployerError, LockError, StateError
from deployer.fleet.rollout import resumable
from deployer.host.locks import open_lock_file
from deployer.journal import Journal
from deployer.plan.flows import sample_due
from deployer.queue.model import Job, JobKind, JobStatus
from deployer.queue.queue import Queue
from deployer.queue.rows import row_problem
from deployer.worker.child import Running
from deployer.worker.run import WORKER_ACTOR, fleet_apps, publish_active, refuse_row

log = logging.getLogger("deployer.worker")

MAX_ATTEMPTS = 3
PAUSE_SECONDS = 2.0  # between tries to reach the queue while it cannot be written (a full disk)
HEARTBEAT_SECONDS = 2.0
POLL_SECONDS = 0.2


def host_checks(probes: Sequence[Callable[[], object]]) -> Callable[[], tuple[str, str]]:
    """The worker's checks over its two probes (Docker, netfilter): "ok" or the reason, for each."""

    def checks() -> tuple[str, str]:
        results = []
        for probe in probes:
            try:
                probe()
                results.append("ok")
            except DeployerError as exc:
                results.append(str(exc)[:200])
            except Exception as exc:  # noqa: BLE001 - a health probe reports, it never crashes the worker
                results.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        return results[0], results[1]

    return checks


# --- the supervising worker --------------------------------------------------------------------------


@dataclass
class Child:
    job: Job
    process: Running
    started: float


class WorkerLock:
    """One worker per state folder: it alone may decide that a running job has lost its worker.

    The lock lives in root's own `locks/`, not in the queue folder the receiver's group can write.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / "locks" / "worker.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = open_lock_file(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockError(f"another worker is running on this state folder (pid {holder or '?'})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


@dataclass
class Worker:
    config: Config
    queue: Queue
    journal: Journal
    launch: Callable[[Job], Running]
    reconcile: Callable[[str | None], list[str]]  # app name or None (all apps) -> repairs
    checks: Callable[[], tuple[str, str]] | None = None  # -> (docker, netfilter): "ok" or the reason
    clock: Callable[[], float] = time.time
    disk: Callable[[], str] | None = None  # -> "ok" or why the state folder's disk is (nearly) full
    registry: Callable[[], str | None] | None = None  # -> "ok", why a registry does not answer, None: not yet known
    registry_watch: Callable[[threading.Event], None] | None = None  # probes the registries in a thread of its own
    flows: Callable[[], Mapping[str, Mapping[str, Any]]] | None = None  # -> each app's live flows and health
    children: dict[str, Child] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    faults: dict[str, dict[str, Any]] = field(default_factory=dict)  # part -> {"reason", "since"}
    paused: str | None = None  # why the worker claims nothing now (the queue cannot be written)
    _faults_lock: threading.Lock = field(default_factory=threading.Lock)  # the heartbeat thread shares `faults`
    _flows_at: float | None = None  # when the heartbeat last sampled the flows, how long it took, what was live
    _flows_cost: float = 0.0
    _flows_live: tuple[Any, ...] = ()
    _flows_failing: bool = False

    def start(self) -> None:
        """Recover what a dead worker left, reconcile every app, and publish what is live.

        A full disk does not end the start: it waits, as a running worker does, until the queue can be written.
        """
        self.started_at = self.clock()
        self.lock = WorkerLock(self.config.settings.state_dir)
        self.lock.acquire()
        while True:
            try:
                self._recover_and_publish()
                break
            except StateError as exc:
                if exc.fault != "disk" or self.stopping.is_set():
                    raise
                self._pause(exc)
        if self.paused is not None:
            self._resume()
        self.journal.record("worker.started", actor=WORKER_ACTOR, pid=os.getpid())

    def _recover_and_publish(self) -> None:
        fleet = self.config.fleet
        for job in self.queue.jobs.recover(max_attempts=MAX_ATTEMPTS, rollout=resumable(fleet) if fleet else None):
            self.journal.record(
                "job.requeued" if job.status == JobStatus.QUEUED else "job.failed",
                job=job.id,
                app=job.app,
                actor=WORKER_ACTOR,
                reason=job.reason,
                **({"outcome": "failed"} if job.status == JobStatus.FAILED else {}),
            )
        try:
            self.reconcile(None)
        except DeployerError as exc:
            self.journal.record("worker.reconcile", outcome="failed", actor=WORKER_ACTOR, error=str(exc))
        for app in self.config.apps:
            with contextlib.suppress(DeployerError):
                publish_active(self.queue, self.config, app)
        self.queue.heartbeat.heartbeat(pid=os.getpid(), started_at=self.started_at)

    def poll(self) -> bool:
        """Reap ended children, time out slow ones, claim new jobs. True when something happened."""
        busy = self._reap()
        while not self.stopping.is_set():
            claim = self.queue.jobs.claim()
            if claim is None:
                break
            busy = True
            for old in claim.superseded:
                self.journal.record(
                    "job.superseded",
                    job=old.id,
                    app=old.app,
                    tag=old.tag,
                    actor=old.actor,
                    superseded_by=old.superseded_by,
                    reason=old.reason,
                )
            if claim.job is None:
                continue
            problem = row_problem(claim.job, self.config.apps, fleet_apps(self.config))
            if problem is not None:
                refuse_row(self.queue, self.journal, claim.job, problem)
                continue
            try:
                process = self.launch(claim.job)
            except OSError as exc:
                reason = f"cannot start the deploy process: {exc.strerror or exc}"
                self.queue.jobs.finish(claim.job, JobStatus.FAILED, reason)
                self.journal.record(
                    "job.failed",
                    outcome="failed",
                    job=claim.job.id,
                    app=claim.job.app,
                    actor=claim.job.actor,
                    reason=reason,
                )
                continue
            self.children[claim.job.id] = Child(claim.job, process, self.clock())
        return busy

    def _reap(self) -> bool:
        reaped = False
        for job_id, child in list(self.children.items()):
            code = child.process.poll()
            # A rollout bounds itself: each host's step has its own deadline ([fleet] host_timeout).
            timed_out = (
                code is None
                and child.job.kind != JobKind.ROLLOUT
                and self.clock() - child.started > self.config.server.job_timeout
            )
            if code is None and not timed_out:
                continue
            if timed_out:
                child.process.kill()
                with contextlib.suppress(Exception):
                    while child.process.poll() is None:
                        time.sleep(0.05)
            self._settle(child, code, timed_out)  # a queue that cannot be read now: settled on the next round
            del self.children[job_id]
            reaped = True
        return reaped

    def step(self) -> bool:
        """One round of `poll`; a queue that cannot be written (a full disk) pauses claiming instead of
        ending the worker, and the next round that gets through resumes it. True when something happened."""
        try:
            busy = self.poll()
        except StateError as exc:
            self._pause(exc)
            return False
        if self.paused is not None:
            self._resume()
        return busy

    def _pause(self, exc: StateError) -> None:
        if self.paused is None:
            log.error("worker: claiming no jobs until the job queue can be written again: %s", exc)
            self.note_fault("disk" if exc.fault == "disk" else "queue", str(exc))
        self.paused = str(exc)
        self.stopping.wait(PAUSE_SECONDS)

    def _resume(self) -> None:
        log.warning("worker: the job queue can be written again; claiming jobs (paused by: %s)", self.paused)
        self.paused = None
        for part in ("disk", "queue"):
            self.clear_fault(part)
        self.journal.record("worker.resumed", actor=WORKER_ACTOR)

    def note_fault(self, part: str, reason: str) -> None:
        """A part of the host is wrong: remembered with the time it was first seen, journaled once."""
        with self._faults_lock:
            new = part not in self.faults
            self.faults[part] = {"reason": reason, "since": self.faults.get(part, {}).get("since", self.clock())}
        if new:
            self.journal.record("worker.fault", outcome="failed", actor=WORKER_ACTOR, fault=part, reason=reason)

    def clear_fault(self, part: str) -> bool:
        """The part is right again; True when it was wrong (the jobs that wait on it are woken)."""
        with self._faults_lock:
            fault = self.faults.pop(part, None)
        if fault is None:
            return False
        self.journal.record(
            "worker.fault",
            outcome="ok",
            actor=WORKER_ACTOR,
            fault=part,
            lasted_s=round(self.clock() - fault["since"], 1),
        )
        with contextlib.suppress(StateError):
            self.queue.jobs.wake(part)
        return True

    def _settle(self, child: Child, code: int | None, timed_out: bool) -> None:
        """A child that ended without recording an outcome: fail the job, then repair the app."""
        job = self.queue.jobs.get(child.job.id)
        if job is None or job.status != JobStatus.RUNNING or job.attempts != child.job.attempts:
            return
        reason = (
            f"timed out after {self.config.server.job_timeout:g} s; the deploy was stopped"
            if timed_out
            else f"the deploy process ended (exit status {code}) before it recorded an outcome"
        )
        self.queue.jobs.finish(child.job, JobStatus.FAILED, reason)
        self.journal.record("job.failed", outcome="failed", job=job.id, app=job.app, actor=job.actor, reason=reason)
        if job.kind == JobKind.ROLLOUT:
            return  # nothing of it runs here to repair: each host's own worker repairs its own deploy
        try:
            self.reconcile(job.app)
        except DeployerError as exc:
            self.journal.record("worker.reconcile", outcome="failed", app=job.app, actor=WORKER_ACTOR, error=str(exc))
        with contextlib.suppress(DeployerError):
            publish_active(self.queue, self.config, job.app)

    def check_once(self) -> None:
        """Probe Docker, netfilter, the registries and the disk; note what is wrong, wake what waited on what came
        back; beat."""
        if self.checks is None:
            self.queue.heartbeat.heartbeat(pid=os.getpid(), started_at=self.started_at)
            return
        docker_state, netfilter_state = self.checks()
        parts = {"docker": docker_state, "netfilter": netfilter_state}
        registry_state = self.registry() if self.registry is not None else None
        if registry_state is not None:
            parts["registry"] = registry_state
        if self.disk is not None:
            parts["disk"] = self.disk()
        for part, state in parts.items():
            if state == "ok":
                if not (part == "disk" and self.paused is not None):  # resumed by a write that gets through
                    self.clear_fault(part)
            else:
                self.note_fault(part, state)
        with self._faults_lock:
            faults = {part: dict(fault) for part, fault in self.faults.items()}
        self.queue.heartbeat.heartbeat(
            pid=os.getpid(),
            started_at=self.started_at,
            docker=docker_state,
            netfilter=netfilter_state,
            registry=registry_state,
            checked=True,
            faults=faults,
        )

    def sample_flows(self) -> None:
        """On the heartbeat: each app's live flows and health, for the console, every FLOWS_SECONDS and as soon as
        what is live changes, no more often than the sample's cost allows (`sample_due`). A sample that fails
        publishes nothing: the console shows the last one, with its time."""
        if self.flows is None:
            return
        live = tuple(self.queue.live.releases())
        if not sample_due(self.clock(), self._flows_at, self._flows_cost, changed=live != self._flows_live):
            return
        began = time.monotonic()
        try:
            samples = self.flows()
        except DeployerError as exc:
            if not self._flows_failing:  # once per outage
                log.warning("worker: cannot sample the live flows: %s", exc)
            self._flows_failing, samples = True, None
        self._flows_at, self._flows_cost, self._flows_live = self.clock(), time.monotonic() - began, live
        if samples is not None:
            self._flows_failing = False
            self.queue.flows.publish(samples, at=self._flows_at)

    def heartbeat_forever(self) -> None:
        """Runs in its own thread: /healthz and `status` read the heartbeat, the checks and the faults."""
        failing = False
        while not self.stopping.is_set():
            try:
                self.check_once()
                self.sample_flows()
                failing = False
            except Exception as exc:  # noqa: BLE001 - the heartbeat reports; it must never end
                if not failing:  # once per outage, not every 2 s
                    log.warning("worker heartbeat failed: %s", exc)
                failing = True
            self.stopping.wait(HEARTBEAT_SECONDS)

    def run(self, *, poll_seconds: float = POLL_SECONDS) -> None:
        """Until `stopping` is set; then wait for running jobs to end (a second stop kills them)."""
        beat = threading.Thread(target=self.heartbeat_forever, name="heartbeat", daemon=True)
        beat.start()
        if self.registry_watch is not None:  # off the heartbeat's thread: a hanging registry must not stall it
            threading.Thread(target=self.registry_watch, args=(self.stopping,), name="registries", daemon=True).start()
        try:
            while not self.stopping.is_set():
                if not self.step():
                    self.stopping.wait(poll_seconds)
            while self.children:
                with contextlib.suppress(StateError):
                    self._reap()
                time.sleep(poll_seconds)
        finally:
            self.lock.release()

    def kill_children(self) -> None:
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
