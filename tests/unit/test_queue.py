"""The SQLite job queue: dedupe, superseding, claims across processes, recovery, nonces, durability."""

import grp
import multiprocessing
import os
import signal
import sqlite3
import stat

import pytest

from deployer.errors import Unauthorized
from deployer.queue.database import MIGRATIONS, prepare_folder, queue_path
from deployer.queue.queue import Queue


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def queue(tmp_path, clock):
    return Queue.for_state_dir(tmp_path / "state", clock=clock)


def release(queue, tag="v1", delivery="d-1", app="web", hook_id="42"):
    return queue.jobs.submit_release(
        app=app,
        tag=tag,
        actor="github:octo (delivery x)",
        hook_id=hook_id,
        delivery=delivery,
        source={"delivery": delivery},
    )


# --- dedupe ---------------------------------------------------------------------------------------


def test_a_release_is_queued_and_committed_for_every_process(queue, tmp_path):
    outcome = release(queue)
    assert (outcome.created, outcome.reason, outcome.job.status, outcome.job.tag) == (True, "queued", "queued", "v1")
    other = Queue.for_state_dir(tmp_path / "state")  # a second connection sees it at once
    assert other.jobs.get(outcome.job.id) == outcome.job
    assert other.deliveries.delivery("42", "d-1") == {"job_id": outcome.job.id, "verdict": "queued", "reason": "queued"}


def test_a_redelivery_returns_the_same_job(queue):
    first = release(queue)
    again = release(queue)
    assert (again.created, again.job.id) == (False, first.job.id)
    assert again.reason == "delivery d-1 was already received (queued)"
    assert len(queue.jobs.jobs()) == 1


def test_the_same_delivery_id_from_another_hook_is_another_delivery(queue):
    release(queue, tag="v1", hook_id="1")
    second = release(queue, tag="v2", hook_id="2")
    assert second.created


def test_published_then_released_of_one_release_make_one_job(queue):
    published = release(queue, delivery="d-published")
    released = release(queue, delivery="d-released")
    assert (released.created, released.job.id) == (False, published.job.id)
    assert released.reason == f"release v1 is already queued as {published.job.id}"


def test_a_release_already_deployed_or_being_deployed_is_not_queued_again(queue):
    job = release(queue, delivery="a").job
    queue.jobs.claim()
    assert release(queue, delivery="b").reason == f"release v1 is already being deployed by {job.id}"
    queue.jobs.finish(queue.jobs.get(job.id), "succeeded", "v1 is live")
    late = release(queue, delivery="c")
    assert (late.created, late.reason) == (False, f"release v1 was already deployed by {job.id}")


def test_a_late_delivery_of_a_superseded_release_does_not_downgrade(queue):
    old = release(queue, tag="v1", delivery="p1").job
    new = release(queue, tag="v2", delivery="p2").job
    queue.jobs.claim()
    late = release(queue, tag="v1", delivery="r1")  # 'released' of v1 arriving after v2 was queued
    assert (late.created, late.reason) == (
        False,
        f"release v1 was superseded by {new.id}; redeploy it with POST /deploy",
    )
    assert queue.jobs.get(old.id).status == "superseded"


def test_a_tag_already_active_is_not_queued(queue):
    queue.live.set_active("web", "v7", None)
    outcome = release(queue, tag="v7")
    assert (outcome.created, outcome.job, outcome.reason) == (False, None, "tag v7 is already active")
    assert queue.jobs.jobs() == []


def test_an_ignored_delivery_gets_the_same_answer_when_redelivered(queue):
    first = queue.deliveries.record_ignored(hook_id="42", delivery="d-9", reason="the release is a draft")
    again = queue.deliveries.record_ignored(hook_id="42", delivery="d-9", reason="something else")
    assert (first.job, first.reason) == (None, "the release is a draft")
    assert (again.job, again.reason) == (None, "delivery d-9 was already received (the release is a draft)")


def test_manual_redeploys_always_make_a_job(queue):
    first = queue.jobs.submit_manual(app="web", tag="v1", actor="key:alice", source={"key_id": "alice"})
    second = queue.jobs.submit_manual(app="web", tag="v1", actor="key:alice", source={"key_id": "alice"})
    assert first.id != second.id and (first.kind, first.actor) == ("redeploy", "key:alice")
    assert queue.jobs.submit_manual(app="web", tag=None, actor="key:alice", source={}).tag is None


