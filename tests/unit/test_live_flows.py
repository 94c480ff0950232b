"""The console's live flows and health: conntrack's lines counted per instance (exact text), Docker's status read,
the sample kept in the queue, taken by the worker's heartbeat no more often than its cost allows."""

from __future__ import annotations

import pytest

from deployer.errors import ConntrackError, DockerUnavailable
from deployer.host.flows import FlowSampler
from deployer.host.state import StateStore
from deployer.journal import Journal
from deployer.plan import canary
from deployer.plan.flows import Flow, count, effective_share, health, parse_flow, sample_due, targets
from deployer.plan.records import AppState, Instance
from deployer.queue.flows import FlowSample
from deployer.queue.queue import Queue
from deployer.receiver.console.views import live_sample
from deployer.worker.loop import Worker
from support.configs import app_toml, make_config

ESTABLISHED = (
    "tcp      6 431999 ESTABLISHED src=198.51.100.7 dst=203.0.113.1 sport=51234 dport=8000 "
    "src=172.18.0.5 dst=198.51.100.7 sport=80 dport=51234 [ASSURED] mark=0 use=1"
)
TIME_WAIT = (
    "tcp      6 118 TIME_WAIT src=198.51.100.7 dst=203.0.113.1 sport=51230 dport=8000 "
    "src=172.18.0.5 dst=198.51.100.7 sport=80 dport=51230 [ASSURED] mark=0 use=1"
)
UDP = (
    "udp      17 29 src=198.51.100.8 dst=203.0.113.1 sport=40000 dport=8000 [UNREPLIED] "
    "src=172.18.0.6 dst=198.51.100.8 sport=80 dport=40000 mark=0 use=1"
)
EXTENDED = (
    "ipv4     2 tcp      6 300 SYN_RECV src=198.51.100.9 dst=203.0.113.1 sport=5 dport=9000 "
    "src=172.18.0.7 dst=198.51.100.9 sport=80 dport=5 mark=0 use=1"
)
ICMP = "icmp     1 29 src=198.51.100.7 dst=203.0.113.1 type=8 code=0 id=1 src=203.0.113.1 dst=198.51.100.7 type=0 code=0 id=1 mark=0 use=1"


def instance(port_set: str, tag: str, address: str) -> Instance:
    return Instance(port_set, tag, f"r/web:{tag}", None, f"id-{tag}", f"web-{port_set}", address, "now")


V1 = instance("blue", "v1", "172.18.0.5")
V2 = instance("green", "v2", "172.18.0.6")
V0 = instance("green", "v0", "172.18.0.4")


def with_canary(state: AppState, weight: int = 10) -> AppState:
    split = canary.Split(V2, weight, False, 1, "now")
    return AppState(state.app, state.active, state.previous, mode=canary.MODE, mode_detail=split.detail())


@pytest.fixture
def apps(tmp_path):
    config = make_config(tmp_path, app_toml("web", 8000, protocol="tcp", ports=[("udp", 8000, 80, 8101, 8102)]))
    return config


# --- conntrack's lines -----------------------------------------------------------------------------


def test_a_line_gives_its_protocol_external_port_and_the_address_that_answers():
    assert parse_flow(ESTABLISHED) == Flow("tcp", 8000, "172.18.0.5")
    assert parse_flow(UDP) == Flow("udp", 8000, "172.18.0.6")
    assert parse_flow(EXTENDED) == Flow("tcp", 9000, "172.18.0.7")


@pytest.mark.parametrize("line", [TIME_WAIT, ICMP, "", "conntrack v1.4.7: 3 flow entries have been shown.", "tcp 6"])
def test_an_ended_connection_another_protocol_or_noise_is_no_flow(line):
    assert parse_flow(line) is None


def test_flows_are_counted_per_app_and_instance_over_one_dump(apps):
    wanted = targets(apps.apps, [with_canary(AppState("web", active=V1, previous=V0))])
    assert wanted[("tcp", 8000, "172.18.0.5")] == ("web", "live")
    assert wanted[("udp", 8000, "172.18.0.6")] == ("web", "canary")
    other_port = ESTABLISHED.replace("dport=8000", "dport=8443")
    lines = [ESTABLISHED, ESTABLISHED, TIME_WAIT, UDP, other_port, ICMP]
    assert count(lines, wanted) == {"web": {"old": 0, "canary": 1, "live": 2}}


def test_an_address_docker_gave_again_counts_for_the_live_instance(apps):
    reused = instance("green", "v0", V1.address)
    wanted = targets(apps.apps, [AppState("web", active=V1, previous=reused)])
    assert count([ESTABLISHED], wanted) == {"web": {"live": 1}}


def test_an_app_not_in_the_config_or_with_nothing_live_has_no_target(apps):
    assert targets(apps.apps, [AppState("gone", active=V1), AppState("web")]) == {}


