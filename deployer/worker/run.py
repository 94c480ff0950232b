"""One job's run, start to end, in the job's own process: a handler per job kind, each recording the outcome.

`execute` refuses a row that is not fit to act on, then hands the job to the handler its kind names in
`HANDLERS`. A JobRun carries what every handler needs (the job, its queue, journal, config and tools) and the
ways a job ends: `end` (succeeded, skipped, failed), `wait` (back to the queue until a fault clears) and
`refuse`. Every handler but the rollout's runs under the fault policy of `JobRun.retrying`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from deployer.config import AppConfig, Config
from deployer.errors import DeployerError, LockError
from deployer.fleet import rollout
from deployer.host import canary as canary_ops
from deployer.host.engine import CanaryStart
from deployer.host.state import StateStore
from deployer.journal import Journal
from deployer.plan import canary
from deployer.plan.image_wait import ImageStep, ManifestAnswer, decide_image
from deployer.queue.model import Job, JobKind, JobStatus
from deployer.queue.queue import Queue
from deployer.queue.rows import row_problem

BUSY_RETRY_SECONDS = 5.0
# A job that meets a transient fault waits 1 s, 2, 4, 8, 16, then 30 s between tries, each cut by up to half at
# random (so jobs held by one fault do not all return at once); the worker also wakes them when it sees the fault clear.
WAIT_FIRST_SECONDS = 1.0
WAIT_MOST_SECONDS = 30.0
WORKER_ACTOR = "worker"


class EngineLike(Protocol):
    def deploy(
        self,
        app_name: str,
        tag: str,
        *,
        actor: str,
        job: str | None = None,
        wait_on_transient: bool = False,
        canary_split: Any = None,
    ) -> Any: ...


def wait_seconds(attempt: int, jitter: float) -> float:
    """The wait after the `attempt`-th try met a transient fault; `jitter` in [0, 1) cuts it by up to half."""
    nominal = min(WAIT_MOST_SECONDS, WAIT_FIRST_SECONDS * 2 ** max(0, attempt - 1))
    return round(nominal * (1 - jitter / 2), 3)


@dataclass
class JobTools:
    """What a job acts with: the real engine and asset loader in production, small fakes in unit tests."""

    engine: Callable[[str | None], EngineLike]  # given the preloaded image reference, if any
    load_asset: Callable[[Job], str] | None = None  # downloads and loads the release asset; returns the reference
    fleet: Callable[[], Any] | None = None  # a controller's client of its hosts (deployer/fleet/client.py)
    manifest: Callable[[AppConfig, str], ManifestAnswer] | None = None  # whether the registry has the app's tag


def active_tag(config: Config, app: str) -> str | None:
    state = StateStore(config.settings.state_dir).load(app)
    return state.active.tag if state.active else None


def publish_active(queue: Queue, config: Config, app: str) -> None:
    """Copy the app's live tag and port set into the queue, where the receiver (which cannot read the
    records) answers GET /apps/<app> and dedupes releases."""
    queue.live.publish(StateStore(config.settings.state_dir).load(app))


def from_release(job: Job) -> bool:
    """Whether a GitHub delivery started the job (not `deploy`, `redeploy` or a controller)."""
    return job.kind == JobKind.RELEASE and isinstance(job.source, dict) and "delivery" in job.source


def image_wait(config: Config, app: AppConfig) -> float:
    return app.image_wait if app.image_wait is not None else config.settings.image_wait


def _utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fleet_apps(config: Config) -> tuple[str, ...]:
    return config.fleet.apps if config.fleet else ()


def refuse_row(queue: Queue, journal: Journal, job: Job, problem: str) -> str:
    """Fail a queue row that is not fit to act on; only its row number identifies it in the audit log."""
    reason = f"refused queue row {job.seq}: {problem}"
    queue.jobs.finish(job, JobStatus.FAILED, reason)
    journal.record("job.failed", outcome="failed", actor=WORKER_ACTOR, row=job.seq, reason=reason)
    return JobStatus.FAILED


def canary_start(app: AppConfig) -> Any:
    """The split the app's config asks a release for (`canary`, `canary_sticky`, `canary_bake`)."""
    assert app.canary is not None
    return CanaryStart(
        app.canary, app.canary_sticky, bake_until=canary.bake_deadline(datetime.now(UTC), app.canary_bake)
    )


def asset_image(app: AppConfig, tag: str) -> str | None:
    """The image a redeploy of an asset app runs: the one an earlier asset left tagged on the host (a pull only if
    that image is gone); None for an app whose releases come through the registry."""
    return f"{app.image}:{tag}" if app.asset is not None else None


@dataclass(frozen=True)
class Deployed:
    """A deploy the engine finished: recorded after the fault policy, as a success of the job."""

    tag: str
    result: Any


