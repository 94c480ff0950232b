"""A canary through the engine and the fakes of tests/support/engine_fakes.py: the order of its effects, a crash
right after its commit, and what reconcile keeps."""

from __future__ import annotations

import pytest

from deployer.errors import CanaryError
from deployer.host import canary as canary_ops
from deployer.host.engine import CanaryStart
from deployer.plan import canary
from support.engine_fakes import NEW, OLD, OLD_RULE, Host, Killed

SPLIT = (
    f"-A DEPLOYER-web -p tcp -m tcp --dport 18080 -m statistic --mode random --probability 0.10000000009 "
    f'-m comment --comment "web green v2 canary" -j DNAT --to-destination {NEW}:80'
)
ONLY_NEW = (
    f'-A DEPLOYER-web -p tcp -m tcp --dport 18080 -m comment --comment "web green v2" -j DNAT --to-destination {NEW}:80'
)


def start(host: Host, weight: int = 10) -> None:
    host.engine().deploy("web", "v2", actor="cli:ann", canary_split=CanaryStart(weight))


def test_a_canary_deploy_splits_in_one_add_only_transaction_and_stops_nothing(host):
    host.taken()
    start(host)
    assert host.effects[-2:] == [  # add-only first, as every flip: the split and the old rule in front, at once
        f"restore *nat | -I DEPLOYER-web 1 {OLD_RULE.removeprefix('-A DEPLOYER-web ')} | "
        f"-I DEPLOYER-web 1 {SPLIT.removeprefix('-A DEPLOYER-web ')} | COMMIT",
        f"restore *nat | :DEPLOYER-web - [0:0] | {SPLIT} | {OLD_RULE} | COMMIT",
    ]
    assert not any(e.startswith(("stop", "remove")) for e in host.effects)
    assert host.chain() == [SPLIT, OLD_RULE]
    assert host.running() == ["deployer-web-blue running", "deployer-web-green running"]
    state = host.engine().store.load("web")
    assert (state.active.address, state.mode, canary.Split.of(state).canary.address) == (OLD, "canary", NEW)
    assert host.trail()[-1] == ("deploy.finished", None, "ok") and host.events[-1]["canary"] == 10


def test_a_deploy_during_a_canary_is_refused_and_changes_nothing(host):
    start(host)
    host.taken()
    with pytest.raises(CanaryError, match="promote web` or `deployer abort web` first"):
        host.engine().deploy("web", "v3", actor="cli:ann")
    assert not any(e.startswith(("pull", "run", "restore", "stop")) for e in host.effects)
    assert host.chain() == [SPLIT, OLD_RULE]


def test_promote_moves_everything_to_the_canary_then_drains_and_stops_the_old_instance(host):
    start(host)
    host.taken()
    canary_ops.promote(host.engine(), "web", actor="cli:ann")
    assert host.effects == [
        f"restore *nat | -I DEPLOYER-web 1 {ONLY_NEW.removeprefix('-A DEPLOYER-web ')} | COMMIT",
        f"restore *nat | :DEPLOYER-web - [0:0] | {ONLY_NEW} | COMMIT",
        f"conntrack -L -p tcp --orig-port-dst 18080 --reply-src {OLD} --state ESTABLISHED",
        "stop deployer-web-blue",
        "remove deployer-web-blue",
        f"conntrack -D -p tcp --orig-port-dst 18080 --reply-src {OLD}",
    ]
    assert host.record() == ("deployer-web-green", "deployer-web-blue")
    assert host.engine().store.load("web").mode == "serving"
    assert [e for e, _, _ in host.trail()][:: len(host.trail()) - 1] == ["promote.started", "promote.finished"]


def test_abort_moves_everything_back_and_stops_the_canary(host):
    start(host)
    host.taken()
    canary_ops.abort(host.engine(), "web", actor="cli:ann", reason="watchdog: 3 failed checks")
    assert host.effects[:2] == [
        f"restore *nat | -I DEPLOYER-web 1 {OLD_RULE.removeprefix('-A DEPLOYER-web ')} | COMMIT",
        f"restore *nat | :DEPLOYER-web - [0:0] | {OLD_RULE} | COMMIT",
    ]
    assert "stop deployer-web-green" in host.effects
    assert (host.chain(), host.running(), host.record()) == (
        [OLD_RULE],
        ["deployer-web-blue running"],
        ("deployer-web-blue", None),
    )
    assert host.events[0]["event"] == "abort.started" and host.events[0]["reason"] == "watchdog: 3 failed checks"
    # the end carries the reason too: GitHub's failure status and the notification are made from it
    [finished] = [e for e in host.events if e["event"] == "abort.finished"]
    assert (finished["tag"], finished["reason"]) == ("v1", "watchdog: 3 failed checks"), finished


def test_a_weight_change_is_one_transaction_and_journaled(host):
    start(host)
    host.taken()
    canary_ops.reweight(host.engine(), "web", 50, actor="cli:ann")
    assert host.chain() == [SPLIT.replace("0.10000000009", "0.50000000000"), OLD_RULE]
    assert [e["event"] for e in host.events if e["_durable"]] == ["canary.weight"]
    with pytest.raises(CanaryError, match="from 1 to 99"):
        canary_ops.reweight(host.engine(), "web", 100, actor="cli:ann")


