"""Rollouts across a fleet, on real parts: the cluster bed's three hosts (each a namespace with its own dockerd,
deployer server and keepalived) and a controller with its own queue and worker (tests/support/fleet_bed.py).

Each test starts from v1 everywhere (`FleetBed.reset`, itself a rollout) and reads the outcome from each host's
own record and audit log, not only from what the controller says.

The controller's kills are drawn from a seeded generator: FLEET_KILL_SEED=<seed> replays a failure's moments.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from deployer.audit import AuditLog
from support.cluster_bed import ClusterBed, failed_requests, missing_tool
from support.console_pages import console_page, fleet_cells, rollout_rows
from support.fleet_bed import FleetBed
from support.integration import missing


@pytest.fixture(scope="module")
def fleet(host: None):
    if (tool := missing_tool()) is not None:
        missing(f"{tool} is not installed (run scripts/install-deps)")
    with ClusterBed() as cluster:
        cluster.start()
        with FleetBed(cluster) as built:
            yield built


@pytest.fixture
def bed(fleet: FleetBed) -> FleetBed:
    fleet.reset()
    return fleet


def udp_lost(records: dict) -> list:
    """Datagrams answered not exactly once."""
    return [r for r in records["udp"] if len(r[3]) != 1]


def rollout_id(result) -> str:
    first = result.stdout.splitlines()[0]
    return next(word for word in first.split() if word.startswith("job-"))


def host_states(bed: FleetBed, rollout: str) -> list[tuple[str, str]]:
    return [(e["host"], e["state"]) for e in bed.audit("rollout.host") if e.get("rollout") == rollout]


def test_a_rollout_one_host_at_a_time_under_load_fails_nothing(bed: FleetBed):
    load = bed.cluster.client_load(240)
    time.sleep(1.0)
    result = bed.rollout("v2")
    time.sleep(1.0)
    records = load.finish()
    assert result.returncode == 0, result.stdout + result.stderr + bed.logs()
    assert failed_requests(records) == {"new": [], "keepalive": []}
    assert udp_lost(records) == []
    assert bed.tags() == {"h1": "v2", "h2": "v2", "h3": "v2"}
    rollout = rollout_id(result)
    # The order, from the controller's audit log: each host done before the next one starts.
    assert host_states(bed, rollout) == [
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
    # One id links them: each host's own `job.queued` names the rollout, and it deployed once.
    for host in bed.cluster.hosts:
        queued = [e for e in bed.audit("job.queued", host.state) if e.get("rollout") == rollout]
        assert len(queued) == 1 and queued[0]["tag"] == "v2", host.name
        assert [(j.tag, j.status) for j in bed.host_jobs(host, rollout)] == [("v2", "succeeded")]
    status = bed.deployer("fleet", "status", "web")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "DIFFERS" not in status.stdout and status.stdout.count("v2 on ") == 3


def test_a_release_that_fails_its_health_gate_on_the_canary_changes_no_other_host(bed: FleetBed):
    before = {h.name: len(bed.host_jobs(h)) for h in bed.cluster.hosts}
    result = bed.rollout("bad", "--canary-host", "h2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "host h2" in result.stderr and "health check did not pass" in result.stderr, result.stderr
    assert bed.tags() == {"h1": "v1", "h2": "v1", "h3": "v1"}
    after = {h.name: len(bed.host_jobs(h)) for h in bed.cluster.hosts}
    assert after == {**before, "h2": before["h2"] + 1}, "a host other than the canary got a job"
    assert host_states(bed, rollout_id(result)) == [("h2", "posting"), ("h2", "deploying"), ("h2", "failed")]


def test_a_failure_on_the_second_batch_reverts_the_done_hosts(bed: FleetBed):
    bed.write_host_config(bed.cluster.host("h2"), env='HEALTH_STATUS = "500"')
    result = bed.rollout("v2")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "host h2" in result.stderr and "reverted h1 to v1" in result.stderr, result.stderr
    assert "untouched: h3" in result.stderr, result.stderr
    assert bed.tags() == {"h1": "v1", "h2": "v1", "h3": "v1"}
    rollout = rollout_id(result)
    assert [(j.tag, j.status) for j in bed.host_jobs(bed.cluster.host("h1"), rollout)] == [
        ("v2", "succeeded"),
        ("v1", "succeeded"),
    ]
    assert bed.host_jobs(bed.cluster.host("h3"), rollout) == []


def test_with_no_revert_the_done_hosts_stay_and_status_shows_the_split(bed: FleetBed):
    bed.write_host_config(bed.cluster.host("h2"), env='HEALTH_STATUS = "500"')
    result = bed.rollout("v2", "--no-revert")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "host h2" in result.stderr and "left on v2 (--no-revert): h1" in result.stderr, result.stderr
    assert bed.tags() == {"h1": "v2", "h2": "v1", "h3": "v1"}
    status = bed.deployer("fleet", "status", "web")
    assert status.returncode == 1
    lines = {line.split(":")[0]: line for line in status.stdout.splitlines()}
    assert lines["web h1"].split(": ", 1)[1].startswith("v2 on ") and "DIFFERS" in lines["web h1"], status.stdout
    assert "DIFFERS" not in lines["web h2"] and "DIFFERS" not in lines["web h3"], status.stdout
    # The controller's console shows the same split, from what the rollout and `fleet status` kept of each answer.
    page = console_page(bed.config, "/console/fleet")
    cells = fleet_cells(page, "web")
    assert cells["h1"].startswith("cell answered differs | v2 differs on "), cells
    assert cells["h2"].startswith("cell answered | v1 on ") and cells["h3"].startswith("cell answered | v1 on "), cells
    states = [row.split(" 20")[0] for row in rollout_rows(page, rollout_id(result))]
    assert [s.split(" v1 ")[0] for s in states] == ["batch 1 h1 done", "batch 2 h2 failed", "batch 3 h3 pending"], (
        states
    )


def test_an_unreachable_host_stops_the_rollout_after_its_timeout_and_the_others_keep_serving(bed: FleetBed):
    # Long enough for h1's own deploy on a busy machine: the timeout is h2's, which stops answering.
    bed.write_controller(host_timeout=20)
    h2 = bed.cluster.host("h2")
    bed.stop_server(h2)  # by its pid: the host serves on, its deployer server does not answer
    try:
        result = bed.deployer("rollout", "web", "v2", "--wait")
        assert result.returncode == 1, result.stdout + result.stderr
        # Refused before anything changed: a host that does not answer the preflight stops it at once.
        assert "host h2" in result.stderr and "nothing was changed" in result.stderr, result.stderr
        assert bed.tags() == {"h1": "v1", "h2": "v1", "h3": "v1"}

        bed.start_server(h2)
        bed.wait_server(h2)
        load = bed.cluster.client_load(240)
        time.sleep(1.0)
        queued = bed.deployer("rollout", "web", "v2")
        rollout = rollout_id(queued)
        bed.cluster.wait_for(lambda: ("h1", "deploying") in host_states(bed, rollout), 120, "h1 deploying")
        bed.stop_server(h2)  # mid-rollout: h1 is being deployed, h2 is next
        started = time.monotonic()
        deadline = time.monotonic() + 120
        while (job := bed.queue.jobs.get(rollout)) is not None and not job.done and time.monotonic() < deadline:
            time.sleep(0.5)
        took = time.monotonic() - started
        time.sleep(1.0)
        records = load.finish()
        assert job is not None and job.status == "failed", job
        assert "host h2" in job.reason and "did not answer within 20 s" in job.reason, job.reason
        assert 20 <= took < 90, took
        assert failed_requests(records) == {"new": [], "keepalive": []}
        assert udp_lost(records) == []
        assert bed.tags() == {"h1": "v1", "h2": "v1", "h3": "v1"}  # h1 reverted; h2 and h3 untouched
    finally:
        if h2.name not in bed.servers:
            bed.start_server(h2)
            bed.wait_server(h2)


def test_a_controller_killed_during_the_second_hosts_swap_resumes_and_deploys_it_once(bed: FleetBed):
    load = bed.cluster.client_load(300)
    time.sleep(1.0)
    queued = bed.deployer("rollout", "web", "v2")
    assert queued.returncode == 0, queued.stdout + queued.stderr
    rollout = rollout_id(queued)
    bed.cluster.wait_for(lambda: ("h2", "deploying") in host_states(bed, rollout), 180, "h2 deploying")
    bed.kill_controller()
    time.sleep(2.0)  # h2's own deploy goes on without the controller
    bed.start_controller()
    deadline = time.monotonic() + 300
    while (job := bed.queue.jobs.get(rollout)) is not None and not job.done and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)
    records = load.finish()
    assert job is not None and job.status == "succeeded", (job, bed.logs())
    assert bed.tags() == {"h1": "v2", "h2": "v2", "h3": "v2"}
    h2 = bed.cluster.host("h2")
    assert [(j.tag, j.status) for j in bed.host_jobs(h2, rollout)] == [("v2", "succeeded")]
    assert len([e for e in bed.audit("job.queued", h2.state) if e.get("rollout") == rollout]) == 1
    assert ("h2", "done") in host_states(bed, rollout)
    assert any(e.get("rollout") == rollout for e in bed.audit("rollout.resumed"))
    assert failed_requests(records) == {"new": [], "keepalive": []}
    assert udp_lost(records) == []


def wait_done(bed: FleetBed, rollout: str, timeout: float):
    deadline = time.monotonic() + timeout
    while (job := bed.queue.jobs.get(rollout)) is not None and not job.done and time.monotonic() < deadline:
        time.sleep(0.5)
    return job


def assert_every_chain_verifies(bed: FleetBed) -> None:
    for state in [bed.folder / "state", *(h.state for h in bed.cluster.hosts)]:
        verdict = AuditLog.for_state_dir(state).verify()
        assert verdict.ok, (state, verdict)


def test_a_rollout_survives_five_controller_kills_at_random_moments_and_deploys_each_host_once(bed: FleetBed):
    seed = int(os.environ.get("FLEET_KILL_SEED", "28"))
    draw = random.Random(seed)
    load = bed.cluster.client_load(300)
    time.sleep(1.0)
    queued = bed.deployer("rollout", "web", "v2", "--bake", "3")  # a bake between hosts: room for five kills
    assert queued.returncode == 0, queued.stdout + queued.stderr
    rollout = rollout_id(queued)
    kills = 0
    while kills < 5:
        time.sleep(draw.uniform(0.5, 4.0))
        job = bed.queue.jobs.get(rollout)
        if job is None or job.done:
            break
        bed.kill_controller()
        kills += 1
        bed.start_controller()
    job = wait_done(bed, rollout, 300)
    time.sleep(1.0)
    records = load.finish()
    assert kills == 5, f"seed {seed}: the rollout ended after {kills} kills"
    assert job is not None and job.status == "succeeded", (seed, job, bed.logs())
    assert bed.tags() == {"h1": "v2", "h2": "v2", "h3": "v2"}
    for host in bed.cluster.hosts:
        assert [(j.tag, j.status) for j in bed.host_jobs(host, rollout)] == [("v2", "succeeded")], (seed, host.name)
        queued_entries = [e for e in bed.audit("job.queued", host.state) if e.get("rollout") == rollout]
        assert len(queued_entries) == 1, (seed, host.name, queued_entries)
    assert failed_requests(records) == {"new": [], "keepalive": []}, seed
    assert udp_lost(records) == [], seed
    assert_every_chain_verifies(bed)


def test_an_abort_of_a_rollout_whose_controller_is_down_reverts_h1_and_h2_and_leaves_h3(bed: FleetBed):
    load = bed.cluster.client_load(300)
    time.sleep(1.0)
    # h1 and h2 are the first batch; h3 waits out the bake after it, and the controller dies first.
    queued = bed.deployer("rollout", "web", "v2", "--canary-hosts", "2", "--bake", "60")
    assert queued.returncode == 0, queued.stdout + queued.stderr
    rollout = rollout_id(queued)
    bed.cluster.wait_for(lambda: ("h2", "done") in host_states(bed, rollout), 180, "h2 done")
    bed.kill_controller()
    aborted = bed.deployer("rollout", "web", "--abort", "--reason", "the controller is gone")
    assert aborted.returncode == 0, aborted.stdout + aborted.stderr
    assert f"abort of rollout {rollout} (v2) recorded" in aborted.stdout, aborted.stdout
    assert [e.get("rollout") for e in bed.audit("rollout.aborted")][-1] == rollout
    bed.start_controller()  # a worker runs again: it carries the recorded abort out
    job = wait_done(bed, rollout, 180)
    time.sleep(1.0)
    records = load.finish()
    assert job is not None and job.status == "failed", (job, bed.logs())
    assert "aborted by" in job.reason and "reverted h1 to v1, h2 to v1" in job.reason, job.reason
    assert "untouched: h3" in job.reason, job.reason
    assert bed.tags() == {"h1": "v1", "h2": "v1", "h3": "v1"}
    assert bed.host_jobs(bed.cluster.host("h3"), rollout) == []
    for name in ("h1", "h2"):
        assert [(j.tag, j.status) for j in bed.host_jobs(bed.cluster.host(name), rollout)] == [
            ("v2", "succeeded"),
            ("v1", "succeeded"),
        ], name
    assert failed_requests(records) == {"new": [], "keepalive": []}
    assert udp_lost(records) == []
    assert_every_chain_verifies(bed)
