"""The console's fleet and cluster pages: the view models from rows (which hosts differ, the rollouts' order), the
checks a host's answer passes before it is kept, and the pages through Flask's test client over a real queue.
"""

from __future__ import annotations

import re
import tomllib

import pytest

from deployer import config as config_module
from deployer.errors import ConfigError, ServerUnavailable, UnexpectedAnswer
from deployer.fleet.sightings import RecordingHosts
from deployer.journal import Journal
from deployer.plan.cluster import BucketOwner, bucket_owners
from deployer.plan.sightings import MAX_HEALTH_PARTS, HostFact, fact_from_answer, fact_from_problem
from deployer.queue.model import Job, RolloutHost
from deployer.queue.queue import Queue
from deployer.queue.sightings import SeenHost
from deployer.receiver.console.fleet_views import ANSWERED, UNKNOWN, UNREACHABLE, fleet_grid, rollouts_newest_first
from deployer.receiver.web import create_app
from support.configs import app_toml, cluster_config, make_config
from support.console_pages import (
    CONSOLE_TABLE,
    HTTPS,
    SESSION_ENV,
    bucket_rows,
    console_client,
    fleet_cells,
    get_page,
    rollout_rows,
)
from support.receiver import NAMES

JOB_A, JOB_B, JOB_C = "job-00000000000000aa", "job-00000000000000bb", "job-00000000000000cc"
ANSWER = {
    "app": "web",
    "tag": "v2",
    "port_set": "green",
    "health": {"docker": "ok", "worker": "ok"},
    "last_job": {"id": JOB_A, "status": "succeeded", "tag": "v2"},
}


# --- a host's answer, checked before it is kept ----------------------------------------------------


def test_a_hosts_answer_is_kept_as_its_facts():
    fact = fact_from_answer("h1", "web", ANSWER, at=5.0)
    assert fact == HostFact(
        host="h1",
        app="web",
        checked_at=5.0,
        tag="v2",
        port_set="green",
        health={"docker": "ok", "worker": "ok"},
        last_job=JOB_A,
        last_status="succeeded",
    )
    assert (fact.reachable, fact.healthy) == (True, True)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"tag": "v2\x1b[2J"}, "the live tag"),
        ({"tag": ["v2"]}, "the live tag"),
        ({"port_set": "red"}, "the port set"),
        ({"health": {f"part{i}": "ok" for i in range(MAX_HEALTH_PARTS + 1)}}, "the health"),
        ({"health": ["ok"]}, "the health"),
        ({"health": {"Docker<script>": "ok"}}, "the health part"),
        ({"health": {"docker": 1}}, "the health part"),
        ({"last_job": "job-1"}, "the last job"),
        ({"last_job": {"id": "../../admin"}}, "the last job's id"),
        ({"last_job": {"id": JOB_A, "status": "x" * 500}}, "the last job's status"),
    ],
)
def test_a_hostile_answer_is_refused_naming_the_field(change, named):
    with pytest.raises(UnexpectedAnswer, match=re.escape(named)):
        fact_from_answer("h1", "web", {**ANSWER, **change}, at=5.0)


def test_a_long_health_reason_and_a_problem_are_cut_and_shown_escaped():
    fact = fact_from_answer("h1", "web", {**ANSWER, "health": {"disk": "full\n" + "x" * 1000}}, at=5.0)
    assert fact.health["disk"].startswith("full\\n") and len(fact.health["disk"]) <= 130
    assert fact.healthy is False
    problem = fact_from_problem("h1", "web", "refused\x1b]0;title\x07" + "y" * 1000, at=5.0)
    assert "\x1b" not in problem.problem and len(problem.problem) <= 310
    assert (problem.reachable, problem.healthy) == (False, None)


