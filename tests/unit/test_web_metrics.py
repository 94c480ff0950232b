"""GET /metrics: the families shaped from plain facts (exact text), then scraped through Flask's test client over a
real queue and audit log in tmp, filled through their own stores, and read back with prometheus_client's parser."""

from __future__ import annotations

import dataclasses

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from deployer.audit import AuditLog
from deployer.config.receiver_files import receiver_files
from deployer.errors import ConfigError, StateError
from deployer.journal import Journal
from deployer.plan import canary
from deployer.plan.records import AppState, Instance
from deployer.queue.flows import FlowSample
from deployer.queue.live import LiveRelease
from deployer.queue.model import JobStatus
from deployer.queue.queue import Queue
from deployer.receiver import metrics
from deployer.receiver.web import create_app
from support.configs import app_toml, make_config
from support.receiver import NAMES, NOW, Clock

TOKEN = "metrics-scrape-token-5b1e9c"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def config(tmp_path, server: str = 'metrics_token_env = "METRICS_TOKEN"\n', **environ: str):
    return make_config(
        tmp_path,
        app_toml("web", 8000),
        app_toml("api", 8100),
        server=NAMES + server,
        environ={"METRICS_TOKEN": TOKEN, **environ},
    )


def receiver(settings, clock, events=None, **extra):
    journal = Journal([(events if events is not None else []).append])
    queue = Queue.for_state_dir(settings.settings.state_dir, clock=clock)
    return create_app(
        {"DEPLOYER_CONFIG": settings, "QUEUE": queue, "JOURNAL": journal, "CLOCK": clock, "TESTING": True, **extra}
    )


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed by prometheus_client: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def instance(port_set: str, tag: str, digest: str | None = None) -> Instance:
    return Instance(port_set, tag, f"registry/web:{tag}", digest, f"id-{tag}", f"web-{port_set}", "172.18.0.2", "now")


# --- the families, shaped from facts ---------------------------------------------------------------


def test_the_families_of_a_few_facts_render_exactly():
    found = metrics.Facts(
        outcomes=[("web", "release", "failed", 1), ("web", "release", "succeeded", 2)],
        run_times=[("web", 4.0), ("web", 45.5)],
        flips=[("web", 3.0), ("web", 120.0), (None, 9.0)],
        live=[LiveRelease("web", 'v1"x', "blue", "sha256:ab", 10), LiveRelease("api", None, None, None, None)],
        statuses={"succeeded": 2, "failed": 1},
        faults=["docker"],
        refusals=[(None, 2), (401, 5), (404, 1), (418, 1)],
    )
    registry = metrics.registry(lambda: found)
    text = generate_latest(registry).decode()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("# HELP"))
    assert body == "\n".join(
        [
            "# TYPE deployer_deploys_total counter",
            'deployer_deploys_total{app="web",kind="release",outcome="failed"} 1.0',
            'deployer_deploys_total{app="web",kind="release",outcome="succeeded"} 2.0',
            "# TYPE deployer_deploy_duration_seconds histogram",
            *[
                f'deployer_deploy_duration_seconds_bucket{{app="web",le="{le}"}} {n}'
                for le, n in [
                    ("1.0", "0.0"),
                    ("2.5", "0.0"),
                    ("5.0", "1.0"),
                    ("10.0", "1.0"),
                    ("20.0", "1.0"),
                    ("30.0", "1.0"),
                    ("60.0", "2.0"),
                    ("120.0", "2.0"),
                    ("300.0", "2.0"),
                    ("600.0", "2.0"),
                    ("1800.0", "2.0"),
                    ("+Inf", "2.0"),
                ]
            ],
            'deployer_deploy_duration_seconds_count{app="web"} 2.0',
            'deployer_deploy_duration_seconds_sum{app="web"} 49.5',
            "# TYPE deployer_flip_commit_seconds histogram",
            *[
                f'deployer_flip_commit_seconds_bucket{{app="web",le="{le}"}} {n}'
                for le, n in [
                    ("0.001", "0.0"),
                    ("0.0025", "0.0"),
                    ("0.005", "1.0"),
                    ("0.01", "1.0"),
                    ("0.025", "1.0"),
                    ("0.05", "1.0"),
                    ("0.1", "1.0"),
                    ("0.25", "2.0"),
                    ("0.5", "2.0"),
                    ("1.0", "2.0"),
                    ("2.5", "2.0"),
                    ("+Inf", "2.0"),
                ]
            ],
            'deployer_flip_commit_seconds_count{app="web"} 2.0',
            'deployer_flip_commit_seconds_sum{app="web"} 0.123',
            "# TYPE deployer_live_release_info gauge",
            'deployer_live_release_info{app="web",digest="sha256:ab",set="blue",tag="v1\\"x"} 1.0',
            "# TYPE deployer_canary_weight gauge",
            'deployer_canary_weight{app="web"} 10.0',
            'deployer_canary_weight{app="api"} 0.0',
            "# TYPE deployer_jobs gauge",
            'deployer_jobs{status="accepting"} 0.0',
            'deployer_jobs{status="queued"} 0.0',
            'deployer_jobs{status="running"} 0.0',
            'deployer_jobs{status="succeeded"} 2.0',
            'deployer_jobs{status="failed"} 1.0',
            'deployer_jobs{status="superseded"} 0.0',
            'deployer_jobs{status="skipped"} 0.0',
            "# TYPE deployer_open_faults gauge",
            'deployer_open_faults{part="disk"} 0.0',
            'deployer_open_faults{part="docker"} 1.0',
            'deployer_open_faults{part="image"} 0.0',
            'deployer_open_faults{part="netfilter"} 0.0',
            'deployer_open_faults{part="registry"} 0.0',
            'deployer_open_faults{part="worker"} 0.0',
            "# TYPE deployer_rejected_requests_total counter",
            'deployer_rejected_requests_total{reason="not_found"} 1.0',
            'deployer_rejected_requests_total{reason="other"} 1.0',
            'deployer_rejected_requests_total{reason="overflow"} 2.0',
            'deployer_rejected_requests_total{reason="unauthorized"} 5.0',
        ]
    )


