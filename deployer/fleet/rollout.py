"""A rollout across the fleet, run by the controller's worker as a job: batch by batch, each host its own swap.

    preflight   GET /apps/<app> of every host: each answers, knows the app and the key; the tags it runs
    plan        the batches (deployer/plan/rollout.py), recorded once in the queue's rollout_hosts
    each batch  POST /deploy to each host (the rollout's id in the body), follow GET /jobs/<id> to the end,
                check GET /apps/<app> says the tag; then bake, then the next batch
    a failure   stop; unless revert is off, deploy back the tag each done host had; raise RolloutFailed
    giving up   its deadline ([fleet] deadline, from when it was queued) passed, or an operator aborted it
                (`deployer rollout APP --abort`, recorded in the queue): no host is started again, the ones
                deploying are followed to their end, then it stops as for a failure

A host step that raises anything unexpected (a bug, an answer no check foresaw) is that host's failure like any
other: the stop and the revert run, and the rollout fails naming it, rather than the process dying with a host
left on the tag.

Every step is recorded before it is taken and after: a host is `posting` before its POST and `deploying`
with the host's job id after it, so a controller killed at any point and started again follows that job
instead of posting again, and a host already on the tag is `done` without a second deploy. There is no
consensus here: while the controller is down each host serves what it has, and the rollout waits. A host found
`posting` whose status cannot be read is never posted again on a guess: it is asked until its host_timeout, then
fails (so the fleet is reverted rather than a host given two jobs for one step). And should a step be posted
twice all the same, the host answers the second POST with the first one's job: the rollout id, app and tag are
the step's idempotency key there (`JobStore.submit_rollout_step`).

A controller that stops is not the rollout's failure: the worker queues it again after any number of stops
(`deployer.plan.claims.decide_recovery`), for as long as `resumable` says, and each run resumes from the record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from deployer.config.fleet import FleetConfig, check_canary, check_max_parallel
from deployer.errors import DeployerError, RequestRejected, RolloutFailed
from deployer.journal import Journal
from deployer.plan import rollout as plan
from deployer.plan.claims import Resumable
from deployer.plan.printable import printable
from deployer.queue.model import FINISHED, Job, JobStatus, RolloutAbort, RolloutHost

POLL_SECONDS = 1.0


class Hosts(Protocol):
    """What the controller asks of a host, by its name (deployer/fleet/client.py over HTTP; a fake in tests)."""

    def deploy(self, host: str, app: str, tag: str, *, rollout: str, reason: str) -> str: ...
    def job(self, host: str, job_id: str) -> Mapping[str, Any]: ...
    def status(self, host: str, app: str) -> Mapping[str, Any]: ...


class Progress(Protocol):
    """Where each host stands, durably: the queue's rollout_hosts table."""

    def plan_rollout(self, rollout_id: str, steps: list[RolloutHost]) -> list[RolloutHost]: ...
    def rollout_hosts(self, rollout_id: str) -> list[RolloutHost]: ...
    def set_rollout_host(
        self,
        rollout_id: str,
        host: str,
        state: str,
        *,
        host_job: str | None = None,
        reason: str | None = None,
        failure: str | None = None,
    ) -> RolloutHost: ...
    def abort_of(self, rollout_id: str) -> RolloutAbort | None: ...


def resumable(fleet: FleetConfig) -> Resumable:
    """How long a stopped rollout is queued again: up to its deadline, and twice a host's timeout more, the time a
    revert takes (its POSTs, then its deploys, each within host_timeout), so that giving up survives a stop too."""
    return Resumable(deadline=fleet.deadline, grace=2 * fleet.host_timeout)