class Hosts:
    """A fleet client's fake: each host answers `answers[host]`, or raises it when it is an exception."""

    def __init__(self, answers):
        self.answers = answers

    def deploy(self, host, app, tag, *, rollout, reason):
        return JOB_B

    def job(self, host, job_id):
        return {"status": "succeeded"}

    def status(self, host, app):
        answer = self.answers[host]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_every_status_a_controller_asks_is_kept_answer_or_problem(tmp_path):
    queue = Queue(tmp_path / "jobs.db", clock=lambda: 50.0)
    odd = {**ANSWER, "health": {f"p{i}": "ok" for i in range(40)}}
    hosts = RecordingHosts(
        Hosts({"h1": ANSWER, "h2": ServerUnavailable("http://h2: connection refused"), "h3": odd}),
        queue.sightings.record_facts,
        clock=lambda: 50.0,
    )
    assert hosts.status("h1", "web") == ANSWER
    with pytest.raises(ServerUnavailable):
        hosts.status("h2", "web")
    assert hosts.status("h3", "web") == odd  # the rollout uses what it checks itself; the record refuses the rest
    assert hosts.deploy("h1", "web", "v2", rollout=JOB_C, reason="r") == JOB_B
    seen = {s.fact.host: s for s in queue.sightings.seen_hosts()}
    assert (seen["h1"].fact.tag, seen["h1"].seen_at, seen["h1"].fact.problem) == ("v2", 50.0, None)
    assert (seen["h2"].fact.tag, seen["h2"].seen_at) == (None, None)
    assert "connection refused" in seen["h2"].fact.problem
    assert seen["h3"].fact.problem.startswith("its answer was not kept: the health is not a table")


def test_a_host_that_stops_answering_keeps_its_last_answer_beside_the_problem(tmp_path):
    now = {"t": 10.0}
    queue = Queue(tmp_path / "jobs.db", clock=lambda: now["t"])
    queue.sightings.record_facts([fact_from_answer("h1", "web", ANSWER, at=10.0)])
    queue.sightings.record_facts([fact_from_problem("h1", "web", "timed out", at=70.0)])
    [seen] = queue.sightings.seen_hosts()
    assert (seen.fact.tag, seen.fact.problem, seen.fact.checked_at, seen.seen_at) == ("v2", "timed out", 70.0, 10.0)


def test_a_recording_queue_that_fails_never_fails_the_ask():
    def broken(facts):
        raise ServerUnavailable("never")  # any DeployerError

    hosts = RecordingHosts(Hosts({"h1": ANSWER}), broken)
    assert hosts.status("h1", "web") == ANSWER


# --- the view models -----------------------------------------------------------------------------------


def seen(host, tag, *, at=100.0, problem=None, seen_at=100.0, app="web"):
    return SeenHost(HostFact(host, app, at, tag=tag, problem=problem), seen_at)


def test_the_grid_marks_the_host_whose_tag_differs_and_never_counts_one_that_does_not_answer():
    rows = [
        seen("h1", "v2"),
        seen("h2", "v1"),
        seen("h3", "v1"),
        seen("h4", "v9", problem="timed out", seen_at=20.0),
    ]
    grid = fleet_grid(("h1", "h2", "h3", "h4", "h5"), ("web",), rows)
    cells = {host: cells[0] for host, cells in grid.rows}
    assert [(h, c.state, c.tag, c.differs) for h, c in cells.items()] == [
        ("h1", ANSWERED, "v2", True),
        ("h2", ANSWERED, "v1", False),
        ("h3", ANSWERED, "v1", False),
        ("h4", UNREACHABLE, "v9", False),
        ("h5", UNKNOWN, None, False),
    ]
    assert grid.differing == [("h1", "web")]


def test_the_grid_keeps_the_configs_order_and_ignores_hosts_no_longer_configured():
    grid = fleet_grid(("h2", "h1"), ("web", "api"), [seen("h1", "v1"), seen("gone", "v7"), seen("h1", "a1", app="api")])
    assert [(host, [(c.app, c.tag) for c in cells]) for host, cells in grid.rows] == [
        ("h2", [("web", None), ("api", None)]),
        ("h1", [("web", "v1"), ("api", "a1")]),
    ]
    assert grid.differing == []  # one answer per app: nothing to differ from


def job(job_id, created, tag="v2"):
    return Job(job_id, "web", tag, "rollout", "cli:ann", "running", created_at=created)