def test_the_outbox_backlog_is_reported_only_when_there_is_an_outbox():
    assert "outbox" not in generate_latest(metrics.registry(lambda: metrics.Facts())).decode()
    text = generate_latest(metrics.registry(lambda: metrics.Facts(backlog={"github": 3}))).decode()
    assert samples(text)[("deployer_outbox_backlog", (("feed", "github"),))] == 3


def test_open_faults_are_the_parts_status_names():
    worker = {"heartbeat_at": NOW, "faults": {"registry": {"reason": "down", "since": NOW - 60}}}
    assert metrics.open_faults(worker, ["image"], now=NOW + 1, stale_after=15) == ["image", "registry"]
    assert metrics.open_faults(worker, [], now=NOW + 15, stale_after=15) == ["registry", "worker"]
    assert metrics.open_faults(None, [], now=NOW, stale_after=15) == ["worker"]


def test_a_refusals_reason_is_its_status_named_so_the_label_stays_bounded():
    assert metrics.rejection_reasons([(401, 3), (401, 2), (429, 7), (503, 1), (500, 1), (None, 4)]) == {
        "unauthorized": 5,
        "rate_limited": 7,
        "unavailable": 1,
        "error": 1,
        "overflow": 4,
    }


# --- scraped through the receiver ------------------------------------------------------------------


def run_job(queue: Queue, clock: Clock, tag: str, seconds: float, status: str) -> None:
    queue.jobs.submit_manual(app="web", tag=tag, actor="key:alice", source={})
    claim = queue.jobs.claim()
    clock.now += seconds
    assert queue.jobs.finish(claim.job, status, None if status == JobStatus.SUCCEEDED else "health gate")


