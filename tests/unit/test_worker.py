"""The worker with a small hand-written fake engine: outcomes, superseding, crashes, timeouts, recovery.

The real engine and real child processes are exercised by tests/integration/test_server.py.
"""

import pytest

from deployer.errors import HealthCheckFailed, LockError
from deployer.host.state import StateStore
from deployer.journal import Journal
from deployer.plan.records import AppState, Instance
from deployer.queue.queue import Queue
from deployer.worker.child import JobSteps
from deployer.worker.loop import WorkerLock
from deployer.worker.run import JobTools, execute
from support.configs import ASSET_SITE, make_config
from support.worker_fakes import Clock, FakeEngine, Process, claimed, make_worker, run_job


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(config, clock):
    return Queue.for_state_dir(config.settings.state_dir, clock=clock)


def activate(config, app, tag):
    StateStore(config.settings.state_dir).save(
        AppState(
            app=app,
            active=Instance(
                port_set="blue",
                tag=tag,
                image="img",
                digest=None,
                container_id="c1",
                container_name="n",
                address="10.0.0.2",
                since="2026-01-01T00:00:00Z",
            ),
        )
    )


# --- one job ----------------------------------------------------------------------------------------


def test_a_job_deploys_and_records_its_steps_and_outcome(config, queue, events):
    job = claimed(queue)
    status, engine = run_job(config, queue, events, job.id)
    assert status == "succeeded"
    assert engine.deploys == [("web", "v2", "github:octo (delivery d)", job.id)]
    stored = queue.jobs.get(job.id)
    assert (stored.status, stored.reason) == ("succeeded", "v2 is live on green")
    assert [(s["name"], s["outcome"]) for s in queue.jobs.steps(job.id)] == [
        ("job.started", None),
        ("pull", "running"),
        ("pull", "ok"),
        ("job.finished", "ok"),
    ]
    assert queue.jobs.steps(job.id)[2]["detail"]["image"] == "registry.example/web:v2"
    assert queue.live.active_tag("web") == "v2"
    assert [e["event"] for e in events if e["event"].startswith("job.")] == ["job.started", "job.finished"]


def test_a_release_whose_tag_is_already_active_is_skipped(config, queue, events):
    activate(config, "web", "v2")
    job = claimed(queue)
    status, engine = run_job(config, queue, events, job.id)
    assert (status, engine.deploys) == ("skipped", [])
    assert queue.jobs.get(job.id).reason == "tag v2 is already active"


def test_a_manual_redeploy_of_the_active_tag_runs(config, queue, events):
    activate(config, "web", "v2")
    queue.jobs.submit_manual(app="web", tag=None, actor="key:alice", source={})
    job = queue.jobs.claim().job
    status, engine = run_job(config, queue, events, job.id)
    assert (status, engine.deploys) == ("succeeded", [("web", "v2", "key:alice", job.id)])


def test_a_redeploy_of_an_app_never_deployed_fails_with_the_reason(config, queue, events):
    queue.jobs.submit_manual(app="web", tag=None, actor="key:alice", source={})
    job = queue.jobs.claim().job
    status, engine = run_job(config, queue, events, job.id)
    assert (status, engine.deploys) == ("failed", [])
    assert queue.jobs.get(job.id).reason == "app 'web' has no active release to redeploy; name a tag"


def test_a_failed_deploy_fails_the_job_with_the_engines_message(config, queue, events):
    job = claimed(queue)
    failing = FakeEngine(None, fail=HealthCheckFailed("v2 did not pass its health gate within 60 s", app="web"))
    status, _ = run_job(config, queue, events, job.id, engine=failing)
    assert status == "failed"
    assert queue.jobs.get(job.id).reason == "v2 did not pass its health gate within 60 s"
    [failed] = [e for e in events if e["event"] == "job.failed"]
    assert (failed["outcome"], failed["error_type"]) == ("failed", "HealthCheckFailed")
    assert queue.live.active_tag("web") is None


def test_a_busy_app_puts_the_job_back_until_the_job_timeout(config, queue, events, clock):
    job = claimed(queue)
    busy = FakeEngine(None, fail=LockError("another deploy of app 'web' is running (pid 7)", app="web"))
    status, _ = run_job(config, queue, events, job.id, engine=busy, clock=clock)
    stored = queue.jobs.get(job.id)
    assert (status, stored.status, stored.not_before) == ("queued", "queued", clock.now + 5)
    clock.now += 5
    job = queue.jobs.claim().job
    late = Clock()
    late.now = job.created_at + 101
    status, _ = run_job(config, queue, events, job.id, engine=busy, clock=late)
    assert status == "failed"
    assert queue.jobs.get(job.id).reason == (
        "the app stayed busy for longer than 100 s: another deploy of app 'web' is running (pid 7)"
    )


# --- the supervising worker -------------------------------------------------------------------------


def test_the_worker_runs_the_newest_job_per_app_and_supersedes_the_rest(config, queue, events, clock):
    for tag in ("v1", "v2", "v3"):
        queue.jobs.submit_release(app="web", tag=tag, actor="a", hook_id="1", delivery=tag, source={})
    queue.jobs.submit_release(app="api", tag="v9", actor="a", hook_id="1", delivery="api", source={})
    launched = []

    def launch(job):
        launched.append((job.app, job.tag))
        return Process(code=None)

    worker = make_worker(config, queue, events, clock, launch, [])
    worker.start()
    assert worker.poll()
    assert launched == [("web", "v3"), ("api", "v9")]
    superseded = [(e["tag"], e["superseded_by"]) for e in events if e["event"] == "job.superseded"]
    v3 = next(j for j in queue.jobs.jobs() if j.tag == "v3")
    assert superseded == [("v1", v3.id), ("v2", v3.id)]
    assert not worker.poll()  # both apps busy, nothing else waits
    worker.lock.release()


