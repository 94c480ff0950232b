"""GET /apps/<app> answers from the host's own record, whoever changed it: a deploy run by hand on the host too.

The receiver reads the queue only (it may not read root's records): every record the engine writes is copied to
the queue's live table as it is written, so a command run by hand is seen at once, not at the worker's next job.
"""

from __future__ import annotations

from deployer.host.engine import Engine
from deployer.journal import Journal
from deployer.plan.records import AppState
from deployer.queue.queue import Queue
from deployer.wiring import build_live_publisher
from support.engine_fakes import Effects, FakeClock, FakeDocker, FakeNetfilter, FakeProber, NoRouting
from support.receiver import signed_call


def cli_engine(config, queue: Queue) -> Engine:
    """The engine a `deployer deploy` on the host builds, over fakes, telling the queue what it records."""
    effects = Effects()
    clock = FakeClock()
    return Engine(
        config,
        FakeDocker(effects),
        FakeNetfilter(effects),
        routing=NoRouting(),
        prober=FakeProber(effects),
        run_hook=lambda *a: None,
        journal=Journal([lambda event: None], clock=clock),
        environ={},
        clock=clock,
        sleep=clock.sleep,
        publish=queue.live.publish,
    )


def live(client) -> dict:
    body = signed_call(client, "GET", "/apps/web", content_type=None).get_json()
    return {k: body[k] for k in ("tag", "port_set", "job")}


def test_a_deploy_and_a_rollback_by_hand_are_what_get_apps_answers_at_once(settings, queue, client):
    engine = cli_engine(settings, queue)
    assert live(client) == {"tag": None, "port_set": None, "job": None}
    engine.deploy("web", "v1", actor="cli:ann")
    assert live(client) == {"tag": "v1", "port_set": "blue", "job": None}
    engine.deploy("web", "v2", actor="cli:ann")
    assert live(client) == {"tag": "v2", "port_set": "green", "job": None}
    engine.rollback("web", actor="cli:ann")
    assert live(client) == {"tag": "v1", "port_set": "blue", "job": None}


def test_an_uninstall_by_hand_leaves_no_tag_live(settings, queue, client):
    engine = cli_engine(settings, queue)
    engine.deploy("web", "v1", actor="cli:ann")
    engine.uninstall(actor="cli:ann")
    assert live(client) == {"tag": None, "port_set": None, "job": None}


def test_the_wirings_publisher_writes_nothing_before_a_queue_exists(settings):
    publish = build_live_publisher(settings)
    state_dir = settings.settings.state_dir
    publish(AppState(app="web"))
    assert not (state_dir / "queue").exists()  # no serve made it: the command does not make the shared folder


def test_the_wirings_publisher_copies_a_record_into_an_existing_queue(settings, queue):
    queue.live.set_active("web", "v0", "job-00000000000000aa", "green")  # what a job made live before
    engine = cli_engine(settings, queue)
    engine.store.publish = build_live_publisher(settings)  # as wiring.build_engine gives it
    engine.deploy("web", "v3", actor="cli:ann")
    assert {k: queue.live.live("web")[k] for k in ("tag", "port_set", "job")} == {
        "tag": "v3",
        "port_set": "blue",
        "job": None,
    }