@dataclass
class JobRun:
    """One claimed job's run: what its handler acts with, and the ways the job ends."""

    job: Job
    config: Config
    queue: Queue
    journal: Journal
    tools: JobTools
    now: Callable[[], float] = time.time
    jitter: Callable[[], float] = random.random
    may_wait: bool = False  # whether a transient fault may still wait: set by `retrying` for its try
    base: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.base = {"job": self.job.id, "app": self.job.app, "actor": self.job.actor}

    @property
    def app(self) -> AppConfig:
        return self.config.app(self.job.app)

    def started(self) -> None:
        self.journal.record("job.started", tag=self.job.tag, kind=self.job.kind, attempt=self.job.attempts, **self.base)

    def retrying(self, act: Callable[[JobRun], str | Deployed]) -> str:
        """Run `act` under the fault policy.

        A transient fault (DockerUnavailable, RegistryUnavailable, DiskFull) puts the job back with a backoff
        while the wait would end before `job_timeout` (counted from when the job was queued); past that, it
        fails with the last reason, and the engine runs on-failure as for any failure.
        """
        delay = wait_seconds(self.job.attempts, self.jitter())
        self.may_wait = self.now() + delay - self.job.created_at < self.config.server.job_timeout
        try:
            outcome = act(self)
        except LockError as exc:
            return self.busy(exc)
        except DeployerError as exc:
            if exc.transient and self.may_wait:
                return self.wait(exc, delay)
            if exc.transient:
                return self.end(
                    JobStatus.FAILED,
                    f"gave up after {self.job.attempts} tries over {self.config.server.job_timeout:g} s: {exc}",
                    error_type=type(exc).__name__,
                    fault=exc.fault,
                )
            return self.end(JobStatus.FAILED, str(exc), error_type=type(exc).__name__)
        return self.settle(outcome)

    def settle(self, outcome: str | Deployed) -> str:
        """The job's status: a finished deploy is recorded now, any other outcome was recorded by its handler."""
        return self.record_deploy(outcome) if isinstance(outcome, Deployed) else outcome

    def deploy(self, tag: str, preloaded: str | None, split: Any = None) -> Deployed:
        result = self.tools.engine(preloaded).deploy(
            self.job.app,
            tag,
            actor=self.job.actor,
            job=self.job.id,
            wait_on_transient=self.may_wait,
            **({"canary_split": split} if split else {}),
        )
        return Deployed(tag, result)

    def record_deploy(self, deployed: Deployed) -> str:
        tag, result = deployed.tag, deployed.result
        self.queue.live.set_active(self.job.app, tag, self.job.id, getattr(result, "port_set", None))
        return self.end(
            JobStatus.SUCCEEDED, f"{tag} is live on {result.port_set}", tag=tag, digest=getattr(result, "digest", None)
        )

    def end_canary(self, end: Callable[..., Any]) -> str:
        """A signed promote or abort: the same transaction as `deployer promote` or `deployer abort`."""
        reason = self.job.source.get("reason") if isinstance(self.job.source, dict) else None
        after = end(self.tools.engine(None), self.job.app, actor=self.job.actor, job=self.job.id, reason=reason)
        tag = after.active.tag if after.active else None
        self.queue.live.set_active(self.job.app, tag, self.job.id, after.active.port_set if after.active else None)
        return self.end(JobStatus.SUCCEEDED, f"{self.job.kind}: {tag} serves everything", tag=tag)

    def no_tag(self) -> str:
        return self.end(JobStatus.FAILED, f"app {self.job.app!r} has no active release to redeploy; name a tag")

    def busy(self, exc: LockError) -> str:
        """The app's lock is held: try again shortly, until the job has waited `job_timeout`."""
        if self.now() - self.job.created_at > self.config.server.job_timeout:
            return self.end(
                JobStatus.FAILED, f"the app stayed busy for longer than {self.config.server.job_timeout:g} s: {exc}"
            )
        self.queue.jobs.requeue(self.job, f"waiting: {exc}", delay=BUSY_RETRY_SECONDS)
        self.journal.record("job.requeued", reason=str(exc), **self.base)
        return JobStatus.QUEUED

    def wait(self, exc: DeployerError, delay: float) -> str:
        """Back to the queue until the fault clears: the row and the audit log say on what, and how many tries so far."""
        reason = f"waiting on {exc.fault}: {exc}"
        self.queue.jobs.requeue(self.job, reason, delay=delay, waiting_on=exc.fault)
        self.journal.record(
            "job.waiting",
            fault=exc.fault,
            reason=str(exc),
            attempt=self.job.attempts,
            retry_in=delay,
            error_type=type(exc).__name__,
            **self.base,
        )
        return JobStatus.QUEUED

    def end(self, status: str, reason: str, **extra: Any) -> str:
        owned = self.queue.jobs.finish(self.job, status, reason)
        event = {JobStatus.SUCCEEDED: "job.finished", JobStatus.SKIPPED: "job.finished"}.get(status, "job.failed")
        outcome = {JobStatus.SUCCEEDED: "ok", JobStatus.SKIPPED: "skipped"}.get(status, "failed")
        self.journal.record(
            event,
            outcome=outcome,
            status=status,
            reason=reason,
            **({} if owned else {"note": "the job was recovered meanwhile"}),
            **self.base,
            **extra,
        )
        return status

    def await_image(self, tag: str) -> str | None:
        """Before the pull of a GitHub release: None when the pull may run now, else how the job ended for now
        (back to the queue to look again, or failed once `image_wait` has passed)."""
        if self.tools.manifest is None or not from_release(self.job):
            return None
        app = self.app
        reference = f"{app.image}:{tag}"
        decision = decide_image(
            from_release=True,
            answer=self.tools.manifest(app, tag),
            reference=reference,
            waited=self.now() - self.job.created_at,
            image_wait=image_wait(self.config, app),
            attempt=self.job.attempts,
            since=_utc(self.job.created_at),
        )
        if decision.step == ImageStep.FAIL:
            return self.end(JobStatus.FAILED, decision.reason, fault="image", image=reference)
        if decision.step == ImageStep.WAIT:
            self.queue.jobs.requeue(
                self.job, f"waiting on image: {decision.reason}", delay=decision.delay, waiting_on="image"
            )
            self.journal.record(
                "job.waiting",
                fault="image",
                reason=decision.reason,
                attempt=self.job.attempts,
                retry_in=decision.delay,
                image=reference,
                **self.base,
            )
            return JobStatus.QUEUED
        return None

    def refuse(self, problem: str) -> str:
        return refuse_row(self.queue, self.journal, self.job, problem)

    def publish_active(self) -> None:
        publish_active(self.queue, self.config, self.job.app)