def test_a_job_process_that_dies_without_an_outcome_fails_the_job_and_reconciles_its_app(config, queue, events, clock):
    queue.jobs.submit_release(app="web", tag="v1", actor="a", hook_id="1", delivery="d", source={})
    reconciled = []
    worker = make_worker(config, queue, events, clock, lambda job: Process(code=-9), reconciled)
    worker.start()
    worker.poll()  # launches
    worker.poll()  # reaps
    [job] = queue.jobs.jobs()
    assert (job.status, job.reason) == (
        "failed",
        "the deploy process ended (exit status -9) before it recorded an outcome",
    )
    assert reconciled == [None, "web"]  # everything at start, then the app the dead job touched
    worker.lock.release()


def test_a_job_over_the_timeout_is_killed_and_failed(config, queue, events, clock):
    queue.jobs.submit_release(app="web", tag="v1", actor="a", hook_id="1", delivery="d", source={})
    process = Process(code=None)
    reconciled = []
    worker = make_worker(config, queue, events, clock, lambda job: process, reconciled)
    worker.start()
    worker.poll()
    clock.now += 99
    worker.poll()
    assert queue.jobs.jobs()[0].status == "running" and not process.killed
    clock.now += 2
    worker.poll()
    assert process.killed
    first = queue.jobs.jobs()[0]
    assert (first.status, first.reason) == ("failed", "timed out after 100 s; the deploy was stopped")
    assert reconciled == [None, "web"]
    worker.lock.release()


def test_a_job_that_recorded_its_outcome_is_left_as_it_is(config, queue, events, clock):
    queue.jobs.submit_release(app="web", tag="v1", actor="a", hook_id="1", delivery="d", source={})

    def launch(job):
        queue.jobs.finish(job, "succeeded", "v1 is live on blue")
        return Process(code=0)

    reconciled = []
    worker = make_worker(config, queue, events, clock, launch, reconciled)
    worker.start()
    worker.poll()
    worker.poll()
    assert queue.jobs.jobs()[0].status == "succeeded"
    assert reconciled == [None]
    worker.lock.release()


def test_start_requeues_what_a_dead_worker_left_running_and_reconciles_first(config, queue, events, clock):
    activate(config, "api", "v5")
    queue.jobs.submit_release(app="web", tag="v1", actor="a", hook_id="1", delivery="d", source={})
    queue.jobs.claim()  # a worker took it, then died
    reconciled = []
    worker = make_worker(config, queue, events, clock, lambda job: Process(code=None), reconciled)
    worker.start()
    [job] = queue.jobs.jobs()
    assert (job.status, job.reason) == ("queued", "the worker stopped while this job ran; queued again")
    assert reconciled == [None]
    assert queue.live.active_tag("api") == "v5"
    assert [e["event"] for e in events][:2] == ["job.requeued", "worker.started"]
    worker.poll()
    assert queue.jobs.get(job.id).attempts == 2
    worker.lock.release()


def test_one_worker_per_state_folder(config):
    first = WorkerLock(config.settings.state_dir)
    first.acquire()
    second = WorkerLock(config.settings.state_dir)
    with pytest.raises(LockError) as caught:
        second.acquire()
    assert "another worker is running on this state folder" in str(caught.value)
    first.release()
    second.acquire()
    second.release()


def test_job_steps_ignore_other_jobs_events(config, queue):
    job = claimed(queue)
    sink = JobSteps(queue, job.id)
    sink({"event": "step", "step": "pull", "outcome": "ok", "job": "job-other", "_durable": True})
    sink({"event": "reconcile.repair", "job": job.id, "detail": "rules pointed at blue", "_durable": True})
    assert [(s["name"], s["detail"]) for s in queue.jobs.steps(job.id)] == [
        ("reconcile.repair", {"detail": "rules pointed at blue"})
    ]


# --- an app whose releases come as assets ---------------------------------------------------------


@pytest.fixture
def asset_config(tmp_path):
    return make_config(tmp_path, ASSET_SITE)


def run_with_tools(config, tag):
    """A manual redeploy of `site` through execute; returns what the engine was built with and what it deployed."""
    queue = Queue.for_state_dir(config.settings.state_dir)
    queue.jobs.submit_manual(app="site", tag=tag, actor="key:alice", source={})
    job = queue.jobs.claim().job
    journal = Journal([])
    built, engine = [], FakeEngine(journal)
    loaded = []
    tools = JobTools(engine=lambda preloaded: built.append(preloaded) or engine, load_asset=loaded.append)
    assert execute(job, config=config, queue=queue, journal=journal, tools=tools) == "succeeded"
    assert loaded == []  # a manual job names no asset to download
    return built, [d[1] for d in engine.deploys]


def test_a_manual_redeploy_of_an_asset_app_runs_the_image_tagged_on_the_host(asset_config):
    # Its images need not be in any registry: a pull would fail (test_an_image_from_a_release_asset in
    # tests/integration/test_server.py drives the real path: a release from an asset, then POST /deploy).
    assert run_with_tools(asset_config, "v3") == (["registry.example:5000/site:v3"], ["v3"])


def test_a_manual_redeploy_of_the_active_release_of_an_asset_app_runs_its_local_image(asset_config):
    activate(asset_config, "site", "v2")
    assert run_with_tools(asset_config, None) == (["registry.example:5000/site:v2"], ["v2"])
