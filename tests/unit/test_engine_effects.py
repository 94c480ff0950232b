"""The engine driven through hand-written fakes of its ports (tests/support/engine_fakes.py): the exact order of
its effects, without root. A "kill" stops the engine where the integration crash tests SIGKILL the deployer
(tests/integration/test_crash.py); a new engine then reconciles over what it left.
"""

from __future__ import annotations

from typing import Any

import pytest

from deployer.errors import (
    DiskFull,
    DockerUnavailable,
    HealthCheckFailed,
    HookFailed,
    RegistryUnavailable,
    RulesError,
    StateError,
)
from support.engine_fakes import NEW, OLD, OLD_RULE, FakeNetfilter, Host, Killed, dnat

TCP_TO_OLD = ["-p", "tcp", "--orig-port-dst", "18080", "--dst-nat", OLD]
NEW_RULE = dnat(NEW, "green", "v2")
BASE = (
    "restore *nat | :DEPLOYER - [0:0] | :DEPLOYER-POSTROUTING - [0:0] | :DEPLOYER-web - [0:0] | "
    '-A DEPLOYER-POSTROUTING -s 127.0.0.0/8 -o deployer0 -m comment --comment "deployer: loopback clients" '
    "-j MASQUERADE | -A DEPLOYER -j DEPLOYER-web | -I PREROUTING 1 -m addrtype --dst-type LOCAL -j DEPLOYER | "
    "-I OUTPUT 1 -m addrtype --dst-type LOCAL -j DEPLOYER | -A POSTROUTING -j DEPLOYER-POSTROUTING | COMMIT"
)
PREPARE_BRIDGE = ["network deployer deployer0", "route_localnet deployer0"]
START_GREEN = [
    "pull 127.0.0.1:5000/web:v2",
    "network deployer deployer0",
    "run deployer-web-green 127.0.0.1:5000/web:v2 restart=no",
]
GREEN_PASSES = ["probe 127.0.0.1:18082", "probe 127.0.0.1:18082", "restart-policy deployer-web-green unless-stopped"]
TAKEOVER = f"restore *nat | -I DEPLOYER-web 1 {NEW_RULE.removeprefix('-A DEPLOYER-web ')} | COMMIT"
CLEANUP = f"restore *nat | :DEPLOYER-web - [0:0] | {NEW_RULE} | COMMIT"
PUT_BACK = f"restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE} | COMMIT"


def test_the_first_deploy_builds_the_base_chains_then_points_the_app_chain_at_blue(tmp_path):
    host = Host(tmp_path)
    host.engine().deploy("web", "v1", actor="cli:ann")
    assert host.taken() == [
        "pull 127.0.0.1:5000/web:v1",
        "network deployer deployer0",
        "run deployer-web-blue 127.0.0.1:5000/web:v1 restart=no",
        "probe 127.0.0.1:18081",
        "probe 127.0.0.1:18081",
        "restart-policy deployer-web-blue unless-stopped",
        *PREPARE_BRIDGE,
        BASE,  # the app chain did not exist: the jumps and chains first, in one transaction
        f"restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE} | COMMIT",
    ]
    assert (host.chain(), host.running(), host.record()) == (
        [OLD_RULE],
        ["deployer-web-blue running"],
        ("deployer-web-blue", None),
    )


