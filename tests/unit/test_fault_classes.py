"""The host's faults, without the host: how adapters classify errors, the backoff's numbers, and the order of
effects in the worker and the receiver when a fault strikes, through small hand-written fakes.

The real faults (a full tmpfs, a stopped dockerd, a stopped registry) are in tests/integration/test_faults.py.
"""

import errno
import sqlite3

import docker.errors
import pytest
import requests

from deployer.adapters.docker_host import DockerHost, pull_error
from deployer.errors import (
    AuditError,
    DiskFull,
    DockerUnavailable,
    HealthCheckFailed,
    HookFailed,
    PullError,
    RegistryUnavailable,
    StateError,
)
from deployer.journal import Journal
from deployer.plan.containers import Release
from deployer.queue.database import state_error
from deployer.queue.jobs import JobStore
from deployer.queue.model import Job
from deployer.queue.queue import Queue
from deployer.receiver.web import create_app
from deployer.worker import loop as worker_module
from deployer.worker.faults import fault_lines
from deployer.worker.loop import Worker
from deployer.worker.run import wait_seconds
from support.receiver import deliver, read_payload
from support.worker_fakes import FakeEngine, Process, claimed, run_job

RELEASE = Release(tag="v2", image="127.0.0.1:5001/web")


def api_error(status, explanation, kind=docker.errors.APIError):
    response = requests.Response()
    response.status_code = status
    return kind(f"{status} Server Error", response=response, explanation=explanation)


# --- the classification: decided where each adapter maps the library error ---------------------------


def test_a_registry_that_refuses_the_connection_is_transient():
    exc = pull_error(
        api_error(500, 'Get "http://127.0.0.1:5001/v2/": dial tcp 127.0.0.1:5001: connect: connection refused'), RELEASE
    )
    assert (type(exc), exc.transient, exc.fault) == (RegistryUnavailable, True, "registry")


def test_a_registry_that_times_out_or_answers_503_is_transient():
    for explanation in (
        'Get "http://r/v2/": net/http: request canceled while waiting for connection '
        "(Client.Timeout exceeded while awaiting headers)",
        "received unexpected HTTP status: 503",
    ):
        assert pull_error(api_error(500, explanation), RELEASE).transient


def test_an_unknown_tag_or_refused_credentials_fail_at_once():
    unknown = pull_error(
        api_error(404, "manifest for 127.0.0.1:5001/web:v2 not found: manifest unknown", docker.errors.NotFound),
        RELEASE,
    )
    denied = pull_error(api_error(500, "unauthorized: authentication required"), RELEASE)
    assert [(type(e), e.transient) for e in (unknown, denied)] == [(PullError, False), (PullError, False)]


def test_a_daemon_that_does_not_answer_is_transient(tmp_path):
    with pytest.raises(DockerUnavailable) as caught:
        DockerHost(f"unix://{tmp_path}/no-daemon.sock", timeout=2).ping()
    assert (caught.value.transient, caught.value.fault) == (True, "docker")


def test_a_full_database_or_disk_is_disk_full_and_other_queue_errors_are_not():
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
    results = [
        state_error("cannot commit", e) for e in (full, OSError(errno.ENOSPC, "No space left on device"), locked)
    ]
    assert [(type(e), e.transient, str(e)) for e in results] == [
        (DiskFull, True, "cannot commit: database or disk is full"),
        (DiskFull, True, "cannot commit: No space left on device"),
        (StateError, False, "cannot commit: database is locked"),
    ]


def test_a_failed_health_gate_and_a_failed_hook_are_not_transient():
    assert not HealthCheckFailed("x").transient and not HookFailed("x").transient and not PullError("x").transient


# --- the backoff ---------------------------------------------------------------------------------------