def test_killed_right_after_the_canary_commit_both_serve_and_reconcile_keeps_the_split(host):
    host.hook("post-flip")
    host.taken()
    host.effects.kill_at = ("hook post-flip", 1)  # the first effect after the commit and the record
    with pytest.raises(Killed):
        start(host)
    assert host.chain() == [SPLIT, OLD_RULE]
    repairs = host.engine().reconcile("web", actor="cli:ann")
    assert repairs == []
    assert host.chain() == [SPLIT, OLD_RULE]
    assert host.running() == ["deployer-web-blue running", "deployer-web-green running"]


def test_reconcile_ends_a_canary_whose_instance_is_gone_and_restores_the_split_when_it_drifted(host):
    start(host)
    engine = host.engine()
    host.netfilter.restore(f"*nat\n:DEPLOYER-web - [0:0]\n{OLD_RULE}\nCOMMIT\n")  # somebody flushed the split
    assert engine.reconcile("web", actor="cli:ann") == [
        "rules of web set to the canary split the record names (10% to v2)"
    ]
    assert host.chain() == [SPLIT, OLD_RULE]
    green = next(c for c in host.docker.containers_by_id.values() if c.name == "deployer-web-green")
    host.docker.stop(green.id, 1)
    repairs = host.engine().reconcile("web", actor="cli:ann")
    assert repairs[0] == "canary of web ended: deployer-web-green is not running"
    assert host.chain() == [OLD_RULE] and host.running() == ["deployer-web-blue running"]
    assert host.engine().store.load("web").mode == "serving"


def test_status_shows_the_split_and_the_live_flows_of_each_instance(host):
    start(host)
    host.netfilter.flows["-p tcp --orig-port-dst 18080 --reply-src " + NEW] = ["tcp 6 100 ESTABLISHED src=..."]
    status = host.engine().status("web")[0]
    assert status.rules_match and status.mode == "canary"
    assert status.notes[-1] == f"live flows: v1 (blue {OLD}) 0, v2 (green {NEW}) 1"
    assert status.notes[0].startswith("mode: canary v2 on green (172.18.0.3) takes 10% per new connection")


# --- through the queue and the worker ------------------------------------------------------------


def test_a_signed_promote_job_promotes_the_canary_and_says_so(host):
    from deployer.journal import Journal
    from deployer.queue.queue import Queue
    from deployer.worker.run import JobTools, execute

    start(host)
    queue = Queue.for_state_dir(host.config.settings.state_dir)
    queue.jobs.submit_release(
        app="web", tag="v3", actor="github:octo (delivery d)", hook_id="1", delivery="d", source={}
    )
    queue.jobs.submit_manual(app="web", tag=None, actor="key:alice", source={"reason": "looks good"}, kind="promote")
    claim = queue.jobs.claim()
    assert (claim.job.kind, claim.superseded) == ("promote", [])  # first, alone; the release still waits
    events: list = []
    status = execute(
        claim.job,
        config=host.config,
        queue=queue,
        journal=Journal([events.append]),
        tools=JobTools(engine=lambda _: host.engine()),
    )
    assert status == "succeeded"
    assert queue.jobs.get(claim.job.id).reason == "promote: v2 serves everything"
    assert host.record() == ("deployer-web-green", "deployer-web-blue")
    assert queue.jobs.claim().job.kind == "release"


def test_a_release_of_an_app_with_canary_set_starts_a_canary(tmp_path):
    from deployer.config import parse
    from deployer.worker.run import canary_start

    app = parse(
        {
            "deployer": {"state_dir": str(tmp_path)},
            "apps": {
                "web": {
                    "image": "r/web",
                    "canary": 10,
                    "canary_sticky": True,
                    "canary_bake": 600,
                    "ports": [{"external": 1, "container": 2, "blue": 3, "green": 4}],
                }
            },
        },
        path=tmp_path / "d.toml",
        environ={},
    ).app("web")
    split = canary_start(app)
    assert (split.weight, split.sticky, split.bake_until is not None) == (10, True, True)


def test_each_sticky_canary_draws_its_own_seed_and_the_rules_use_the_recorded_one(host):
    """The seed decides which client addresses reach the canary: a public one would let anyone compute that."""
    seeds = []
    for _ in range(2):
        host.engine().deploy("web", "v2", actor="cli:ann", canary_split=CanaryStart(10, sticky=True))
        split = canary.Split.of(host.engine().store.load("web"))
        seeds.append(split.seed)
        assert split.seed != canary.LEGACY_SEED
        assert [rule for rule in host.chain() if "-m cluster" in rule] == [
            f"-A DEPLOYER-web -p tcp -m tcp --dport 18080 -m cluster --cluster-local-nodemask 0x00000001 "
            f"--cluster-total-nodes 10 --cluster-hash-seed 0x{split.seed:08x} "
            f'-m comment --comment "web green v2 canary" -j DNAT --to-destination {split.canary.address}:80'
        ]
        canary_ops.abort(host.engine(), "web", actor="cli:ann")
    assert seeds[0] != seeds[1]


def test_a_seed_given_by_hand_is_the_one_recorded(host):
    host.engine().deploy("web", "v2", actor="cli:ann", canary_split=CanaryStart(10, sticky=True, seed=0x1234))
    assert canary.Split.of(host.engine().store.load("web")).seed == 0x1234
    assert "--cluster-hash-seed 0x00001234" in host.chain()[0]