def fill(settings, clock: Clock) -> None:
    """A host's history through the stores' own writers: two jobs, a canary, a fault, flips, refusals."""
    queue = Queue.for_state_dir(settings.settings.state_dir, clock=clock)
    run_job(queue, clock, "v1", 12.0, JobStatus.SUCCEEDED)
    run_job(queue, clock, "v2", 40.0, JobStatus.FAILED)
    queue.jobs.submit_manual(app="web", tag="v3", actor="key:alice", source={})
    live = AppState("web", active=instance("blue", "v1", "sha256:" + "1" * 64))
    queue.live.publish(
        canary.started(live, instance("green", "v3"), weight=20, sticky=False, seed=1, now="t", actor="a")
    )
    queue.heartbeat.heartbeat(pid=1, started_at=NOW, faults={"registry": {"reason": "down", "since": NOW}})
    audit = AuditLog.for_state_dir(settings.settings.state_dir)
    for ms in (4.0, 30.0):
        audit.append({"event": "step", "app": "web", "step": "flip", "outcome": "ok", "committed_ms": ms})
    audit.append({"event": "step", "app": "web", "step": "record", "outcome": "ok", "duration_ms": 1.0})
    audit.append({"event": "rejected_requests", "route": "/deploy", "status": 401, "count": 7, "source": "x"})
    audit.append({"event": "manual_request", "app": "web", "verdict": "rejected", "status": 403, "key_id": "bob"})
    audit.append({"event": "manual_request", "app": "web", "verdict": "queued", "status": 202, "key_id": "alice"})


def test_a_scrape_reports_what_the_queue_and_the_audit_log_hold(tmp_path):
    settings, clock = config(tmp_path), Clock()
    fill(settings, clock)
    answer = receiver(settings, clock).test_client().get("/metrics", headers=BEARER)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.content_type == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(answer.get_data(as_text=True))
    web = (("app", "web"),)
    assert found[("deployer_deploys_total", (("app", "web"), ("kind", "redeploy"), ("outcome", "succeeded")))] == 1
    assert found[("deployer_deploys_total", (("app", "web"), ("kind", "redeploy"), ("outcome", "failed")))] == 1
    assert found[("deployer_deploy_duration_seconds_count", web)] == 2
    assert found[("deployer_deploy_duration_seconds_sum", web)] == 52.0
    assert found[("deployer_deploy_duration_seconds_bucket", (*web, ("le", "20.0")))] == 1
    assert found[("deployer_flip_commit_seconds_count", web)] == 2
    assert found[("deployer_flip_commit_seconds_bucket", (*web, ("le", "0.005")))] == 1
    assert found[("deployer_flip_commit_seconds_sum", web)] == pytest.approx(0.034)
    assert (
        found[("deployer_live_release_info", (*web, ("digest", "sha256:" + "1" * 64), ("set", "blue"), ("tag", "v1")))]
        == 1
    )
    assert found[("deployer_canary_weight", web)] == 20
    assert {s: v for (n, s), v in found.items() if n == "deployer_jobs" and v} == {
        (("status", "queued"),): 1,
        (("status", "succeeded"),): 1,
        (("status", "failed"),): 1,
    }
    assert {s: v for (n, s), v in found.items() if n == "deployer_open_faults" and v} == {(("part", "registry"),): 1}
    assert {s: v for (n, s), v in found.items() if n == "deployer_rejected_requests_total"} == {
        (("reason", "unauthorized"),): 7,
        (("reason", "forbidden"),): 1,
    }


def test_two_receiver_processes_over_the_same_files_answer_the_same(tmp_path):
    settings, clock = config(tmp_path), Clock()
    fill(settings, clock)
    first, second = (receiver(settings, clock).test_client() for _ in range(2))
    answers = [client.get("/metrics", headers=BEARER).get_data() for client in (first, second, first)]
    assert answers[0] == answers[1] == answers[2]


def test_a_scraper_that_asks_for_openmetrics_gets_it(tmp_path):
    settings, clock = config(tmp_path), Clock()
    answer = (
        receiver(settings, clock)
        .test_client()
        .get("/metrics", headers={**BEARER, "Accept": "application/openmetrics-text; version=1.0.0"})
    )
    assert answer.content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert answer.get_data(as_text=True).endswith("# EOF\n")


def test_the_outbox_hook_reports_its_backlog(tmp_path):
    settings, clock = config(tmp_path), Clock()
    app = receiver(settings, clock, OUTBOX_BACKLOG=lambda: {"github": 2})
    found = samples(app.test_client().get("/metrics", headers=BEARER).get_data(as_text=True))
    assert found[("deployer_outbox_backlog", (("feed", "github"),))] == 2


