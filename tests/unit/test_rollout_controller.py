"""The controller's order of effects, through a small hand-written fake of the hosts (post, follow, status) and
the real queue: the batches, the failure and its revert, and resuming after a crash from each recorded step.

The fake keeps each host's tag and jobs; a job ends on the poll after it was posted, succeeded (the host now runs
its tag) or failed (the tag stays), as the host's own engine does. A crash is an exception raised at a chosen call,
which no code catches: a new Rollout over the same queue and the same hosts then stands in for the restarted worker.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from deployer.config.fleet import FleetConfig, FleetHost
from deployer.errors import DeployerError, RolloutFailed, Unauthorized, UnknownApp
from deployer.fleet.rollout import Rollout, resumable
from deployer.journal import Journal
from deployer.queue.model import Job, JobKind
from deployer.queue.queue import Queue
from support.worker_fakes import Process, make_worker

ROLLOUT_ID = "job-00000000000000aa"


class Crash(BaseException):
    """The controller dies here (SIGKILL): nothing after this call runs."""


@dataclass
class FakeHosts:
    tags: dict[str, str | None]
    fail: dict[str, str] = field(default_factory=dict)  # host -> tag whose deploy fails its health gate
    down: set[str] = field(default_factory=set)  # hosts that do not answer
    refuse: dict[str, DeployerError] = field(default_factory=dict)
    crash_at: tuple[str, str] | None = None  # (call, host): raise Crash there (after the host acted on a post)
    calls: list[tuple] = field(default_factory=list)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    counter: Any = field(default_factory=lambda: itertools.count(1))

    def _answer(self, call: str, host: str) -> None:
        if host in self.refuse:
            raise self.refuse[host]
        if host in self.down:
            raise DeployerError(f"cannot reach http://{host}:8000: ConnectTimeout")

    def deploy(self, host: str, app: str, tag: str, *, rollout: str, reason: str) -> str:
        self.calls.append(("deploy", host, tag))
        self._answer("deploy", host)
        job_id = f"job-{next(self.counter):016x}"
        self.jobs[job_id] = {"host": host, "tag": tag, "status": "running", "rollout": rollout}
        if self.crash_at == ("deploy", host):
            self.crash_at = None
            raise Crash()
        return job_id

    def job(self, host: str, job_id: str) -> dict[str, Any]:
        self.calls.append(("job", host))
        self._answer("job", host)
        job = self.jobs[job_id]
        if job["status"] == "running":
            if self.fail.get(host) == job["tag"]:
                job.update(status="failed", reason="health check did not pass before the deadline: status 500")
            else:
                job["status"] = "succeeded"
                self.tags[host] = job["tag"]
            if self.crash_at == ("job", host):
                self.crash_at = None
                raise Crash()
        return {"id": job_id, **job}

    def status(self, host: str, app: str) -> dict[str, Any]:
        self.calls.append(("status", host))
        self._answer("status", host)
        mine = [(job_id, j) for job_id, j in self.jobs.items() if j["host"] == host]
        last = {"id": mine[-1][0], **mine[-1][1]} if mine else None
        return {"app": app, "tag": self.tags[host], "last_job": last}

    def deploys(self) -> list[tuple[str, str]]:
        return [(host, tag) for call, host, *rest in self.calls if call == "deploy" for tag in rest]


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def fleet(count: int = 3, **options: Any) -> FleetConfig:
    return FleetConfig(
        apps=("web",),
        hosts=tuple(FleetHost(f"h{i}", f"http://h{i}:8000", "fleet", "secret") for i in range(1, count + 1)),
        **options,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> Queue:
    return Queue(tmp_path / "jobs.db", clock=clock)


def job(tag: str = "v2", **source: Any) -> Job:
    return Job(
        id=ROLLOUT_ID, app="web", tag=tag, kind=JobKind.ROLLOUT, actor="cli:ops", status="running", source=source
    )


def run(
    queue: Queue, hosts: FakeHosts, clock: Clock, *, config: FleetConfig | None = None, events=None, **source: Any
) -> str:
    journal = Journal([events.append] if events is not None else [])
    return Rollout(
        job(**source),
        fleet=config or fleet(),
        progress=queue.rollouts,
        journal=journal,
        hosts=hosts,
        clock=clock,
        sleep=clock.sleep,
        poll=1.0,
    ).run()


def states(queue: Queue) -> dict[str, str]:
    return {row.host: row.state for row in queue.rollouts.rollout_hosts(ROLLOUT_ID)}


# --- the order ----------------------------------------------------------------------------------------


def test_one_host_at_a_time_each_followed_to_its_end_and_checked_before_the_next(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    events: list = []
    summary = run(queue, hosts, clock, events=events)
    assert summary == "v2 is live on every host (3 deployed, 0 already on it)"
    assert hosts.calls == [
        ("status", "h1"),
        ("status", "h2"),
        ("status", "h3"),
        ("deploy", "h1", "v2"),
        ("job", "h1"),
        ("status", "h1"),
        ("deploy", "h2", "v2"),
        ("job", "h2"),
        ("status", "h2"),
        ("deploy", "h3", "v2"),
        ("job", "h3"),
        ("status", "h3"),
    ]
    assert [(e["host"], e["state"]) for e in events if e["event"] == "rollout.host"] == [
        ("h1", "posting"),
        ("h1", "deploying"),
        ("h1", "done"),
        ("h2", "posting"),
        ("h2", "deploying"),
        ("h2", "done"),
        ("h3", "posting"),
        ("h3", "deploying"),
        ("h3", "done"),
    ]
    assert all(e["rollout"] == ROLLOUT_ID for e in events)
    assert states(queue) == {"h1": "done", "h2": "done", "h3": "done"}


def test_a_batch_starts_together_and_the_bake_comes_between_batches_only(queue, clock):
    hosts = FakeHosts({f"h{i}": "v1" for i in range(1, 5)})
    events: list = []
    run(queue, hosts, clock, config=fleet(4), events=events, max_parallel=2, canary="h4", bake=30)
    deploys = [c for c in hosts.calls if c[0] == "deploy"]
    assert deploys == [("deploy", "h4", "v2"), ("deploy", "h1", "v2"), ("deploy", "h2", "v2"), ("deploy", "h3", "v2")]
    assert hosts.calls.index(("deploy", "h2", "v2")) == hosts.calls.index(("deploy", "h1", "v2")) + 1
    assert [(e["batch"], e["seconds"]) for e in events if e["event"] == "rollout.bake"] == [(0, 30), (1, 30)]
    planned = next(e for e in events if e["event"] == "rollout.planned")
    assert planned["batches"] == [["h4"], ["h1", "h2"], ["h3"]]


def test_a_host_already_on_the_tag_is_skipped(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v2", "h3": "v1"})
    summary = run(queue, hosts, clock)
    assert hosts.deploys() == [("h1", "v2"), ("h3", "v2")]
    assert states(queue) == {"h1": "done", "h3": "done", "h2": "skipped"}
    assert summary == "v2 is live on every host (2 deployed, 1 already on it)"


# --- before anything changes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "refusal",
    [
        Unauthorized("the server refused the request (401): unknown key"),
        UnknownApp("the server refused the request (404): unknown app 'web'"),
        DeployerError("cannot reach http://h3:8000: ConnectTimeout"),
    ],
)
def test_a_host_that_refuses_the_key_or_does_not_know_the_app_stops_it_before_any_deploy(queue, clock, refusal):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}, refuse={"h3": refusal})
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock)
    assert str(failed.value) == f"host h3: {refusal}; nothing was changed on any host"
    assert hosts.deploys() == []
    assert queue.rollouts.rollout_hosts(ROLLOUT_ID) == []


# --- a failure ---------------------------------------------------------------------------------------


def test_a_canary_that_fails_its_health_gate_changes_no_other_host(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}, fail={"h2": "bad"})
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock, tag="bad", canary="h2")
    assert hosts.deploys() == [("h2", "bad")]
    assert str(failed.value) == (
        "rollout of web bad stopped: host h2: its deploy job job-0000000000000001 failed: health check did not "
        "pass before the deadline: status 500; unchanged: h2 on v1; untouched: h1, h3"
    )
    assert failed.value.context["host"] == "h2"


def test_a_failure_on_the_second_batch_reverts_the_done_hosts_to_their_own_tags(queue, clock):
    hosts = FakeHosts({"h1": "v0", "h2": "v1", "h3": "v1"}, fail={"h2": "v2"})
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock)
    assert hosts.deploys() == [("h1", "v2"), ("h2", "v2"), ("h1", "v0")]
    assert hosts.tags == {"h1": "v0", "h2": "v1", "h3": "v1"}
    assert states(queue) == {"h1": "reverted", "h2": "failed", "h3": "pending"}
    assert "reverted h1 to v0" in str(failed.value) and "untouched: h3" in str(failed.value)


def test_with_no_revert_the_done_hosts_stay_on_the_tag(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}, fail={"h2": "v2"})
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock, revert=False)
    assert hosts.deploys() == [("h1", "v2"), ("h2", "v2")]
    assert hosts.tags == {"h1": "v2", "h2": "v1", "h3": "v1"}
    assert "left on v2 (--no-revert): h1" in str(failed.value)


def test_a_host_that_stops_answering_fails_after_its_timeout_and_the_done_ones_go_back(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    original = hosts.deploy

    def deploy(host: str, *args: Any, **kwargs: Any) -> str:
        if host == "h2":
            hosts.down.add("h2")  # its link is cut just as its turn comes
        return original(host, *args, **kwargs)

    hosts.deploy = deploy  # type: ignore[method-assign]
    started = clock.now
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock, config=fleet(host_timeout=20))
    assert 20 < clock.now - started <= 23
    assert "host h2: did not answer within 20 s (cannot reach http://h2:8000: ConnectTimeout)" in str(failed.value)
    assert hosts.tags == {"h1": "v1", "h2": "v1", "h3": "v1"}
    assert states(queue) == {"h1": "reverted", "h2": "failed", "h3": "pending"}


def test_a_deploy_job_that_does_not_finish_in_time_fails_the_host(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1"})
    hosts.job = lambda host, job_id: {"id": job_id, "status": "running"}  # type: ignore[method-assign]
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock, config=fleet(2, host_timeout=5))
    assert "host h1: its deploy job job-0000000000000001 did not finish within 5 s (still running)" in str(failed.value)


# --- resuming after a crash, from each recorded step --------------------------------------------------


def test_killed_after_the_post_before_its_job_was_recorded_it_follows_that_job(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}, crash_at=("deploy", "h2"))
    with pytest.raises(Crash):
        run(queue, hosts, clock)
    assert states(queue)["h2"] == "posting"
    run(queue, hosts, clock)
    assert hosts.deploys() == [("h1", "v2"), ("h2", "v2"), ("h3", "v2")]  # h2 posted once
    assert hosts.tags == {"h1": "v2", "h2": "v2", "h3": "v2"}


def test_killed_after_a_post_whose_job_then_failed_it_reports_that_failure_and_posts_nothing_again(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}, fail={"h2": "v2"}, crash_at=("deploy", "h2"))
    with pytest.raises(Crash):
        run(queue, hosts, clock)
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock)
    assert hosts.deploys() == [("h1", "v2"), ("h2", "v2"), ("h1", "v1")]
    assert "host h2: its deploy job job-0000000000000002 failed" in str(failed.value)


def test_killed_while_following_a_host_it_follows_the_recorded_job(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}, crash_at=("job", "h2"))
    with pytest.raises(Crash):
        run(queue, hosts, clock)
    assert states(queue)["h2"] == "deploying"
    events: list = []
    run(queue, hosts, clock, events=events)
    assert hosts.deploys() == [("h1", "v2"), ("h2", "v2"), ("h3", "v2")]
    assert next(e for e in events if e["event"] == "rollout.resumed")["states"] == {
        "h1": "done",
        "h2": "deploying",
        "h3": "pending",
    }


def test_killed_before_posting_when_the_host_already_runs_the_tag_it_is_done_without_a_deploy(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}, crash_at=("deploy", "h2"))
    with pytest.raises(Crash):
        run(queue, hosts, clock)
    hosts.jobs.clear()  # the host lost its record of the job, but runs the tag (an operator deployed it)
    hosts.tags["h2"] = "v2"
    run(queue, hosts, clock)
    assert hosts.deploys() == [("h1", "v2"), ("h2", "v2"), ("h3", "v2")]
    assert states(queue)["h2"] == "done"


def test_killed_during_a_revert_it_finishes_the_revert_and_fails(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}, fail={"h2": "v2"}, crash_at=("job", "h1"))
    hosts.crash_at = None
    original = hosts.deploy

    def deploy(host: str, app: str, tag: str, **kwargs: Any) -> str:
        if (host, tag) == ("h1", "v1"):
            hosts.crash_at = ("job", "h1")  # dies while following the revert
        return original(host, app, tag, **kwargs)

    hosts.deploy = deploy  # type: ignore[method-assign]
    with pytest.raises(Crash):
        run(queue, hosts, clock)
    assert states(queue) == {"h1": "reverting", "h2": "failed", "h3": "pending"}
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock)
    assert hosts.deploys() == [("h1", "v2"), ("h2", "v2"), ("h1", "v1")]
    assert states(queue) == {"h1": "reverted", "h2": "failed", "h3": "pending"}
    assert str(failed.value).startswith("rollout of web v2 stopped: host h2: its deploy job")


def test_a_second_run_of_a_finished_rollout_deploys_nothing(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    run(queue, hosts, clock)
    before = list(hosts.calls)
    run(queue, hosts, clock)
    assert hosts.calls == before


# --- the worker runs it as a job ----------------------------------------------------------------------


def controller_config(tmp_path: Path):
    from deployer import config as config_module

    secret = tmp_path / "fleet.secret"
    secret.write_text("fleet-secret-0123456789abcdef\n")
    hosts = [
        {
            "name": f"h{i}",
            "url": f"http://h{i}:8000",
            "key_id": "fleet",
            "secret_file": str(secret),
            "insecure_http": True,
        }
        for i in (1, 2, 3)
    ]
    return config_module.parse(
        {"deployer": {"state_dir": str(tmp_path / "state")}, "fleet": {"apps": ["web"], "hosts": hosts}},
        path=tmp_path / "deployer.toml",
        environ={},
    )


def claimed_rollout(queue: Queue, tag: str = "v2", app: str = "web") -> Job:
    queue.jobs.submit_manual(app=app, tag=tag, actor="cli:ops", kind=JobKind.ROLLOUT, source={"revert": True})
    claim = queue.jobs.claim()
    assert claim is not None
    return claim.job


def test_the_worker_runs_a_rollout_job_and_copies_its_progress_into_the_jobs_steps(tmp_path, queue):
    from deployer.worker.child import JobSteps
    from deployer.worker.run import JobTools, execute

    config = controller_config(tmp_path)
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    job_ = claimed_rollout(queue)
    events: list = []
    journal = Journal([events.append, JobSteps(queue, job_.id)])
    status = execute(
        job_, config=config, queue=queue, journal=journal, tools=JobTools(engine=lambda _: None, fleet=lambda: hosts)
    )  # type: ignore[arg-type, return-value]
    assert status == "succeeded"
    assert queue.jobs.get(job_.id).reason == "v2 is live on every host (3 deployed, 0 already on it)"
    done = [
        s["detail"]["host"]
        for s in queue.jobs.steps(job_.id)
        if s["name"] == "rollout.host" and s["detail"]["state"] == "done"
    ]
    assert done == ["h1", "h2", "h3"]


def test_a_failed_rollout_fails_its_job_with_the_hosts_reason(tmp_path, queue):
    from deployer.worker.run import JobTools, execute

    config = controller_config(tmp_path)
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}, fail={"h1": "v2"})
    job_ = claimed_rollout(queue)
    status = execute(
        job_,
        config=config,
        queue=queue,
        journal=Journal([]),
        tools=JobTools(engine=lambda _: None, fleet=lambda: hosts),
    )  # type: ignore[arg-type, return-value]
    assert status == "failed"
    assert queue.jobs.get(job_.id).reason.startswith("rollout of web v2 stopped: host h1: its deploy job")


def test_a_rollout_row_of_an_app_that_is_not_a_fleet_app_is_refused(tmp_path, queue):
    from deployer.worker.run import JobTools, execute

    config = controller_config(tmp_path)
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    job_ = claimed_rollout(queue, app="api")
    status = execute(
        job_,
        config=config,
        queue=queue,
        journal=Journal([]),
        tools=JobTools(engine=lambda _: None, fleet=lambda: hosts),
    )  # type: ignore[arg-type, return-value]
    assert status == "failed"
    assert "app 'api' is not a fleet app ([fleet] apps)" in queue.jobs.get(job_.id).reason
    assert hosts.calls == []


def test_a_rollout_job_outlives_the_job_timeout_and_a_dead_one_repairs_nothing_here(tmp_path, clock):
    config = controller_config(tmp_path)  # job_timeout: the default 1800 s
    queue = Queue.for_state_dir(config.settings.state_dir, clock=clock)
    queue.jobs.submit_manual(app="web", tag="v2", actor="cli:ops", kind=JobKind.ROLLOUT, source={})
    process, reconciled, events = Process(code=None), [], []
    worker = make_worker(config, queue, events, clock, lambda job: process, reconciled)
    worker.start()
    worker.poll()
    clock.now += 4000
    worker.poll()
    assert queue.jobs.jobs()[0].status == "running" and not process.killed
    process.code = -9  # the controller's job process died (its hosts' deploys go on without it)
    worker.poll()
    assert queue.jobs.jobs()[0].status == "failed"
    assert reconciled == [None]  # at start only, over no app: a fleet app runs nowhere here
    worker.lock.release()


# --- hosts that answer what they should not ----------------------------------------------------------


def test_an_answer_of_the_wrong_shape_fails_that_host_and_the_done_hosts_are_reverted(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    original = hosts.job

    def job(host: str, job_id: str) -> Any:
        return [] if host == "h2" else original(host, job_id)  # `[]` has no .get: an AttributeError in the step

    hosts.job = job  # type: ignore[method-assign]
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock)
    assert states(queue) == {"h1": "reverted", "h2": "failed", "h3": "pending"}
    assert hosts.tags["h1"] == "v1"
    assert "host h2: its answer could not be handled (AttributeError: " in str(failed.value)
    assert "reverted h1 to v1" in str(failed.value)


def test_a_deploy_step_that_raises_anything_fails_the_host_without_killing_the_rollout(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    original = hosts.deploy

    def deploy(host: str, *args: Any, **kwargs: Any) -> str:
        if host == "h2":
            raise KeyError("job")
        return original(host, *args, **kwargs)

    hosts.deploy = deploy  # type: ignore[method-assign]
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock)
    assert states(queue) == {"h1": "reverted", "h2": "failed", "h3": "pending"}
    assert "host h2: its answer could not be handled (KeyError: 'job')" in str(failed.value)


def test_a_preflight_answer_that_raises_stops_the_rollout_before_any_deploy(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    hosts.status = lambda host, app: "v1"  # type: ignore[method-assign, assignment, return-value]
    with pytest.raises(RolloutFailed, match="nothing was changed on any host"):
        run(queue, hosts, clock)
    assert hosts.deploys() == []


def test_each_rollout_over_plain_http_records_a_warning_naming_the_hosts(queue, clock):
    events: list = []
    plain = fleet()
    config_ = FleetConfig(
        apps=plain.apps,
        hosts=(
            plain.hosts[0],
            FleetHost("h2", "http://10.0.0.2:8000", "fleet", "secret", insecure_http=True),
            plain.hosts[2],
        ),
    )
    run(queue, FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}), clock, config=config_, events=events)
    assert [e["hosts"] for e in events if e["event"] == "rollout.insecure"] == [["h2"]]


# --- any number of controller stops; giving up (the deadline, an abort) ----------------------------------------


class Killed(BaseException):
    """The controller's process is SIGKILLed here: nothing after this point runs."""


