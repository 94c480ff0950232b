"""The worker trusts no row of the queue: the receiver's group can write jobs.db by hand.

Each row here is inserted with sqlite3 directly, as such a writer would; the worker's claim and
execute paths must fail it with the reason, record that in the audit log, and act on nothing.
"""

import dataclasses
import sqlite3

import pytest

from deployer.audit import AuditLog, AuditSink, Query
from deployer.journal import Journal
from deployer.queue.queue import Queue
from deployer.queue.rows import row_problem
from deployer.worker.loop import Worker
from deployer.worker.run import JobTools, execute
from support.configs import ASSET_SITE, app_toml, make_config

GOOD_ID = "job-0123456789abcdef"


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path, app_toml("web", 8000, extra='tag_pattern = "v[0-9]+"\n'), ASSET_SITE)


@pytest.fixture
def queue(config):
    queue = Queue.for_state_dir(config.settings.state_dir)
    queue.heartbeat.worker_status()  # the schema
    return queue


@pytest.fixture
def journal(config):
    return Journal([AuditSink.for_state_dir(config.settings.state_dir)])


def plant(queue, **fields):
    row = dict(
        id=GOOD_ID,
        app="web",
        tag="v1",
        kind="release",
        actor="github:octo",
        source="{}",
        status="queued",
        attempts=0,
        created_at=1.0,
    )
    row.update(fields)
    with sqlite3.connect(queue.path) as db:
        db.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    return row


def refusals(config):
    return AuditLog.for_state_dir(config.settings.state_dir).query(Query(event=("job.failed",)))


BAD_ROWS = {
    "an id that climbs out of the assets folder": (dict(id="../../victim"), "is not a job id"),
    "an app the config does not have": (dict(app="other"), "app 'other' is not in the config"),
    "a tag Docker would not take": (dict(tag="v1;reboot"), "is not a valid Docker tag"),
    "a tag outside the app's pattern": (dict(tag="latest"), "does not match the pattern"),
    "a release without a tag": (dict(tag=None), "a release job names no tag"),
    "an unknown kind": (dict(kind="purge"), "job kind 'purge' is not one of"),
    "an actor with a line break": (dict(actor="alice\nforged line"), "is not printable text"),
    "an actor too long": (dict(actor="a" * 201), "is not printable text"),
    "a source that is not JSON": (dict(source="{nope"), "source is not a JSON object"),
    "a time that is not a number": (dict(created_at="soon"), "times are not numbers"),
}


@pytest.mark.parametrize("fields, why", BAD_ROWS.values(), ids=BAD_ROWS.keys())
def test_the_worker_fails_a_bad_row_it_claims_and_launches_nothing(config, queue, journal, fields, why):
    plant(queue, **fields)
    launched = []
    worker = Worker(config, queue, journal, launch=launched.append, reconcile=lambda app: [])
    assert worker.poll()
    assert launched == []
    [job] = queue.jobs.jobs()
    assert job.status == "failed" and why in job.reason
    [entry] = refusals(config)
    assert entry.get("reason") == job.reason and entry.get("actor") == "worker"


def test_a_row_whose_id_climbs_out_of_the_assets_folder_empties_nothing(config, queue, journal, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    (tmp_path / "state" / "assets").mkdir()
    plant(queue, id="../../victim", app="site", status="running", attempts=1)
    [job] = queue.jobs.jobs()
    deployed = []

    def load_asset(job):  # what the real loader does when it is done: empty the job's asset folder
        for entry in (tmp_path / "state" / "assets" / job.id).iterdir():
            entry.unlink()
        return "site:v1"

    tools = JobTools(engine=lambda preloaded: deployed.append(preloaded), load_asset=load_asset)
    assert execute(job, config=config, queue=queue, journal=journal, tools=tools) == "failed"
    assert deployed == []
    assert (victim / "keep").read_text() == "mine"
    assert queue.jobs.jobs()[0].status == "failed"
    assert "refused queue row 1: job id '../../victim' is not a job id" in refusals(config)[0].get("reason")


def test_a_row_the_receiver_wrote_passes(config):
    queue = Queue.for_state_dir(config.settings.state_dir)
    job = queue.jobs.submit_manual(app="web", tag=None, actor="key:alice", source={"reason": "x"})
    assert row_problem(job, config.apps) is None


def test_promote_and_abort_rows_name_no_tag(config):
    queue = Queue.for_state_dir(config.settings.state_dir)
    for kind in ("promote", "abort"):
        job = queue.jobs.submit_manual(app="web", tag=None, actor="key:alice", source={}, kind=kind)
        assert row_problem(job, config.apps) is None
        tagged = dataclasses.replace(job, tag="v2")
        assert row_problem(tagged, config.apps) == f"a {kind} job names no tag, but this one names 'v2'"