def test_rollouts_come_newest_first_each_with_its_batches_in_deploy_order_and_the_skipped_last():
    rows = {
        JOB_B: [
            RolloutHost("h3", -1, "v2", "skipped"),
            RolloutHost("h1", 0, "v1", "done", host_job=JOB_A),
            RolloutHost("h2", 1, "v1", "deploying"),
            RolloutHost("h4", 1, "v1", "failed", failure="health gate"),
        ]
    }
    asked = []

    def rows_of(job_id):
        asked.append(job_id)
        return rows.get(job_id, ())

    views = rollouts_newest_first([job(JOB_A, 1.0), job(JOB_B, 3.0), job(JOB_C, 2.0)], rows_of, count=2)
    assert [v.job.id for v in views] == [JOB_B, JOB_C]
    assert asked == [JOB_B, JOB_C]  # the rollout not shown is never read
    assert [(b.label, [h.host for h in b.hosts]) for b in views[0].batches] == [
        ("batch 1", ["h1"]),
        ("batch 2", ["h2", "h4"]),
        ("skipped (already on the tag)", ["h3"]),
    ]
    assert views[0].counts == (("done", 1), ("deploying", 1), ("failed", 1), ("skipped", 1))
    assert not views[1].planned


def test_a_hosts_bucket_owners_are_its_own_by_keepalived_and_the_others_by_rank(tmp_path):
    hosts = [{"name": n, "address": f"198.18.10.{i}"} for i, n in enumerate(("h1", "h2", "h3"), 1)]
    cluster = cluster_config(
        tmp_path / "d.toml", {"interface": "eth0", "buckets": 6, "hash_seed": 1, "host": "h2", "hosts": hosts}
    ).cluster
    states = {0: "BACKUP", 1: "MASTER", 2: "BACKUP", 3: "FAULT", 4: "MASTER"}
    assert bucket_owners(cluster, states, owned=[1]) == [
        BucketOwner(0, "BACKUP", "h1", False),
        BucketOwner(1, "MASTER", "h2", True),
        BucketOwner(2, "BACKUP", "h3", False),
        BucketOwner(3, "FAULT", "h1", False),
        BucketOwner(4, "MASTER", "h2", False),  # master, not taken in yet: the handover delay
        BucketOwner(5, "unknown", "h3", False),
    ]


# --- the pages -----------------------------------------------------------------------------------------


HOST = """
[[fleet.hosts]]
name = "{name}"
url = "http://10.0.0.{n}:8000"
insecure_http = true
key_id = "fleet"
secret_file = "{secret}"
"""
CLUSTER = """\
[cluster]
interface = "eth0"
address = "198.18.10.100"
subnet = "198.18.10.0/24"
buckets = 4
hash_seed = 1
host = "h2"
hosts = [{ name = "h1", address = "198.18.10.1" }, { name = "h2", address = "198.18.10.2" }]
"""


def fleet_table(tmp_path, secret_name="fleet.secret") -> str:
    secret = tmp_path / "fleet.secret"
    secret.write_text("fleet-host-secret-0e1f\n")
    hosts = "".join(HOST.format(name=f"h{n}", n=n, secret=tmp_path / secret_name) for n in (1, 2, 3, 4))
    return '[fleet]\napps = ["site"]\n' + hosts


def open_console(tmp_path, clock, tables: str, *, signed_in: bool = True):
    """The receiver of a config of `tables` and [console], over a real queue: a client (signed in) and the queue."""
    apps = (
        ()
        if "[fleet]" in tables
        else (app_toml("web", 8000, extra="cluster = true\n" if "[cluster]" in tables else ""),)
    )
    loaded = make_config(tmp_path, *apps, server=NAMES, tables=tables + CONSOLE_TABLE, environ=SESSION_ENV)
    queue = Queue.for_state_dir(loaded.settings.state_dir, clock=clock)
    if signed_in:
        return console_client(loaded, queue, clock=clock), queue
    parts = {"DEPLOYER_CONFIG": loaded, "QUEUE": queue, "JOURNAL": Journal([]), "CLOCK": clock, "TESTING": True}
    return create_app(parts).test_client(), queue