# --- claims and superseding -----------------------------------------------------------------------


def test_the_newest_waiting_job_of_an_app_runs_and_the_older_ones_are_superseded(queue):
    jobs = [release(queue, tag=f"v{i}", delivery=f"d{i}").job for i in range(1, 4)]
    claim = queue.jobs.claim()
    assert (claim.job.id, claim.job.status, claim.job.attempts) == (jobs[2].id, "running", 1)
    assert [j.id for j in claim.superseded] == [jobs[0].id, jobs[1].id]
    for old in jobs[:2]:
        stored = queue.jobs.get(old.id)
        assert (stored.status, stored.superseded_by) == ("superseded", jobs[2].id)
        assert stored.reason == f"superseded by {jobs[2].id} (v3), which was queued later"
    assert queue.jobs.claim() is None


def test_one_running_job_per_app_and_other_apps_are_not_held_up(queue):
    web = release(queue, app="web", tag="v1", delivery="a").job
    assert queue.jobs.claim().job.id == web.id
    later = release(queue, app="web", tag="v2", delivery="b").job
    api = release(queue, app="api", tag="v1", delivery="c").job
    assert queue.jobs.claim().job.id == api.id  # web is busy: its v2 waits
    assert queue.jobs.claim() is None
    queue.jobs.finish(queue.jobs.get(web.id), "succeeded", "ok")
    assert queue.jobs.claim().job.id == later.id


def test_finish_and_requeue_belong_to_the_attempt_that_claimed(queue, clock):
    release(queue)
    job = queue.jobs.claim().job
    assert queue.jobs.requeue(job, "app busy", delay=5)
    stored = queue.jobs.get(job.id)
    assert (stored.status, stored.reason, stored.not_before) == ("queued", "app busy", clock.now + 5)
    assert queue.jobs.claim() is None  # not before the delay
    clock.now += 5
    second = queue.jobs.claim().job
    assert second.attempts == 2
    assert not queue.jobs.finish(job, "failed", "stale attempt")  # the first attempt no longer owns it
    assert queue.jobs.finish(second, "succeeded", "v1 is live")
    assert queue.jobs.get(job.id).status == "succeeded"


def test_recover_requeues_interrupted_jobs_then_gives_up(queue):
    release(queue)
    for attempt in (1, 2):
        job = queue.jobs.claim().job
        assert job.attempts == attempt
        [recovered] = queue.jobs.recover(max_attempts=3)
        assert (recovered.status, recovered.reason) == ("queued", "the worker stopped while this job ran; queued again")
    job = queue.jobs.claim().job
    [failed] = queue.jobs.recover(max_attempts=3)
    assert failed.status == "failed"
    assert failed.reason.startswith("the worker stopped while this job ran, 3 times; not tried again")
    assert [s["outcome"] for s in queue.jobs.steps(job.id)] == ["requeued", "requeued", "failed"]


def _claim_in_process(path: str, results) -> None:
    claim = Queue(path).jobs.claim()
    results.put(claim.job.id if claim else None)