def test_the_canarys_effective_share_is_its_flows_over_the_apps():
    assert effective_share({"live": 3, "canary": 1}) == 25.0
    assert effective_share({"live": 0, "canary": 0}) is None  # no flow: no share, not 0 %
    assert effective_share({"live": 5}) is None


@pytest.mark.parametrize(
    ("state", "status", "shown"),
    [
        ("running", "Up 5 minutes (healthy)", "running (healthy)"),
        ("running", "Up 2 seconds (health: starting)", "running (starting)"),
        ("running", "Up 9 minutes (unhealthy)", "running (unhealthy)"),
        ("running", "Up 5 minutes", "running"),
        ("exited", "Exited (137) 4 seconds ago", "exited"),
        (None, None, "missing"),
    ],
)
def test_the_live_containers_health_is_dockers_state_and_healthcheck(state, status, shown):
    assert health(state, status) == shown


def test_a_sample_every_ten_seconds_at_once_on_a_change_and_never_more_often_than_its_cost_allows():
    assert sample_due(100.0, None, 0.0, changed=False)
    assert not sample_due(109.9, 100.0, 0.01, changed=False)
    assert sample_due(110.0, 100.0, 0.01, changed=False)
    assert sample_due(101.0, 100.0, 0.01, changed=True)
    assert not sample_due(110.0, 100.0, 0.5, changed=True)  # 0.5 s a sample: 25 s apart at least (2 %)
    assert sample_due(125.0, 100.0, 0.5, changed=False)


# --- the sampler, the queue's copy and the heartbeat -------------------------------------------------


def test_the_sampler_counts_the_records_instances_and_reads_the_live_containers_health(apps):
    store = StateStore(apps.settings.state_dir)
    store.save(with_canary(AppState("web", active=V1, previous=V0)))
    sampler = FlowSampler(
        apps,
        store,
        conntrack=lambda: [ESTABLISHED, UDP],
        containers=lambda: {"id-v1": ("running", "Up 1 hour (healthy)"), "id-v2": ("running", "Up 1 minute")},
    )
    assert sampler.sample() == {"web": {"live": 1, "canary": 1, "old": 0, "health": "running (healthy)"}}


def test_a_docker_that_does_not_answer_leaves_the_health_unknown_not_the_flows(apps):
    store = StateStore(apps.settings.state_dir)
    store.save(AppState("web", active=V1))

    def down():
        raise DockerUnavailable("the Docker daemon does not answer")

    sampler = FlowSampler(apps, store, conntrack=lambda: [ESTABLISHED], containers=down)
    assert sampler.sample() == {"web": {"live": 1, "health": None}}


def test_the_queue_keeps_the_last_sample_whole(tmp_path, clock):
    queue = Queue.for_state_dir(tmp_path, clock=clock)
    queue.flows.publish({"web": {"live": 3, "canary": 1, "health": "running"}, "api": {"live": 0}}, at=5.0)
    queue.flows.publish({"web": {"live": 2, "health": "exited"}}, at=15.0)
    [web] = queue.flows.samples().values()
    assert (web.app, web.sampled_at, web.counts(), web.health) == ("web", 15.0, {"live": 2}, "exited")


def test_the_heartbeat_samples_every_ten_seconds_and_on_a_change_and_publishes_nothing_it_could_not_read(config, clock):
    queue = Queue.for_state_dir(config.settings.state_dir, clock=clock)
    answers = iter([{"web": {"live": 4}}, ConntrackError("conntrack: no such file"), {"web": {"live": 1}}])
    taken = []

    def sample():
        taken.append(clock.now - start)
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    worker = Worker(config, queue, Journal([]), launch=None, reconcile=lambda app: [], clock=clock, flows=sample)
    start = clock.now
    shown = []
    for beat in range(8):  # a heartbeat every 2 s
        if beat == 6:
            queue.live.set_active("web", "v2", None, "green")  # a deploy: sampled at the next beat
        worker.sample_flows()
        web = queue.flows.samples()["web"]
        shown.append((web.sampled_at - start, web.live))
        clock.now += 2
    assert taken == [0, 10, 12]
    # The failed sample at 10 s left the last one, with its time.
    assert shown == [(0, 4)] * 6 + [(12, 1)] * 2


def test_the_overview_shows_the_old_instance_only_while_it_drains_and_no_number_without_a_sample():
    draining = live_sample(FlowSample("web", 1.0, 2, None, 5, "running"))
    assert (draining.flows, draining.share, draining.unwell) == ((("live", 2), ("old", 5)), None, False)
    assert live_sample(FlowSample("web", 1.0, 2, None, 0, None)).flows == (("live", 2),)
    assert live_sample(FlowSample("web", 1.0, 2, None, 0, "exited")).unwell
    assert live_sample(None) is None