def test_a_deploy_gates_green_flips_to_it_then_drains_and_retires_blue(host):
    host.taken()
    result = host.engine().deploy("web", "v2", actor="cli:ann", job="j-1")
    assert host.effects == [
        *PREPARE_BRIDGE,  # the reconcile before the deploy: the base is in place, nothing to repair
        *START_GREEN,
        *GREEN_PASSES,
        TAKEOVER,  # add-only, so new flows move at once (a tcp-only app has no conntrack entries to delete)
        CLEANUP,  # the tidy, out of the flip's timed step: the shadowed old rule goes
        "conntrack -L -p tcp --orig-port-dst 18080 --reply-src 172.18.0.2 --state ESTABLISHED",  # the drain
        "stop deployer-web-blue",
        "remove deployer-web-blue",
        "conntrack -D -p tcp --orig-port-dst 18080 --reply-src 172.18.0.2",
    ]
    assert host.trail() == [
        ("deploy.started", None, None),
        ("step", "pull", "ok"),
        ("step", "start", "ok"),
        ("step", "health", "ok"),
        ("step", "flip", "ok"),
        ("step", "record", "ok"),
        ("step", "conntrack", "ok"),
        ("step", "tidy", "ok"),
        ("step", "drain", "ok"),
        ("step", "stop", "ok"),
        ("deploy.finished", None, "ok"),
    ]
    finished = host.events[-1]
    assert {k: finished[k] for k in ("app", "job", "actor", "tag", "set", "digest")} == {
        "app": "web",
        "job": "j-1",
        "actor": "cli:ann",
        "tag": "v2",
        "set": "green",
        "digest": "sha256:v2",
    }
    assert (result.port_set, result.previous_tag) == ("green", "v1")
    assert (host.chain(), host.running(), host.record()) == (
        [NEW_RULE],
        ["deployer-web-green running"],
        ("deployer-web-green", "deployer-web-blue"),
    )


def test_a_flip_reads_the_app_chain_once_and_its_rewrite_stands_for_the_read_back(host):
    host.taken()
    engine = host.engine()
    host.netfilter.reads.clear()
    engine.deploy("web", "v2", actor="cli:ann")
    assert host.netfilter.reads.count("DEPLOYER-web") == 1
    assert host.effects[host.effects.index(TAKEOVER) + 1] == CLEANUP  # the whole chain, as wanted, last


def test_a_failed_health_gate_removes_green_and_leaves_the_rules_on_blue(host):
    host.taken()
    host.prober.scripts[18082] = "-"
    with pytest.raises(HealthCheckFailed):
        host.engine().deploy("web", "v2", actor="cli:ann")
    assert host.effects == [
        *PREPARE_BRIDGE,
        *START_GREEN,
        *["probe 127.0.0.1:18082"] * 4,  # 3 s at 1 s intervals
        "remove deployer-web-green",
    ]
    assert host.trail()[-3:] == [
        ("step", "health", "failed"),
        ("step", "remove-new", "ok"),
        ("deploy.failed", None, "failed"),
    ]
    assert (host.events[-1]["tag"], host.events[-1]["error_type"]) == ("v2", "HealthCheckFailed")
    assert (host.chain(), host.running(), host.record()) == (
        [OLD_RULE],
        ["deployer-web-blue running"],
        ("deployer-web-blue", None),
    )


def test_a_deploy_whose_tidy_is_refused_keeps_serving_green_and_leaves_the_shadowed_rule_to_reconcile(host):
    host.taken()
    host.netfilter.refuse = lambda text: text.startswith("*nat\n:DEPLOYER-web") and NEW in text
    host.engine().deploy("web", "v2", actor="cli:ann")
    assert host.effects[host.effects.index(TAKEOVER) :][:2] == [TAKEOVER, CLEANUP]  # no put-back: green serves
    assert ("step", "tidy", "failed") in host.trail()
    assert (host.chain(), host.running(), host.record()) == (
        [NEW_RULE, OLD_RULE],
        ["deployer-web-green running"],
        ("deployer-web-green", "deployer-web-blue"),
    )
    host.netfilter.refuse = lambda text: False
    host.taken()
    assert host.engine().reconcile("web", actor="cli:ann") == ["shadowed rules of web removed"]
    assert host.effects == [*PREPARE_BRIDGE, CLEANUP]  # read once, then only the tidy: no second takeover
    assert host.chain() == [NEW_RULE]


def test_a_flip_whose_rewrite_is_refused_puts_the_old_rules_back(host):
    host.taken()
    engine = host.engine()
    web = engine.config.app("web")
    host.netfilter.refuse = lambda text: text.startswith("*nat\n:DEPLOYER-web") and NEW in text
    with pytest.raises(RulesError, match="the previous rules were restored"):
        engine.chains.flip(web, [NEW_RULE])
    assert host.effects == [TAKEOVER, CLEANUP, PUT_BACK]
    assert host.chain() == [OLD_RULE]