def test_the_backlog_is_each_kept_feeds_distance_from_the_audit_logs_head(tmp_path):
    """The report loop's cursors, in the queue: serve retires the feeds the config dropped, each kept one is reported."""
    settings, clock = config(tmp_path), Clock()
    app = receiver(settings, clock)
    audit = app.extensions["deployer"].audit
    queue = app.extensions["deployer"].queue
    for feed in ("github", "notify:ops", "notify:gone"):
        queue.reports.begin(feed, 0)
    audit.append_many(
        {"event": "job.queued", "ts": f"2026-12-07T10:00:0{n}.000Z", "app": "web", "job": f"job-{n}"} for n in range(3)
    )
    queue.reports.save(dataclasses.replace(queue.reports.cursor("notify:ops"), seq=2))
    queue.reports.retire_others(["github", "notify:ops"])
    found = samples(app.test_client().get("/metrics", headers=BEARER).get_data(as_text=True))
    backlog = {
        dict(labels)["feed"]: value for (name, labels), value in found.items() if name == "deployer_outbox_backlog"
    }
    assert backlog == {"github": 3, "notify:ops": 1}


# --- who may scrape ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "address", "headers", "status"),
    [
        ("", "127.0.0.1", BEARER, 403),  # neither is set: nobody, not even loopback
        ('metrics_token_env = "METRICS_TOKEN"\n', "127.0.0.1", {}, 401),
        ('metrics_token_env = "METRICS_TOKEN"\n', "127.0.0.1", {"Authorization": "Bearer wrong"}, 401),
        ('metrics_token_env = "METRICS_TOKEN"\n', "203.0.113.9", BEARER, 200),
        ('metrics_allow = ["10.0.0.0/8"]\n', "10.9.8.7", {}, 200),
        ('metrics_allow = ["10.0.0.0/8"]\n', "::ffff:10.9.8.7", {}, 200),
        ('metrics_allow = ["10.0.0.0/8"]\n', "192.168.1.1", BEARER, 403),
        ('metrics_allow = ["10.0.0.0/8", "::1"]\n', "::1", {}, 200),
        ('metrics_allow = ["10.0.0.0/8"]\nmetrics_token_env = "METRICS_TOKEN"\n', "10.9.8.7", {}, 401),
        ('metrics_allow = ["10.0.0.0/8"]\nmetrics_token_env = "METRICS_TOKEN"\n', "192.168.1.1", BEARER, 403),
        ('metrics_allow = ["10.0.0.0/8"]\nmetrics_token_env = "METRICS_TOKEN"\n', "10.9.8.7", BEARER, 200),
    ],
)
def test_only_an_allowed_scraper_gets_the_metrics(tmp_path, server, address, headers, status):
    app = receiver(config(tmp_path, server), Clock())
    answer = app.test_client().get("/metrics", headers=headers, environ_base={"REMOTE_ADDR": address})
    assert answer.status_code == status, answer.get_data(as_text=True)
    if status != 200:
        assert answer.get_json()["error"]
        assert b"deployer_" not in answer.get_data()


def test_a_refused_scrape_is_counted_and_rate_limited_like_any_refusal(tmp_path):
    settings, clock, events = config(tmp_path), Clock(), []
    client = receiver(settings, clock, events).test_client()
    answers = [client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code for _ in range(31)]
    assert answers == [401] * 30 + [429]
    clock.now += 60  # the minute is over: its counts are written with the next request
    answer = client.get("/metrics", headers=BEARER)
    assert answer.status_code == 200
    rows = [e for e in events if e["event"] == "rejected_requests"]
    assert [(row["route"], row["status"], row["count"]) for row in rows] == [
        ("/metrics", 401, 30),
        ("/metrics", 429, 1),
    ]


def test_the_refusals_a_receiver_writes_move_the_counter(tmp_path):
    settings, clock = config(tmp_path), Clock()
    app = receiver(settings, clock)  # its journal writes nothing: the audit log gets what it records by hand
    client = app.test_client()
    client.get("/metrics")
    app.extensions["deployer"].rejections.emit = lambda event, **fields: AuditLog.for_state_dir(
        settings.settings.state_dir
    ).append({"event": event, **fields})
    app.extensions["deployer"].rejections.flush()
    found = samples(client.get("/metrics", headers=BEARER).get_data(as_text=True))
    assert found[("deployer_rejected_requests_total", (("reason", "unauthorized"),))] == 1