def test_only_one_of_many_processes_claims_an_apps_job(queue):
    for i in range(3):
        release(queue, app=f"app{i}", tag="v1", delivery=f"d{i}")
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    processes = [context.Process(target=_claim_in_process, args=(str(queue.path), results)) for _ in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    claimed = [results.get(timeout=5) for _ in processes]
    won = [c for c in claimed if c]
    assert len(won) == 3 and len(set(won)) == 3  # each app's job claimed exactly once
    assert {j.status for j in queue.jobs.jobs()} == {"running"}


def _submit_then_die(path: str, tag: str, pipe) -> None:
    outcome = Queue(path).jobs.submit_release(app="web", tag=tag, actor="a", hook_id="1", delivery=tag, source={})
    pipe.send(outcome.job.id)
    os.kill(os.getpid(), signal.SIGKILL)


def test_an_accepted_job_survives_sigkill_of_the_process_that_accepted_it(queue):
    context = multiprocessing.get_context("fork")
    accepted = []
    for tag in ("v1", "v2", "v3"):
        parent, child = context.Pipe()
        process = context.Process(target=_submit_then_die, args=(str(queue.path), tag, child))
        process.start()
        accepted.append(parent.recv())
        process.join(10)
        assert process.exitcode == -signal.SIGKILL
    assert [j.id for j in Queue(queue.path).jobs.jobs()] == accepted


# --- nonces ---------------------------------------------------------------------------------------


def test_a_nonce_is_single_use_per_key(queue, clock):
    queue.deliveries.use_nonce("alice", "n" * 20, clock.now + 600)
    with pytest.raises(Unauthorized) as caught:
        queue.deliveries.use_nonce("alice", "n" * 20, clock.now + 600)
    assert str(caught.value) == "nonce already used"
    queue.deliveries.use_nonce("bob", "n" * 20, clock.now + 600)


def test_expired_nonces_are_forgotten(queue, clock):
    queue.deliveries.use_nonce("alice", "n" * 20, clock.now + 600)
    clock.now += 601
    queue.deliveries.use_nonce("alice", "m" * 20, clock.now + 600)  # the next use sweeps the table
    count = sqlite3.connect(queue.path).execute("SELECT COUNT(*) FROM nonces").fetchone()[0]
    assert count == 1
    queue.deliveries.use_nonce("alice", "n" * 20, clock.now + 600)


# --- files ----------------------------------------------------------------------------------------


def test_migrations_are_recorded_and_run_once(queue, tmp_path):
    release(queue)
    names = [row[0] for row in sqlite3.connect(queue.path).execute("SELECT name FROM migrations")]
    assert names == [name for name, _ in MIGRATIONS]
    reopened = Queue.for_state_dir(tmp_path / "state")
    assert len(reopened.jobs.jobs()) == 1


def test_the_queue_uses_wal(queue):
    release(queue)
    assert sqlite3.connect(queue.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_prepare_folder_shares_the_queue_with_the_receivers_group(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    path = prepare_folder(tmp_path / "state", group)
    assert path == queue_path(tmp_path / "state")
    folder = os.stat(path.parent)
    assert (stat.S_IMODE(folder.st_mode), folder.st_gid) == (0o2770, os.getgid())
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) & 0o050 == 0o050


def test_prepare_folder_without_a_group_keeps_the_queue_private(tmp_path):
    path = prepare_folder(tmp_path / "state")
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# --- the console's sign-in attempts ------------------------------------------------------------------


def test_sign_in_attempts_are_a_token_bucket_per_source_shared_by_every_connection(queue, tmp_path, clock):
    other = Queue.for_state_dir(tmp_path / "state", clock=clock)  # another gunicorn worker
    take = [queue.attempts.take, other.attempts.take]
    waits = [take[n % 2]("198.51.100.7", clock.now, burst=5, per_second=1 / 60) for n in range(6)]
    assert waits == [None] * 5 + [60]
    assert queue.attempts.take("198.51.100.8", clock.now, burst=5, per_second=1 / 60) is None  # another source
    assert other.attempts.take("198.51.100.7", clock.now + 30, burst=5, per_second=1 / 60) == 30  # nothing spent
    assert other.attempts.take("198.51.100.7", clock.now + 60, burst=5, per_second=1 / 60) is None
    assert queue.attempts.take("198.51.100.7", clock.now + 61, burst=5, per_second=1 / 60) == 59


def test_a_full_bucket_is_forgotten_and_the_table_keeps_the_most_recent_sources(queue, clock):
    for n in range(3):
        queue.attempts.take(f"198.51.100.{n}", clock.now + n, burst=5, per_second=1 / 60)
    rows = lambda: queue.database.read("SELECT source FROM signin_attempts ORDER BY source")  # noqa: E731
    assert len(rows()) == 3
    queue.attempts.take("198.51.100.9", clock.now + 301.5, burst=5, per_second=1 / 60)  # 0 and 1 are full again
    assert rows() == [("198.51.100.2",), ("198.51.100.9",)]
    queue.attempts.max_sources = 1
    queue.attempts.take("198.51.100.10", clock.now + 302, burst=5, per_second=1 / 60)
    assert rows() == [("198.51.100.10",)]
