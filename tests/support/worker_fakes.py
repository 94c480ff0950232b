"""The worker without an engine: a fake engine and a fake job process, a claimed job, one run, a worker."""

from __future__ import annotations

from types import SimpleNamespace

from deployer.journal import Journal
from deployer.worker.child import JobSteps
from deployer.worker.loop import Worker
from deployer.worker.run import JobTools, execute


class Clock:
    now = 1_000_000.0

    def __call__(self):
        return self.now


class FakeEngine:
    """Records deploys; emits steps through the journal the way the engine does."""

    def __init__(self, journal, fail=None):
        self.journal = journal
        self.fail = fail
        self.deploys = []
        self.waits = []

    def deploy(self, app_name, tag, *, actor, job=None, wait_on_transient=False, canary_split=None):
        self.deploys.append((app_name, tag, actor, job))
        self.waits.append(wait_on_transient)
        self.canary_split = canary_split
        with self.journal.step("pull", app=app_name, job=job, actor=actor) as step:
            step.detail["image"] = f"registry.example/{app_name}:{tag}"
        if self.fail:
            raise self.fail
        return SimpleNamespace(port_set="green", digest="sha256:abc")


class Process:
    def __init__(self, code=0):
        self.code = code
        self.pid = 4242
        self.killed = False

    def poll(self):
        return self.code

    def kill(self):
        self.killed = True
        self.code = -9


def make_worker(config, queue, events, clock, launch, reconciled):
    """A worker whose reconcile only notes the app."""
    journal = Journal([events.append])

    def reconcile(app):
        reconciled.append(app)
        return []

    return Worker(config, queue, journal, launch=launch, reconcile=reconcile, clock=clock)


def run_job(config, queue, events, job_id, engine=None, clock=None):
    journal = Journal([events.append, JobSteps(queue, job_id)])
    engine = engine or FakeEngine(journal)
    engine.journal = journal
    job = queue.jobs.get(job_id)
    status = execute(
        job, config=config, queue=queue, journal=journal, tools=JobTools(engine=lambda _: engine), now=clock or Clock()
    )
    return status, engine


def claimed(queue, **kwargs):
    defaults = dict(app="web", tag="v2", actor="github:octo (delivery d)", hook_id="1", delivery="d", source={})
    queue.jobs.submit_release(**{**defaults, **kwargs})
    return queue.jobs.claim().job