def test_a_failing_post_healthy_hook_stops_the_deploy_before_the_flip_and_runs_on_failure(host):
    host.taken()
    host.hook("post-healthy", exit_code=3)
    host.hook("on-failure")
    with pytest.raises(HookFailed, match="hook post-healthy exited with 3"):
        host.engine().deploy("web", "v2", actor="cli:ann")
    assert host.effects == [
        *PREPARE_BRIDGE,
        *START_GREEN,
        *GREEN_PASSES,
        "hook post-healthy",
        "remove deployer-web-green",
        "hook on-failure",
    ]
    assert host.trail()[-4:] == [
        ("step", "hook post-healthy", "failed"),
        ("step", "remove-new", "ok"),
        ("step", "hook on-failure", "ok"),
        ("deploy.failed", None, "failed"),
    ]
    assert (host.chain(), host.running(), host.record()) == (
        [OLD_RULE],
        ["deployer-web-blue running"],
        ("deployer-web-blue", None),
    )


def kill_deploy(host: Host, monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Run `deploy web v2` and kill it where test_crash.py does."""
    engine = host.engine()
    if point == "after-flip":  # the flip's move committed; the record was not written, the tidy not run

        def die(state: Any) -> None:
            raise Killed("record")

        monkeypatch.setattr(engine.store, "save", die)
    else:
        host.effects.kill_at = {
            "after-start": ("probe 127.0.0.1:18082", 1),  # the health step's first probe
            "during-health": ("probe 127.0.0.1:18082", 2),
            "during-drain": ("conntrack -L", 1),
        }[point]
    with pytest.raises(Killed):
        engine.deploy("web", "v2", actor="cli:ann")
    host.taken()


STOP_GREEN = [
    "stop deployer-web-green",
    "remove deployer-web-green",
    "conntrack -D -p tcp --orig-port-dst 18080 --reply-src 172.18.0.3",
]
STOP_BLUE = [
    "stop deployer-web-blue",
    "remove deployer-web-blue",
    "conntrack -D -p tcp --orig-port-dst 18080 --reply-src 172.18.0.2",
]
CRASHES = {
    # point: (the rules at the kill, what reconcile does, its repairs, the rules and record after)
    "after-start": (
        [OLD_RULE],
        [*PREPARE_BRIDGE, *STOP_GREEN],
        ["removed deployer-web-green (v2, running), which was not serving"],
        [OLD_RULE],
        ("deployer-web-blue", None),
    ),
    "during-health": (
        [OLD_RULE],
        [*PREPARE_BRIDGE, *STOP_GREEN],
        ["removed deployer-web-green (v2, running), which was not serving"],
        [OLD_RULE],
        ("deployer-web-blue", None),
    ),
    # The shadowed blue rule matches nothing new: green serves, so it stays; the tidy the crash skipped runs.
    "after-flip": (
        [NEW_RULE, OLD_RULE],
        [*PREPARE_BRIDGE, CLEANUP, *STOP_BLUE],
        [
            "shadowed rules of web removed",
            "record of web set to green deployer-web-green (v2)",
            "removed deployer-web-blue (v1, running), which was not serving",
        ],
        [NEW_RULE],
        ("deployer-web-green", "deployer-web-blue"),
    ),
    "during-drain": (
        [NEW_RULE],
        [*PREPARE_BRIDGE, *STOP_BLUE],
        ["removed deployer-web-blue (v1, running), which was not serving"],
        [NEW_RULE],
        ("deployer-web-green", "deployer-web-blue"),
    ),
}


@pytest.mark.parametrize("point", list(CRASHES))
def test_reconcile_after_a_killed_deploy_keeps_the_serving_instance_and_removes_the_other(host, monkeypatch, point):
    at_kill, effects, repairs, rules_after, record_after = CRASHES[point]
    kill_deploy(host, monkeypatch, point)
    assert host.chain() == at_kill
    assert host.running() == ["deployer-web-blue running", "deployer-web-green running"]

    assert host.engine().reconcile("web", actor="cli:ann") == repairs
    assert host.effects == effects  # the traffic never moves: the rules already lead to a running instance
    assert host.trail() == [("reconcile.repair", None, None)] * len(repairs)
    kept = record_after[0]
    assert (host.chain(), host.running(), host.record()) == (rules_after, [f"{kept} running"], record_after)

    host.taken()
    assert host.engine().reconcile("web", actor="cli:ann") == []
    assert host.effects == PREPARE_BRIDGE


def test_reconcile_after_a_switch_of_backends_writes_the_new_rules_first_then_removes_the_old(host):
    host.taken()
    old, new = host.netfilter, FakeNetfilter(host.effects)
    host.netfilter, host.retired = new, old  # the config now names the other backend
    assert host.engine().reconcile("web", actor="cli:ann") == [
        "jumps and chains of web restored",
        "rules of web pointed at blue 172.18.0.2 (v1)",
        "DEPLOYER-web removed from the previous backend",
        "the previous backend's base chains removed",
    ]
    assert host.effects == [
        *PREPARE_BRIDGE,
        BASE,  # the new backend first: it serves before the old one loses anything
        f"restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE} | COMMIT",
        "restore *nat | -D DEPLOYER -j DEPLOYER-web | -F DEPLOYER-web | -X DEPLOYER-web | COMMIT",
        "restore *nat | -D PREROUTING -m addrtype --dst-type LOCAL -j DEPLOYER | "
        "-D OUTPUT -m addrtype --dst-type LOCAL -j DEPLOYER | -D POSTROUTING -j DEPLOYER-POSTROUTING | "
        "-F DEPLOYER | -F DEPLOYER-POSTROUTING | -X DEPLOYER | -X DEPLOYER-POSTROUTING | COMMIT",
    ]
    assert [c for c in old.tables["nat"] if c.startswith("DEPLOYER")] == []
    assert host.chain() == [OLD_RULE]
    host.taken()
    assert host.engine().reconcile("web", actor="cli:ann") == []  # nothing left of the old backend
    assert host.effects == PREPARE_BRIDGE


# --- failures that the journal now names alike ---------------------------------------------------------


def test_a_deploy_that_cannot_read_its_record_fails_with_the_error_type_and_changes_nothing(host):
    host.taken()
    (host.tmp_path / "state" / "apps" / "web.json").write_text("{not json")
    with pytest.raises(StateError):
        host.engine().deploy("web", "v2", actor="cli:ann")
    assert host.effects == []
    assert host.trail() == [("deploy.started", None, None), ("deploy.failed", None, "failed")]
    assert host.events[-1]["error_type"] == "StateError"


def test_a_deploy_whose_record_cannot_be_written_after_the_flip_says_it_failed(host, monkeypatch):
    host.taken()
    engine = host.engine()

    def unwritable(state: Any) -> None:
        raise StateError("cannot write web.json: No space left on device")

    monkeypatch.setattr(engine.store, "save", unwritable)
    with pytest.raises(StateError):
        engine.deploy("web", "v2", actor="cli:ann")
    # Traffic is on green already: nothing is undone, and the old instance is left for reconcile to retire.
    assert host.effects == [*PREPARE_BRIDGE, *START_GREEN, *GREEN_PASSES, TAKEOVER]  # the tidy too: reconcile's
    assert host.trail()[-3:] == [
        ("step", "flip", "ok"),
        ("step", "record", "failed"),
        ("deploy.failed", None, "failed"),
    ]
    assert host.chain() == [NEW_RULE, OLD_RULE]  # green's rule leads; blue's matches nothing new


# --- mode changes through the same chains ------------------------------------------------------------


REDIRECT = (
    '-A DEPLOYER-web -p tcp -m tcp --dport 18080 -m comment --comment "web maintenance" -j REDIRECT --to-ports 8999'
)


def test_maintenance_on_flips_the_chain_to_the_responder_and_off_flips_it_back(host):
    from deployer.host import modes

    host.taken()
    modes.maintenance_on(host.engine(), "web", actor="cli:ann", message="back soon")
    assert host.chain() == [REDIRECT]
    assert host.effects == [
        f"restore *nat | -I DEPLOYER-web 1 {REDIRECT.removeprefix('-A DEPLOYER-web ')} | COMMIT",
        f"restore *nat | :DEPLOYER-web - [0:0] | {REDIRECT} | COMMIT",
    ]
    assert [(e["event"], e["outcome"], e["mode"], e["message"]) for e in host.events if e["_durable"]] == [
        ("maintenance.on", "ok", "maintenance", "back soon")
    ]

    host.taken()
    modes.maintenance_off(host.engine(), "web", actor="cli:ann")
    assert host.effects == [
        "probe 127.0.0.1:18081",  # the active instance must pass before the page goes
        f"restore *nat | -I DEPLOYER-web 1 {OLD_RULE.removeprefix('-A DEPLOYER-web ')} | COMMIT",
        PUT_BACK,
    ]
    assert host.chain() == [OLD_RULE]


def test_a_refused_mode_change_is_journaled_failed_with_its_error_type(host):
    from deployer.host import modes

    host.taken()
    host.netfilter.refuse = lambda text: "REDIRECT" in text
    with pytest.raises(RulesError):
        modes.maintenance_on(host.engine(), "web", actor="cli:ann")
    [event] = [e for e in host.events if e["_durable"]]
    assert (event["event"], event["outcome"], event["error_type"]) == ("maintenance.on", "failed", "RulesError")
    assert host.chain() == [OLD_RULE] and host.record() == ("deployer-web-blue", None)


@pytest.mark.parametrize(
    "waits, hooks, ended", [(True, [], "deploy.waiting"), (False, ["hook on-failure"], "deploy.failed")]
)
def test_a_registry_down_before_the_flip_changes_nothing_and_runs_on_failure_only_when_the_job_gives_up(
    host, monkeypatch, waits, hooks, ended
):
    host.taken()
    host.hook("on-failure")

    def refused(release, auth=None):
        host.effects.add(f"pull {release.reference}")
        raise RegistryUnavailable(f"cannot pull {release.reference}: connection refused")

    monkeypatch.setattr(host.docker, "pull", refused)
    with pytest.raises(RegistryUnavailable):
        host.engine().deploy("web", "v2", actor="worker", wait_on_transient=waits)
    assert host.effects == [*PREPARE_BRIDGE, "pull 127.0.0.1:5000/web:v2", *hooks]
    assert host.trail()[-1] == (ended, None, "waiting" if waits else "failed")
    assert (host.chain(), host.running(), host.record()) == (
        [OLD_RULE],
        ["deployer-web-blue running"],
        ("deployer-web-blue", None),
    )


@pytest.mark.parametrize(
    "waits, hooks, ended", [(True, [], "deploy.waiting"), (False, ["hook on-failure"], "deploy.failed")]
)
def test_a_daemon_down_at_the_first_step_runs_on_failure_only_when_the_job_gives_up(
    host, monkeypatch, waits, hooks, ended
):
    host.taken()
    host.hook("on-failure")

    def down(filters):
        raise DockerUnavailable("the Docker daemon at unix:///x.sock does not answer (list containers)")

    monkeypatch.setattr(host.docker, "containers", down)
    with pytest.raises(DockerUnavailable):
        host.engine().deploy("web", "v2", actor="worker", wait_on_transient=waits)
    assert [e for e in host.effects if e.startswith("hook")] == hooks
    assert host.trail()[-1] == (ended, None, "waiting" if waits else "failed")
    assert host.chain() == [OLD_RULE]


def test_a_full_disk_under_the_record_after_the_flip_is_a_failure_not_a_wait(host, monkeypatch):
    host.taken()
    host.hook("on-failure")
    engine = host.engine()

    def full(state):
        host.effects.add("save record")
        raise DiskFull("cannot write state/web.json: No space left on device")

    monkeypatch.setattr(engine.store, "save", full)
    with pytest.raises(DiskFull):
        engine.deploy("web", "v2", actor="worker", wait_on_transient=True)
    assert host.effects[-1] == "save record"  # the flip happened: no on-failure, and no `deploy.waiting`
    assert host.trail()[-1] == ("deploy.failed", None, "failed")