def test_the_backoff_doubles_from_1_s_to_30_s():
    assert [wait_seconds(n, 0.0) for n in range(1, 9)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_the_jitter_cuts_each_wait_by_up_to_half():
    assert [wait_seconds(3, j) for j in (0.0, 0.5, 0.999)] == [4.0, 3.0, 2.002]


# --- one job that meets a transient fault ------------------------------------------------------------


def test_a_transient_fault_puts_the_job_back_with_its_backoff_and_records_the_wait(config, queue, clock):
    events = []
    job = claimed(queue)
    down = FakeEngine(None, fail=DockerUnavailable("the Docker daemon at unix:///x.sock does not answer"))
    status, engine = run_job(config, queue, events, job.id, engine=down, clock=clock)
    stored = queue.jobs.get(job.id)
    assert (status, stored.status, stored.waiting_on, stored.not_before, stored.attempts) == (
        "queued",
        "queued",
        "docker",
        pytest.approx(clock.now + stored.not_before - clock.now),
        1,
    )
    assert 0.5 <= stored.not_before - clock.now <= 1.0  # the first wait: 1 s, cut by the jitter
    assert stored.reason == "waiting on docker: the Docker daemon at unix:///x.sock does not answer"
    assert engine.waits == [True]  # the engine was told the job waits: no on-failure hook
    waiting = [e for e in events if e["event"] == "job.waiting"]
    assert [(e["fault"], e["attempt"], e["error_type"]) for e in waiting] == [("docker", 1, "DockerUnavailable")]
    assert not [e for e in events if e["event"] == "job.failed"]


def test_the_waiting_job_is_woken_when_its_fault_clears(config, queue, clock):
    job = claimed(queue)
    run_job(config, queue, [], job.id, engine=FakeEngine(None, fail=DockerUnavailable("down")), clock=clock)
    assert queue.jobs.claim() is None  # still in its backoff
    assert queue.jobs.wake("registry") == 0 and queue.jobs.wake("docker") == 1
    assert queue.jobs.claim().job.id == job.id


def test_a_transient_fault_past_the_job_timeout_fails_with_the_last_reason(config, queue, clock):
    events = []
    job = claimed(queue)
    late = type(clock)()
    late.now = job.created_at + 100  # job_timeout is 100 s: no wait ends in time
    engine = FakeEngine(None, fail=RegistryUnavailable("cannot pull web:v2: connection refused"))
    status, engine = run_job(config, queue, events, job.id, engine=engine, clock=late)
    assert (status, queue.jobs.get(job.id).reason) == (
        "failed",
        "gave up after 1 tries over 100 s: cannot pull web:v2: connection refused",
    )
    assert engine.waits == [False]  # so the engine runs on-failure, as for any failure
    assert [e["fault"] for e in events if e["event"] == "job.failed"] == ["registry"]


def test_a_fault_that_waiting_will_not_clear_fails_at_once(config, queue, clock):
    job = claimed(queue)
    status, engine = run_job(
        config, queue, [], job.id, engine=FakeEngine(None, fail=PullError("manifest unknown")), clock=clock
    )
    assert (status, queue.jobs.get(job.id).reason, engine.waits) == ("failed", "manifest unknown", [True])


# --- the worker on a full disk --------------------------------------------------------------------------


class FillingJobs(JobStore):
    """Real jobs whose claims fail with DiskFull while the queue's `full` is set; records what the worker asked."""

    def __init__(self, owner: "FillingQueue") -> None:
        super().__init__(owner.database)
        self.owner = owner

    def claim(self):
        self.owner.calls.append("claim")
        if self.owner.full:
            raise DiskFull("cannot commit to the job queue: database or disk is full")
        return super().claim()

    def wake(self, fault):
        self.owner.calls.append(f"wake {fault}")
        return super().wake(fault)


class FillingQueue(Queue):
    """A real queue whose claims fail with DiskFull while `full` is set; records what the worker asked."""

    full = True
    calls: list

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.jobs = FillingJobs(self)


def test_a_full_disk_pauses_claiming_and_the_worker_resumes_by_itself(config, clock, monkeypatch):
    monkeypatch.setattr(worker_module, "PAUSE_SECONDS", 0)
    queue = FillingQueue.for_state_dir(config.settings.state_dir, clock=clock)
    queue.calls = []
    events = []
    launched = []
    worker = Worker(
        config,
        queue,
        Journal([events.append]),
        launch=lambda job: launched.append(job) or Process(None),
        reconcile=lambda app: [],
        clock=clock,
    )
    claimed_job = None
    FillingQueue.full = False
    queue.jobs.submit_release(app="web", tag="v2", actor="a", hook_id="1", delivery="d", source={})
    FillingQueue.full = True
    assert worker.step() is False and worker.step() is False  # no exception: the worker lives on
    assert worker.paused == "cannot commit to the job queue: database or disk is full"
    assert [(e["event"], e.get("fault"), e.get("outcome")) for e in events] == [("worker.fault", "disk", "failed")]
    FillingQueue.full = False
    assert worker.step() is True
    claimed_job = launched[0]
    assert (worker.paused, claimed_job.app, claimed_job.tag) == (None, "web", "v2")
    assert [(e["event"], e.get("fault"), e.get("outcome")) for e in events] == [
        ("worker.fault", "disk", "failed"),
        ("worker.fault", "disk", "ok"),
        ("worker.resumed", None, None),
    ]
    assert queue.calls == ["claim", "claim", "claim", "claim", "wake disk"]  # resumed once a round got through


def test_a_worker_started_on_a_full_disk_waits_for_space_instead_of_exiting(config, clock, monkeypatch):
    monkeypatch.setattr(worker_module, "PAUSE_SECONDS", 0)
    queue = Queue.for_state_dir(config.settings.state_dir, clock=clock)
    full_rounds = [DiskFull("cannot commit to the job queue: database or disk is full")] * 2
    real_recover = queue.jobs.recover

    def recover(**kwargs):
        if full_rounds:
            raise full_rounds.pop()
        return real_recover(**kwargs)

    monkeypatch.setattr(queue.jobs, "recover", recover)
    events = []
    worker = Worker(
        config, queue, Journal([events.append]), launch=lambda job: Process(None), reconcile=lambda app: [], clock=clock
    )
    worker.start()
    try:
        assert worker.paused is None and queue.heartbeat.worker_status() is not None
        assert [(e["event"], e.get("fault"), e.get("outcome")) for e in events] == [
            ("worker.fault", "disk", "failed"),
            ("worker.fault", "disk", "ok"),
            ("worker.resumed", None, None),
            ("worker.started", None, None),
        ]
    finally:
        worker.lock.release()


def test_a_worker_started_on_a_broken_queue_stops_with_the_reason(config, clock, monkeypatch):
    queue = Queue.for_state_dir(config.settings.state_dir, clock=clock)

    def broken(**kwargs):
        raise StateError("the job queue is not a database: file is not a database")

    monkeypatch.setattr(queue.jobs, "recover", broken)
    worker = Worker(config, queue, Journal([]), launch=lambda job: Process(None), reconcile=lambda app: [], clock=clock)
    try:
        with pytest.raises(StateError, match="not a database"):
            worker.start()
    finally:
        worker.lock.release()


def test_the_checks_note_a_fault_once_and_wake_its_jobs_when_it_clears(config, queue, clock):
    events = []
    answers = iter(
        [("the Docker daemon does not answer", "ok"), ("the Docker daemon does not answer", "ok"), ("ok", "ok")]
    )
    worker = Worker(
        config,
        queue,
        Journal([events.append]),
        launch=lambda job: Process(None),
        reconcile=lambda app: [],
        clock=clock,
        checks=lambda: next(answers),
        disk=lambda: "ok",
    )
    worker.started_at = clock.now
    job = claimed(queue)
    run_job(config, queue, [], job.id, engine=FakeEngine(None, fail=DockerUnavailable("down")), clock=clock)
    since = clock.now
    worker.check_once()
    clock.now += 0.25  # still within the job's backoff
    worker.check_once()
    assert queue.heartbeat.worker_status()["faults"] == {
        "docker": {"reason": "the Docker daemon does not answer", "since": since}
    }
    assert queue.jobs.claim() is None
    worker.check_once()
    assert queue.heartbeat.worker_status()["faults"] == {}
    assert [(e["fault"], e["outcome"]) for e in events] == [("docker", "failed"), ("docker", "ok")]
    assert queue.jobs.claim().job.id == job.id  # woken, not left to its backoff


def test_a_registry_that_comes_back_wakes_the_jobs_that_wait_on_it_and_health_names_it(config, queue, clock):
    events = []
    registry = iter(["registry 127.0.0.1:5001: ConnectionRefusedError: [Errno 111] Connection refused", "ok"])
    worker = Worker(
        config,
        queue,
        Journal([events.append]),
        launch=lambda job: Process(None),
        reconcile=lambda app: [],
        clock=clock,
        checks=lambda: ("ok", "ok"),
        disk=lambda: "ok",
        registry=lambda: next(registry),
    )
    worker.started_at = clock.now
    job = claimed(queue)
    run_job(config, queue, [], job.id, engine=FakeEngine(None, fail=RegistryUnavailable("refused")), clock=clock)
    assert queue.jobs.get(job.id).waiting_on == "registry"
    worker.check_once()
    status = queue.heartbeat.worker_status()
    assert status["registry"].startswith("registry 127.0.0.1:5001: ConnectionRefusedError")
    assert set(status["faults"]) == {"registry"}
    assert queue.jobs.claim() is None  # still within its backoff
    worker.check_once()
    assert queue.heartbeat.worker_status()["registry"] == "ok"
    assert queue.heartbeat.worker_status()["faults"] == {}
    assert [(e["fault"], e["outcome"]) for e in events] == [("registry", "failed"), ("registry", "ok")]
    assert queue.jobs.claim().job.id == job.id


def test_without_a_registry_check_the_heartbeat_names_no_registry(config, queue, clock):
    worker = Worker(
        config,
        queue,
        Journal([]),
        launch=lambda job: Process(None),
        reconcile=lambda app: [],
        clock=clock,
        checks=lambda: ("ok", "ok"),
        disk=lambda: "ok",
    )
    worker.started_at = clock.now
    worker.check_once()
    assert queue.heartbeat.worker_status()["registry"] is None


# --- the receiver: no 202 without the job and its audit record -----------------------------------------


class FailingAudit:
    """A journal sink that refuses the one record a 202 depends on, as a full audit log does."""

    def __init__(self):
        self.failing = True

    def __call__(self, event):
        if self.failing and event.get("_required"):
            raise AuditError("cannot append to the audit log: database or disk is full")


@pytest.fixture
def failing_receiver(settings, queue, clock):
    sink = FailingAudit()
    events = []
    app = create_app(
        {
            "DEPLOYER_CONFIG": settings,
            "QUEUE": queue,
            "JOURNAL": Journal([sink, events.append]),
            "CLOCK": clock,
            "TESTING": True,
        }
    )
    return app.test_client(), sink, events


def test_an_audit_record_that_cannot_be_written_withdraws_the_job_and_answers_503(failing_receiver, queue):
    client, sink, events = failing_receiver
    response = deliver(client, read_payload("release-published.payload.json"))
    assert (response.status_code, response.headers["Retry-After"]) == (503, "10")
    assert response.get_json() == {"error": "cannot append to the audit log: database or disk is full"}
    assert queue.jobs.jobs() == []
    assert queue.deliveries.delivery("109948940", "72d3162e-cc78-11e3-81ab-4c9367dc0958") is None
    sink.failing = False
    again = deliver(client, read_payload("release-published.payload.json"))  # the sender's retry is new, not a dupe
    assert again.status_code == 202
    assert [(j.id, j.status) for j in queue.jobs.jobs()] == [(again.get_json()["job"], "queued")]
    assert [e["job"] for e in events if e["event"] == "job.queued"] == [again.get_json()["job"]]


def test_a_queue_that_cannot_be_written_answers_503_with_retry_after(settings, clock, tmp_path):
    class FullJobs(JobStore):
        def submit_release(self, **kwargs):
            raise DiskFull("cannot commit to the job queue: database or disk is full")

    queue = Queue.for_state_dir(settings.settings.state_dir, clock=clock)
    queue.jobs = FullJobs(queue.database)
    client = create_app(
        {"DEPLOYER_CONFIG": settings, "QUEUE": queue, "JOURNAL": Journal([]), "CLOCK": clock, "TESTING": True}
    ).test_client()
    response = deliver(client, read_payload("release-published.payload.json"))
    assert (response.status_code, response.headers["Retry-After"]) == (503, "10")


def test_a_held_job_is_not_claimed_until_confirmed(queue):
    held = queue.jobs.submit_manual(app="web", tag="v2", actor="key:alice", source={}, hold=True)
    assert queue.jobs.claim() is None
    queue.jobs.confirm(held)
    assert queue.jobs.claim().job.id == held.id


# --- status --------------------------------------------------------------------------------------------


def test_status_names_each_fault_since_when_and_what_waits_on_it():
    worker = {
        "heartbeat_at": 1_000.0,
        "faults": {"docker": {"reason": "the Docker daemon does not answer", "since": 990.0}},
    }
    waiting = [
        Job(
            id="job-00000000000000aa",
            app="web",
            tag="v2",
            kind="release",
            actor="a",
            status="queued",
            attempts=3,
            waiting_on="docker",
        )
    ]
    assert fault_lines(worker, waiting, 1_002.0) == [
        "fault docker: the Docker daemon does not answer (since 1970-01-01T00:16:30Z, 12 s); "
        "waiting: job-00000000000000aa (web v2, 3 tries)"
    ]
    assert fault_lines({"heartbeat_at": 1_000.0, "faults": {}}, [], 1_020.0) == [
        "fault worker: last heartbeat 20 s ago, at 1970-01-01T00:16:40Z"
    ]