# --- a handler per job kind ----------------------------------------------------------------------


def release(run: JobRun) -> str | Deployed:
    """A published release: skipped when already live; its asset loaded first; a canary when the app asks."""
    tag = run.job.tag or active_tag(run.config, run.job.app)
    if tag is None:
        return run.no_tag()
    if active_tag(run.config, run.job.app) == tag:
        run.publish_active()
        return run.end(JobStatus.SKIPPED, f"tag {tag} is already active")
    app = run.app
    if app.asset is not None and run.tools.load_asset is not None:
        with run.journal.step("asset", **run.base) as step:
            preloaded = run.tools.load_asset(run.job)
            step.detail["image"] = preloaded
    else:
        preloaded = asset_image(app, tag)
        waited = run.await_image(tag) if preloaded is None else None
        if waited is not None:
            return waited
    return run.deploy(tag, preloaded, canary_start(app) if app.canary else None)


def redeploy(run: JobRun) -> str | Deployed:
    """A signed redeploy (a rollback, a retry): the named tag or the live one, deployed whole."""
    tag = run.job.tag or active_tag(run.config, run.job.app)
    if tag is None:
        return run.no_tag()
    return run.deploy(tag, asset_image(run.app, tag))


def promote(run: JobRun) -> str:
    return run.end_canary(canary_ops.promote)


def abort(run: JobRun) -> str:
    return run.end_canary(canary_ops.abort)


def roll_out(run: JobRun) -> str:
    """A controller's rollout: it sequences the hosts' own deploys; a failure is the rollout's, named by host."""
    assert run.config.fleet is not None and run.tools.fleet is not None
    try:
        summary = rollout.Rollout(
            run.job,
            fleet=run.config.fleet,
            progress=run.queue.rollouts,
            journal=run.journal,
            hosts=run.tools.fleet(),
            clock=run.queue.database.clock,
        ).run()
    except DeployerError as exc:
        return run.end(JobStatus.FAILED, str(exc), error_type=type(exc).__name__)
    return run.end(JobStatus.SUCCEEDED, summary, tag=run.job.tag)


@dataclass(frozen=True)
class Handler:
    act: Callable[[JobRun], str | Deployed]
    retried: bool = True  # under the fault policy; a rollout bounds itself ([fleet] host_timeout per host)


HANDLERS: dict[str, Handler] = {
    JobKind.RELEASE: Handler(release),
    JobKind.REDEPLOY: Handler(redeploy),
    JobKind.PROMOTE: Handler(promote),
    JobKind.ABORT: Handler(abort),
    JobKind.ROLLOUT: Handler(roll_out, retried=False),
}


def execute(
    job: Job,
    *,
    config: Config,
    queue: Queue,
    journal: Journal,
    tools: JobTools,
    now: Callable[[], float] = time.time,
    jitter: Callable[[], float] = random.random,
) -> str:
    """Run one claimed job to its end and record the outcome in the queue; return the job's status."""
    run = JobRun(job, config, queue, journal, tools, now=now, jitter=jitter)
    problem = row_problem(job, config.apps, fleet_apps(config))
    if problem is not None:
        return run.refuse(problem)
    run.started()
    handler = HANDLERS[job.kind]
    return run.retrying(handler.act) if handler.retried else run.settle(handler.act(run))