@pytest.fixture
def controller(tmp_path, clock):
    return open_console(tmp_path, clock, fleet_table(tmp_path))


def test_the_fleet_page_shows_each_hosts_tag_health_and_age_and_marks_the_one_that_differs(controller, clock):
    client, queue = controller
    now = clock()
    queue.sightings.record_facts(
        [
            fact_from_answer("h1", "site", ANSWER, at=now - 30),
            fact_from_answer("h2", "site", {**ANSWER, "tag": "v1", "health": {"docker": "socket gone"}}, at=now - 30),
            fact_from_answer("h3", "site", {**ANSWER, "tag": "v1"}, at=now - 30),
            fact_from_answer("h4", "site", {**ANSWER, "tag": "v1"}, at=now - 400),
        ]
    )
    queue.sightings.record_facts([fact_from_problem("h4", "site", "<b>timed out</b>", at=now - 5)])
    page = get_page(client, "/console/fleet")
    cells = fleet_cells(page, "site")
    assert cells["h1"] == (
        "cell answered differs | v2 differs on green healthy last job job-00000000000000aa succeeded answered 30 s ago"
    )
    assert cells["h2"] == (
        "cell answered | v1 on green unhealthy: docker socket gone last job job-00000000000000aa succeeded "
        "answered 30 s ago"
    )
    assert (
        cells["h4"] == "cell unreachable | unreachable 5 s ago &lt;b&gt;timed out&lt;/b&gt; last answered 7 min ago: v1"
    )
    assert "Hosts that differ from the rest: h1 (site)." in page
    assert 'href="/console/fleet">Fleet</a>' in page and "/console/cluster" not in page


def test_the_fleet_page_shows_a_host_never_asked_as_unknown(controller):
    client, _ = controller
    page = get_page(client, "/console/fleet")
    assert fleet_cells(page, "site")["h2"] == "cell unknown | unknown never asked"
    assert "No rollout yet." in page


def test_the_fleet_page_shows_each_rollouts_hosts_batch_by_batch_with_its_job(controller):
    client, queue = controller
    rollout = queue.jobs.submit_manual(app="site", tag="v2", actor="cli:ann", kind="rollout", source={})
    steps = [RolloutHost("h1", 0, "v1", "pending"), RolloutHost("h2", 1, "v1", "pending")]
    queue.rollouts.plan_rollout(rollout.id, [*steps, RolloutHost("h3", -1, "v2", "skipped")])
    queue.rollouts.set_rollout_host(rollout.id, "h1", "done", host_job=JOB_A)
    queue.rollouts.set_rollout_host(rollout.id, "h2", "failed", reason="health <gate>", failure="health <gate>")
    page = get_page(client, "/console/fleet")
    assert f'<a href="/console/jobs/{rollout.id}">{rollout.id}</a>' in page
    assert [re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "T", row) for row in rollout_rows(page, rollout.id)] == [
        f"batch 1 h1 done v1 {JOB_A} T",
        "batch 2 h2 failed v1 - T health &lt;gate&gt;",
        "skipped (already on the tag) h3 skipped v2 - T",
    ]
    assert "health &lt;gate&gt;" in page and "health <gate>" not in page


def test_the_fleet_and_cluster_pages_are_404_where_the_config_has_no_such_table(tmp_path, clock):
    client, _ = open_console(tmp_path, clock, "")
    assert client.get("/console/fleet", base_url=HTTPS).status_code == 404
    assert client.get("/console/cluster", base_url=HTTPS).status_code == 404
    page = get_page(client, "/console/")
    assert "/console/fleet" not in page and "/console/cluster" not in page


@pytest.mark.parametrize("path", ["/console/fleet", "/console/cluster"])
def test_signed_out_the_fleet_and_cluster_pages_lead_to_the_sign_in_page(tmp_path, clock, path):
    client, _ = open_console(tmp_path, clock, fleet_table(tmp_path) + CLUSTER, signed_in=False)
    response = client.get(path, base_url=HTTPS)
    assert response.status_code == 302 and response.headers["Location"].startswith("/console/signin?next=")