def options_of(source: Mapping[str, Any], fleet: FleetConfig) -> plan.Options:
    """The options a rollout job carries, checked again: the queue file is writable by the receiver's group."""
    revert = source.get("revert", True)
    bake = source.get("bake", fleet.bake)
    if not isinstance(revert, bool) or isinstance(bake, bool) or not isinstance(bake, (int, float)) or bake < 0:
        raise RolloutFailed("the rollout job's options are not valid (revert, bake)")
    return plan.Options(
        max_parallel=check_max_parallel(
            source.get("max_parallel", fleet.max_parallel), len(fleet.hosts), path=None, key="max_parallel"
        ),
        canary=check_canary(source.get("canary", fleet.canary), fleet.host_names, path=None, key="canary"),
        bake=float(bake),
        revert=revert,
    )


@dataclass
class Rollout:
    job: Job  # the controller's job: its id is the rollout's id
    fleet: FleetConfig
    progress: Progress  # the queue's rollout store
    journal: Journal
    hosts: Hosts
    clock: Callable[[], float] = time.time  # the queue's clock: `since` is recorded with it
    sleep: Callable[[float], None] = time.sleep
    poll: float = POLL_SECONDS

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def tag(self) -> str:
        assert self.job.tag is not None
        return self.job.tag

    def run(self) -> str:
        """Roll the tag out; return what happened. Raises RolloutFailed naming the host and the reason."""
        options = options_of(self.job.source, self.fleet)
        if self.fleet.insecure_hosts:
            self._record("rollout.insecure", hosts=list(self.fleet.insecure_hosts))
        rows = self.progress.rollout_hosts(self.id)
        if rows:
            self._record("rollout.resumed", states={r.host: r.state for r in rows})
        elif (why := self._why_stop()) is not None:
            raise RolloutFailed(
                f"rollout of {self.job.app} {self.tag} stopped before it began: {why}; nothing was changed on any host",
                app=self.job.app,
                tag=self.tag,
            )
        else:
            current = self._preflight()
            steps = plan.plan(self.fleet.host_names, current, self.tag, options)
            rows = self.progress.plan_rollout(
                self.id, [RolloutHost(s.host, s.batch, s.previous, s.state) for s in steps]
            )
            self._record(
                "rollout.planned", batches=_batches(rows), skipped=[r.host for r in rows if r.state == plan.SKIPPED]
            )
        if (why := self._why_stop()) is not None:
            return self._give_up(why, options)
        if any(r.state in (plan.FAILED, plan.REVERTING, plan.REVERTED, plan.REVERT_FAILED) for r in rows):
            return self._stop(options)  # it had failed before the controller stopped: finish the stop
        numbers = sorted({r.batch for r in rows if r.batch >= 0})
        for n in numbers:
            batch = [r for r in self.progress.rollout_hosts(self.id) if r.batch == n]
            if all(r.state == plan.DONE for r in batch):
                continue
            if (why := self._why_stop()) is not None:
                return self._give_up(why, options)
            self._deploy(batch)
            if (why := self._why_stop()) is not None:
                return self._give_up(why, options)
            if any(r.state == plan.FAILED for r in self.progress.rollout_hosts(self.id) if r.batch == n):
                return self._stop(options)
            if options.bake and n != numbers[-1]:
                self._record("rollout.bake", seconds=options.bake, batch=n)
                if (why := self._bake(options.bake)) is not None:
                    return self._give_up(why, options)
        done = [r.host for r in self.progress.rollout_hosts(self.id) if r.state == plan.DONE]
        return f"{self.tag} is live on every host ({len(done)} deployed, {len(rows) - len(done)} already on it)"

    def _why_stop(self) -> str | None:
        """Why the rollout must give up now (an operator's abort, its deadline), or None to go on."""
        abort = self.progress.abort_of(self.id)
        if abort is not None:
            return f"aborted by {abort.actor}" + (f" ({printable(abort.reason, 200)})" if abort.reason else "")
        if self.clock() > self.job.created_at + self.fleet.deadline:
            return f"its deadline passed ({self.fleet.deadline:g} s after it was queued)"
        return None

    def _bake(self, seconds: float) -> str | None:
        """Wait `seconds`, a poll at a time, so an abort or the deadline is heard during a long bake."""
        end = self.clock() + seconds
        while (left := end - self.clock()) > 0:
            if (why := self._why_stop()) is not None:
                return why
            self.sleep(min(self.poll, left))
        return None

    # --- before anything changes -------------------------------------------------------------------

    def _preflight(self) -> dict[str, str | None]:
        """Every host answers, takes the key and knows the app: else nothing is deployed anywhere."""
        current = {}
        for name in self.fleet.host_names:
            try:
                current[name] = self.hosts.status(name, self.job.app).get("tag")
            except DeployerError as exc:
                raise RolloutFailed(f"host {name}: {exc}; nothing was changed on any host", host=name) from None
            except Exception as exc:
                raise RolloutFailed(
                    f"host {name}: {unexpected(exc)}; nothing was changed on any host", host=name
                ) from None
        return current

    # --- one batch -----------------------------------------------------------------------------------

    def _deploy(self, batch: list[RolloutHost]) -> None:
        """Start the batch's hosts together, then follow each to its end (or its deadline)."""
        for row in batch:
            if row.state in (plan.PENDING, plan.POSTING):
                self._start(row, self.tag, plan.DEPLOYING)
        while True:
            waiting = [
                r
                for r in self.progress.rollout_hosts(self.id)
                if r.batch == batch[0].batch and r.state == plan.DEPLOYING
            ]
            if not waiting or self._why_stop() is not None:  # giving up follows the deploying hosts itself
                return
            for row in waiting:
                self._check(row, self.tag, done=plan.DONE, failed=plan.FAILED)
            if any(r.state == plan.DEPLOYING for r in self.progress.rollout_hosts(self.id)):
                self.sleep(self.poll)

    def _start(self, row: RolloutHost, tag: str, following: str) -> None:
        """POST /deploy of `tag`, recorded before (`posting`, or `reverting` without a job) and after (with its job).

        A row found `posting` was cut off around its POST: the host says whether that POST arrived (its last job
        carries this rollout's id), or whether it already runs the tag."""
        failed = plan.REVERT_FAILED if following == plan.REVERTING else plan.FAILED
        done = plan.REVERTED if following == plan.REVERTING else plan.DONE
        before = plan.POSTING if following == plan.DEPLOYING else plan.REVERTING
        if row.state == before:
            status = self._posted_status(row, tag, failed)
            if status is None:
                return
            last = status.get("last_job") or {}
            if last.get("rollout") == self.id and last.get("tag") == tag:  # followed to its end, whatever it is
                self._set(row.host, following, host_job=last.get("id"), tag=tag)
                return
            if status.get("tag") == tag:
                self._set(row.host, done, tag=tag, reason="already on the tag")
                return
        self._set(row.host, before, tag=tag)
        reason = f"rollout {self.id}" + (" (revert)" if following == plan.REVERTING else "")
        deadline = self.clock() + self.fleet.host_timeout
        while True:
            try:
                job_id = self.hosts.deploy(row.host, self.job.app, tag, rollout=self.id, reason=reason)
                break
            except RequestRejected as exc:
                self._set(row.host, failed, tag=tag, reason=f"refused the deploy: {exc}")
                return
            except DeployerError as exc:
                if self.clock() > deadline:
                    self._set(row.host, failed, tag=tag, reason=self._silent(exc))
                    return
                self.sleep(self.poll)
            except Exception as exc:
                self._set(row.host, failed, tag=tag, reason=unexpected(exc))
                return
        self._set(row.host, following, host_job=job_id, tag=tag)

    def _posted_status(self, row: RolloutHost, tag: str, failed: str) -> Mapping[str, Any] | None:
        """The status of a host whose POST may have arrived: asked until its host_timeout, never guessed (a guess
        could post a second deploy for one step). None when the host failed instead."""
        deadline = self.clock() + self.fleet.host_timeout
        while True:
            try:
                return self.hosts.status(row.host, self.job.app)
            except RequestRejected as exc:
                self._set(row.host, failed, tag=tag, reason=f"refused: {exc}")
                return None
            except DeployerError as exc:
                if self.clock() > deadline:
                    self._set(
                        row.host,
                        failed,
                        tag=tag,
                        reason=f"could not tell whether its deploy arrived: {self._silent(exc)}",
                    )
                    return None
                self.sleep(self.poll)
            except Exception as exc:
                self._set(row.host, failed, tag=tag, reason=unexpected(exc))
                return None

    def _check(self, row: RolloutHost, tag: str, *, done: str, failed: str) -> None:
        """One look at a host's job: still running, ended (then its tag is checked), or past its deadline."""
        late = self.clock() - row.since > self.fleet.host_timeout
        try:
            job = self.hosts.job(row.host, str(row.host_job))
            if job.get("status") in FINISHED:
                self._ended(row, job, tag, done=done, failed=failed)
            elif late:
                self._set(
                    row.host,
                    failed,
                    host_job=row.host_job,
                    tag=tag,
                    reason=f"its deploy job {row.host_job} did not finish within {self.fleet.host_timeout:g} s "
                    f"(still {job.get('status')})",
                )
        except RequestRejected as exc:
            self._set(row.host, failed, host_job=row.host_job, tag=tag, reason=f"refused: {exc}")
        except DeployerError as exc:
            if late:
                self._set(row.host, failed, host_job=row.host_job, tag=tag, reason=self._silent(exc))
        except Exception as exc:
            self._set(row.host, failed, host_job=row.host_job, tag=tag, reason=unexpected(exc))

    def _ended(self, row: RolloutHost, job: Mapping[str, Any], tag: str, *, done: str, failed: str) -> None:
        if job.get("status") not in (JobStatus.SUCCEEDED, JobStatus.SKIPPED):
            self._set(
                row.host,
                failed,
                host_job=row.host_job,
                tag=tag,
                reason=f"its deploy job {row.host_job} {job.get('status')}: {job.get('reason') or '?'}",
            )
            return
        live = self.hosts.status(row.host, self.job.app).get("tag")
        if live != tag:
            self._set(
                row.host,
                failed,
                host_job=row.host_job,
                tag=tag,
                reason=f"its deploy job {row.host_job} ended, but it runs {live}",
            )
            return
        self._set(row.host, done, host_job=row.host_job, tag=tag)

    def _silent(self, exc: DeployerError) -> str:
        return f"did not answer within {self.fleet.host_timeout:g} s ({exc})"

    # --- giving up ---

    def _give_up(self, why: str, options: plan.Options) -> str:
        """No host is started again: a host cut off around its POST is settled, the hosts deploying are followed to
        their end (each within its host_timeout), then the rollout stops as for a failure, reverting the done ones."""
        self._record("rollout.stopping", reason=why, revert=options.revert)
        for row in self.progress.rollout_hosts(self.id):
            if row.state == plan.POSTING:
                status = self._posted_status(row, self.tag, plan.FAILED)
                if status is None:
                    continue
                last = status.get("last_job") or {}
                if last.get("rollout") == self.id and last.get("tag") == self.tag:
                    self._set(row.host, plan.DEPLOYING, host_job=last.get("id"), tag=self.tag)
                elif status.get("tag") == self.tag:
                    self._set(row.host, plan.DONE, tag=self.tag, reason="already on the tag")
                else:
                    self._set(row.host, plan.PENDING, tag=self.tag, reason="not started: the rollout stopped")
        while any(r.state == plan.DEPLOYING for r in self.progress.rollout_hosts(self.id)):
            for row in self.progress.rollout_hosts(self.id):
                if row.state == plan.DEPLOYING:
                    self._check(row, self.tag, done=plan.DONE, failed=plan.FAILED)
            if any(r.state == plan.DEPLOYING for r in self.progress.rollout_hosts(self.id)):
                self.sleep(self.poll)
        return self._stop(options, why)

    # --- a failure -----------------------------------------------------------------------------------

    def _stop(self, options: plan.Options, why: str | None = None) -> str:
        """The hosts done go back (unless revert is off), the rest stay; then the rollout fails, naming why."""
        rows = self.progress.rollout_hosts(self.id)
        failed = [r for r in rows if r.state == plan.FAILED]
        if options.revert:
            current = {}
            for row in failed:
                try:
                    current[row.host] = self.hosts.status(row.host, self.job.app).get("tag")
                except Exception:  # it does not answer, or not sensibly: left as it is
                    current[row.host] = None
            steps = [plan.HostStep(r.host, r.batch, r.previous, r.state) for r in rows]
            back = {host for host, _ in plan.reverts(steps, current)}
            for row in rows:
                if row.host in back and not (row.state == plan.REVERTING and row.host_job):
                    self._start(row, str(row.previous), plan.REVERTING)
            while any(r.state == plan.REVERTING for r in self.progress.rollout_hosts(self.id)):
                for row in self.progress.rollout_hosts(self.id):
                    if row.state == plan.REVERTING:
                        self._check(row, str(row.previous), done=plan.REVERTED, failed=plan.REVERT_FAILED)
                if any(r.state == plan.REVERTING for r in self.progress.rollout_hosts(self.id)):
                    self.sleep(self.poll)
        rows = self.progress.rollout_hosts(self.id)
        failed = [r for r in rows if r.failure]
        raise RolloutFailed(
            self._failure(rows, options, why), app=self.job.app, tag=self.tag, host=failed[0].host if failed else None
        )

    def _failure(self, rows: list[RolloutHost], options: plan.Options, why: str | None = None) -> str:
        failures = [f"host {r.host}: {r.failure}" for r in rows if r.failure]
        parts = ([why] if why else []) + failures or ["a host failed"]
        reverted = [f"{r.host} to {r.previous}" for r in rows if r.state == plan.REVERTED]
        not_reverted = [f"{r.host} ({r.reason})" for r in rows if r.state == plan.REVERT_FAILED]
        kept_failed = [f"{r.host} on {r.previous}" for r in rows if r.state == plan.FAILED]
        kept = [r.host for r in rows if r.state == plan.DONE]
        untouched = [r.host for r in rows if r.state in (plan.PENDING, plan.SKIPPED)]
        if reverted:
            parts.append("reverted " + ", ".join(reverted))
        if not_reverted:
            parts.append("could not revert " + ", ".join(not_reverted))
        if kept_failed and options.revert:
            parts.append("unchanged: " + ", ".join(kept_failed))
        if kept:
            parts.append(
                f"left on {self.tag}" + (" (--no-revert)" if not options.revert else "") + ": " + ", ".join(kept)
            )
        if untouched:
            parts.append("untouched: " + ", ".join(untouched))
        return f"rollout of {self.job.app} {self.tag} stopped: " + "; ".join(parts)

    # --- the record --------------------------------------------------------------------------------

    def _set(self, host: str, state: str, *, tag: str, host_job: str | None = None, reason: str | None = None) -> None:
        self.progress.set_rollout_host(
            self.id, host, state, host_job=host_job, reason=reason, failure=reason if state == plan.FAILED else None
        )
        outcome = {plan.DONE: "ok", plan.REVERTED: "ok", plan.FAILED: "failed", plan.REVERT_FAILED: "failed"}
        self._record(
            "rollout.host",
            host=host,
            state=state,
            tag=tag,
            host_job=host_job,
            reason=reason,
            outcome=outcome.get(state),
        )

    def _record(self, event: str, **fields: Any) -> None:
        self.journal.record(
            event,
            job=self.id,
            rollout=self.id,
            app=self.job.app,
            actor=self.job.actor,
            **{k: v for k, v in fields.items() if v is not None},
        )


def unexpected(exc: Exception) -> str:
    """The reason a host failed on an exception no step expected: its type and the start of its text."""
    return f"its answer could not be handled ({type(exc).__name__}: {printable(exc, 200)})"


def _batches(rows: list[RolloutHost]) -> list[list[str]]:
    numbers = sorted({r.batch for r in rows if r.batch >= 0})
    return [[r.host for r in rows if r.batch == n] for n in numbers]