# --- the config -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            'metrics_allow = ["10.0.0.1/8"]\n',
            "'10.0.0.1/8' is not a network in CIDR notation: 10.0.0.1/8 has host bits set",
        ),
        ('metrics_allow = ["ten"]\n', "'ten' is not a network in CIDR notation"),
        ('metrics_allow = "10.0.0.0/8"\n', 'must be a list of networks, e.g. ["127.0.0.1/32", "10.0.0.0/8"]'),
        ('metrics_token = "x"\n', "secrets are not written in the config: use metrics_token_file or metrics_token_env"),
        ('metrics_token_file = "missing"\n', "cannot read secret file"),
        ('metrics_token_env = "SHORT"\n', "the token is shorter than 16 characters"),
    ],
)
def test_a_bad_metrics_setting_is_refused_with_its_key(tmp_path, server, message):
    with pytest.raises(ConfigError) as raised:
        config(tmp_path, server, SHORT="short")
    assert message in str(raised.value)
    assert "server.metrics_" in str(raised.value)


def test_metrics_allow_is_kept_as_networks(tmp_path):
    settings = config(tmp_path, 'metrics_allow = ["127.0.0.1", "10.0.0.0/8", "::1", "10.0.0.0/8"]\n')
    assert settings.server.metrics_allow == ("127.0.0.1/32", "10.0.0.0/8", "::1/128")
    assert settings.server.metrics_token is None


# --- what is live, as the queue keeps it --------------------------------------------------------------


def test_the_live_copy_keeps_the_digest_and_the_canary_weight(tmp_path):
    queue = Queue.for_state_dir(tmp_path / "state", clock=Clock())
    state = AppState("web", active=instance("blue", "v1", "sha256:aa"))
    queue.live.publish(state)
    queue.live.set_active("web", "v1", "job-00000000000000aa", "blue")  # the job that made it live
    assert queue.live.releases() == [LiveRelease("web", "v1", "blue", "sha256:aa", None)]
    queue.live.publish(
        canary.started(state, instance("green", "v2"), weight=5, sticky=False, seed=1, now="t", actor="a")
    )
    assert queue.live.releases() == [LiveRelease("web", "v1", "blue", "sha256:aa", 5)]
    queue.live.set_active("web", "v2", "job-00000000000000bb", "green")  # another tag: its digest is not known here
    assert queue.live.releases() == [LiveRelease("web", "v2", "green", None, 5)]


def test_the_token_file_is_checked_like_every_file_the_receiver_reads_and_masked(tmp_path):
    (tmp_path / "metrics.token").write_text(TOKEN + "\n")
    settings = config(tmp_path, 'metrics_token_file = "metrics.token"\n')
    assert settings.server.metrics_token == TOKEN
    assert ("server.metrics_token_file", tmp_path / "metrics.token") in [
        (item.key, item.path) for item in receiver_files(settings)
    ]
    assert TOKEN in settings.secrets()  # masked in the journal and in `check --print`


def test_a_store_that_cannot_be_read_is_a_503_not_a_partial_scrape(tmp_path, monkeypatch):
    settings, clock = config(tmp_path), Clock()
    app = receiver(settings, clock)

    def unreadable():
        raise StateError("cannot read the job queue: disk I/O error")

    monkeypatch.setattr(app.extensions["deployer"].queue.jobs, "outcomes", unreadable)
    answer = app.test_client().get("/metrics", headers=BEARER)
    assert (answer.status_code, answer.get_json()) == (503, {"error": "cannot read the job queue: disk I/O error"})
    assert answer.headers["Retry-After"] == "10"


def test_the_live_flows_are_a_gauge_per_instance_once_the_worker_has_sampled_them():
    assert "deployer_live_flows" not in generate_latest(metrics.registry(lambda: metrics.Facts())).decode()
    found = metrics.Facts(flows=[FlowSample("web", 1700000000.0, 3, 1, 0, "running")])
    text = generate_latest(metrics.registry(lambda: found)).decode()
    body = [line for line in text.splitlines() if line.startswith("deployer_live_flows")]
    assert body == [
        'deployer_live_flows{app="web",instance="live"} 3.0',
        'deployer_live_flows{app="web",instance="canary"} 1.0',
        'deployer_live_flows{app="web",instance="old"} 0.0',
        "deployer_live_flows_sampled 1.7e+09",
    ]