def test_the_receiver_knows_the_fleet_by_name_without_reading_its_keys(tmp_path):
    # No secret file, and a CA file the receiver's account could not see: neither is looked at.
    text = fleet_table(tmp_path, secret_name="no-such.secret").replace(
        'key_id = "fleet"', 'key_id = "fleet"\nca_file = "/root/private/ca.pem"'
    )
    text += CONSOLE_TABLE
    receiver = config_module.parse_receiver(
        tomllib.loads(f'[deployer]\nstate_dir = "{tmp_path / "state"}"\n{text}'),
        path=tmp_path / "deployer.toml",
        environ=SESSION_ENV,
    )
    assert (receiver.fleet_hosts, receiver.fleet_apps, receiver.cluster) == (("h1", "h2", "h3", "h4"), ("site",), None)
    with pytest.raises(ConfigError, match="fleet.hosts"):
        config_module.parse_receiver(
            {"deployer": {"state_dir": str(tmp_path)}, "fleet": {"apps": ["site"], "hosts": [{"url": "x"}]}},
            path=tmp_path / "deployer.toml",
            environ={},
        )


def test_the_cluster_page_shows_each_buckets_owner_this_hosts_own_marked_and_the_agents_heartbeat(tmp_path, clock):
    client, queue = open_console(tmp_path, clock, CLUSTER)
    page = get_page(client, "/console/cluster")
    assert "The cluster agent (<code>deployer cluster run</code>) has never recorded" in page
    owners = [BucketOwner(0, "BACKUP", "h1", False), BucketOwner(1, "MASTER", "h2", True)]
    queue.sightings.record_cluster(
        host="h2", address="198.18.10.100", healthy=True, intent="join", problem=None, owners=owners
    )
    clock.now += 20
    page = get_page(client, "/console/cluster")
    assert "<h1>Cluster: 198.18.10.100</h1>" in page and 'href="/console/cluster">Cluster</a>' in page
    assert re.search(r'id="agent">Agent heartbeat 20 s ago <strong class="problem">\(stale', page)
    rows = bucket_rows(page)
    assert rows[0] == "0 h1 (expected) BACKUP h1 2026-01-01 00:00:00"
    assert rows[1] == "1 h2 (this host) MASTER h2 2026-01-01 00:00:00"
    assert (rows[2], rows[3]) == ("2 unknown unknown h1 -", "3 unknown unknown h2 -")
    assert '<tr id="bucket-1" class="mine">' in page


def test_a_buckets_since_stays_while_its_owner_does_and_moves_when_it_changes(tmp_path):
    now = {"t": 10.0}
    queue = Queue(tmp_path / "jobs.db", clock=lambda: now["t"])

    def record(*owners):
        queue.sightings.record_cluster(
            host="h2", address="198.18.10.100", healthy=True, intent="join", problem=None, owners=owners
        )

    record(BucketOwner(0, "BACKUP", "h1", False), BucketOwner(1, "MASTER", "h2", True))
    now["t"] = 20.0
    record(BucketOwner(0, "MASTER", "h2", True), BucketOwner(1, "MASTER", "h2", True))
    assert [(r.owner.bucket, r.owner.owner, r.since) for r in queue.sightings.bucket_owners()] == [
        (0, "h2", 20.0),
        (1, "h2", 10.0),
    ]
    assert queue.sightings.cluster_agent()["heartbeat_at"] == 20.0


def test_a_rollouts_job_page_names_its_app_without_a_link_to_a_page_the_controller_has_not(controller):
    client, queue = controller
    rollout = queue.jobs.submit_manual(app="site", tag="v2", actor="cli:ann", kind="rollout", source={})
    page = get_page(client, f"/console/jobs/{rollout.id}")
    assert "rollout of site v2" in page
    assert "/console/apps/site" not in page
    assert client.get("/console/apps/site", base_url=HTTPS).status_code == 404