@dataclass
class KillPoints:
    """Every call the rollout makes to its hosts and to its record is two points, just before and just after it;
    the `at`-th point (counted from 1) raises Killed, as does the named point `where` (call, host, "before"|"after")."""

    at: int | None = None
    where: tuple[str, str, str] | None = None
    seen: int = 0

    def point(self, call: str, host: str, phase: str) -> None:
        self.seen += 1
        if self.seen == self.at or (call, host, phase) == self.where:
            self.at = self.where = None
            raise Killed()

    def wrap(self, call: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            host = next((a for a in args if isinstance(a, str) and a.startswith("h")), "-")
            self.point(call, host, "before")
            result = fn(*args, **kwargs)
            self.point(call, host, "after")
            return result

        return wrapped


@dataclass
class KillableHosts:
    hosts: FakeHosts
    points: KillPoints

    def deploy(self, host: str, app: str, tag: str, **kwargs: Any) -> str:
        return self.points.wrap("deploy", self.hosts.deploy)(host, app, tag, **kwargs)

    def job(self, host: str, job_id: str) -> Any:
        return self.points.wrap("job", self.hosts.job)(host, job_id)

    def status(self, host: str, app: str) -> Any:
        return self.points.wrap("status", self.hosts.status)(host, app)


@dataclass
class KillableProgress:
    queue: Queue
    points: KillPoints

    def plan_rollout(self, rollout_id: str, steps: list) -> list:
        return self.points.wrap("plan", self.queue.rollouts.plan_rollout)(rollout_id, steps)

    def rollout_hosts(self, rollout_id: str) -> list:
        return self.queue.rollouts.rollout_hosts(rollout_id)

    def set_rollout_host(self, rollout_id: str, host: str, state: str, **kwargs: Any) -> Any:
        return self.points.wrap("set", self.queue.rollouts.set_rollout_host)(rollout_id, host, state, **kwargs)

    def abort_of(self, rollout_id: str) -> Any:
        return self.queue.rollouts.abort_of(rollout_id)


def killable_run(
    queue: Queue,
    hosts: FakeHosts,
    clock: Clock,
    points: KillPoints,
    job_: Job | None = None,
    config: FleetConfig | None = None,
) -> str:
    return Rollout(
        job_ or job(),
        fleet=config or fleet(),
        progress=KillableProgress(queue, points),
        journal=Journal([]),
        hosts=KillableHosts(hosts, points),
        clock=clock,
        sleep=clock.sleep,
        poll=1.0,
    ).run()


def points_of_a_whole_rollout(tmp_path: Path) -> int:
    points = KillPoints()
    killable_run(
        Queue(tmp_path / "count.db", clock=Clock()), FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"}), Clock(), points
    )
    return points.seen


def test_killed_at_any_point_a_new_run_ends_with_every_host_on_the_tag_and_one_deploy_each(tmp_path):
    total = points_of_a_whole_rollout(tmp_path)
    assert total > 30  # plan, every status, post, follow and record: each before and after
    for at in range(1, total + 1):
        clock = Clock()
        queue = Queue(tmp_path / f"at-{at}.db", clock=clock)
        hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
        with pytest.raises(Killed):
            killable_run(queue, hosts, clock, KillPoints(at=at))
        summary = killable_run(queue, hosts, clock, KillPoints())
        assert summary.startswith("v2 is live on every host"), at
        assert hosts.tags == {"h1": "v2", "h2": "v2", "h3": "v2"}, at
        assert sorted(hosts.deploys()) == [("h1", "v2"), ("h2", "v2"), ("h3", "v2")], at


def test_five_controller_stops_in_a_row_are_resumed_by_the_worker_and_the_rollout_succeeds(tmp_path, clock):
    config = controller_config(tmp_path)
    queue = Queue.for_state_dir(config.settings.state_dir, clock=clock)
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    queue.jobs.submit_manual(app="web", tag="v2", actor="cli:ops", kind=JobKind.ROLLOUT, source={})
    draw = random.Random(28)
    total = points_of_a_whole_rollout(tmp_path)
    for stop in range(1, 6):
        claim = queue.jobs.claim()
        assert claim is not None and claim.job.attempts == stop
        with pytest.raises(Killed):
            killable_run(queue, hosts, clock, KillPoints(at=draw.randint(1, total // 5)), claim.job, config.fleet)
        clock.now += draw.uniform(0.5, 4.0)
        [recovered] = queue.jobs.recover(max_attempts=3, rollout=resumable(config.fleet))
        assert recovered.status == "queued", recovered.reason
    claim = queue.jobs.claim()
    assert claim is not None and claim.job.attempts == 6
    killable_run(queue, hosts, clock, KillPoints(), claim.job, config.fleet)
    assert hosts.tags == {"h1": "v2", "h2": "v2", "h3": "v2"}
    assert sorted(hosts.deploys()) == [("h1", "v2"), ("h2", "v2"), ("h3", "v2")]


def test_past_its_deadline_a_resumed_rollout_reverts_the_done_hosts_and_leaves_the_rest(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    with pytest.raises(Killed):  # the controller goes down for good just before h3's turn
        killable_run(queue, hosts, clock, KillPoints(where=("deploy", "h3", "before")))
    clock.now = job().created_at + fleet().deadline + 1
    with pytest.raises(RolloutFailed) as failed:
        killable_run(queue, hosts, clock, KillPoints())
    assert hosts.tags == {"h1": "v1", "h2": "v1", "h3": "v1"}
    assert hosts.deploys() == [("h1", "v2"), ("h2", "v2"), ("h1", "v1"), ("h2", "v1")]
    assert states(queue) == {"h1": "reverted", "h2": "reverted", "h3": "pending"}
    assert str(failed.value).startswith("rollout of web v2 stopped: its deadline passed (21600 s after it was queued)")
    assert "untouched: h3" in str(failed.value)


def test_an_abort_reverts_h1_and_h2_and_leaves_h3_untouched(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    with pytest.raises(Killed):
        killable_run(queue, hosts, clock, KillPoints(where=("deploy", "h3", "before")))
    assert queue.rollouts.request_abort(ROLLOUT_ID, actor="cli:ops", reason="h3 is in maintenance")
    assert not queue.rollouts.request_abort(ROLLOUT_ID, actor="cli:other")  # the first one stands
    events: list = []
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock, events=events)
    assert hosts.tags == {"h1": "v1", "h2": "v1", "h3": "v1"}
    assert ("h3", "v2") not in hosts.deploys()
    assert states(queue) == {"h1": "reverted", "h2": "reverted", "h3": "pending"}
    assert str(failed.value).startswith("rollout of web v2 stopped: aborted by cli:ops (h3 is in maintenance)")
    assert [e["reason"] for e in events if e["event"] == "rollout.stopping"] == [
        "aborted by cli:ops (h3 is in maintenance)"
    ]


def test_an_abort_during_a_deploy_follows_that_deploy_to_its_end_then_reverts_it(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    original = hosts.deploy

    def deploy(host: str, app: str, tag: str, **kwargs: Any) -> str:
        if (host, tag) == ("h2", "v2"):
            queue.rollouts.request_abort(ROLLOUT_ID, actor="cli:ops")
        return original(host, app, tag, **kwargs)

    hosts.deploy = deploy  # type: ignore[method-assign]
    with pytest.raises(RolloutFailed, match="aborted by cli:ops"):
        run(queue, hosts, clock)
    assert hosts.tags == {"h1": "v1", "h2": "v1", "h3": "v1"}
    assert states(queue) == {"h1": "reverted", "h2": "reverted", "h3": "pending"}


def test_an_abort_with_no_revert_leaves_the_done_hosts_on_the_tag_as_asked(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    with pytest.raises(Killed):
        killable_run(queue, hosts, clock, KillPoints(where=("deploy", "h3", "before")), job(revert=False))
    queue.rollouts.request_abort(ROLLOUT_ID, actor="cli:ops")
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock, revert=False)
    assert hosts.tags == {"h1": "v2", "h2": "v2", "h3": "v1"}
    assert "left on v2 (--no-revert): h1, h2" in str(failed.value)


def test_an_abort_before_the_rollout_began_changes_nothing(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    queue.rollouts.request_abort(ROLLOUT_ID, actor="cli:ops")
    with pytest.raises(RolloutFailed, match="stopped before it began: aborted by cli:ops; nothing was changed"):
        run(queue, hosts, clock)
    assert hosts.calls == []


def test_a_posted_host_whose_status_cannot_be_read_is_not_posted_again_but_fails_and_the_rest_revert(queue, clock):
    hosts = FakeHosts({"h1": "v1", "h2": "v1", "h3": "v1"})
    with pytest.raises(Killed):  # h2's POST arrived; its job id was never recorded
        killable_run(queue, hosts, clock, KillPoints(where=("deploy", "h2", "after")))
    hosts.down.add("h2")
    with pytest.raises(RolloutFailed) as failed:
        run(queue, hosts, clock)
    assert [d for d in hosts.deploys() if d[0] == "h2"] == [("h2", "v2")]  # once, never on a guess
    assert "host h2: could not tell whether its deploy arrived" in str(failed.value)
    assert hosts.tags["h1"] == "v1"


def test_a_starting_worker_queues_again_a_rollout_its_controller_stopped_under_many_times(tmp_path, clock):
    config = controller_config(tmp_path)
    queue = Queue.for_state_dir(config.settings.state_dir, clock=clock)
    queue.jobs.submit_manual(app="web", tag="v2", actor="cli:ops", kind=JobKind.ROLLOUT, source={})
    queue.jobs.submit_manual(app="api", tag="v2", actor="cli:ops", kind=JobKind.REDEPLOY, source={})
    for _ in range(4):  # four stops: each claim is a run cut off
        for claimed in (queue.jobs.claim(), queue.jobs.claim()):
            assert claimed is not None
        queue.jobs.recover(max_attempts=99)
    for claimed in (queue.jobs.claim(), queue.jobs.claim()):
        assert claimed is not None
    events: list = []
    worker = make_worker(config, queue, events, clock, lambda job: Process(code=None), [])
    worker.start()
    worker.lock.release()
    statuses = {j.kind: (j.status, j.attempts) for j in queue.jobs.jobs()}
    assert statuses == {JobKind.ROLLOUT: ("queued", 5), JobKind.REDEPLOY: ("failed", 5)}
    assert [e["event"] for e in events if e["event"] in ("job.requeued", "job.failed")] == [
        "job.requeued",
        "job.failed",
    ]
