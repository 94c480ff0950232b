"""The watchdog's decision: streaks, thresholds and the hysteresis that keeps a flapping instance from flapping
the rules."""

import pytest

from deployer.config import AppConfig, HealthCheck, PortMapping, WatchdogConfig
from deployer.errors import LockError
from deployer.host import watchdog
from deployer.host.health import ProbeResult
from deployer.host.state import StateStore
from deployer.host.watchdog import FAILED_OVER, SERVING, Streak, observe, phase_of
from deployer.journal import Journal
from deployer.plan import maintenance
from deployer.plan.records import AppState, Instance

POLICY = WatchdogConfig(interval=0.5, failures=3, recoveries=2)
ACTIVE = Instance(
    port_set="blue",
    tag="v1",
    image="demo",
    digest=None,
    container_id="c1",
    container_name="b",
    address="172.18.0.2",
    since="2026-11-21T09:00:00.000Z",
)


def run(probes: str, phase: str = SERVING, policy: WatchdogConfig = POLICY) -> list[tuple[int, str]]:
    """Feed probes ("+" pass, "-" fail) as the watch loop does, flipping the phase on each action and starting a
    new streak then; return (probe number, action) for every flip."""
    streak, flips = Streak(), []
    for number, probe in enumerate(probes, start=1):
        streak, action = observe(streak, probe == "+", phase, policy)
        if action:
            flips.append((number, action))
            phase = FAILED_OVER if action == "fail" else SERVING
            streak = Streak()
    return flips


def test_failures_in_a_row_fail_over_and_recoveries_in_a_row_come_back():
    assert run("++---") == [(5, "fail")]
    assert run("++---++") == [(5, "fail"), (7, "recover")]


def test_a_pass_resets_the_failure_streak():
    assert run("--+--+--+") == []
    assert run("--+---") == [(6, "fail")]


def test_a_failure_resets_the_recovery_streak():
    assert run("---+-+-+-++") == [(3, "fail"), (11, "recover")]


def test_an_instance_that_alternates_never_moves_the_rules():
    assert run("+-" * 50) == [] and run("-+" * 50) == []


@pytest.mark.parametrize("probes", ["--+-+---+-++--+--+---+++-", "-" * 7 + "+" * 5 + "-" * 9, "---++---++---++"])
def test_flips_are_never_closer_than_the_thresholds_allow(probes):
    flips = run(probes)
    assert flips
    for (before, _), (after, action) in zip(flips, flips[1:]):
        needed = POLICY.failures if action == "fail" else POLICY.recoveries
        assert after - before >= needed


def test_one_failure_threshold_flips_at_once():
    assert run("+-", policy=WatchdogConfig(failures=1, recoveries=1)) == [(2, "fail")]


def test_what_the_watchdog_watches_for():
    assert phase_of(AppState(app="demo")) is None
    assert phase_of(AppState(app="demo", active=ACTIVE)) == SERVING
    failed = maintenance.failover_on(AppState(app="demo", active=ACTIVE), now="t", failures=3, last="x")
    assert phase_of(failed) == FAILED_OVER
    manual = maintenance.manual_on(AppState(app="demo", active=ACTIVE), actor="cli:ops", now="t")
    assert phase_of(manual) is None  # the operator's: the watchdog leaves it alone
    assert phase_of(AppState(app="demo", active=ACTIVE, mode="forward")) is None


# --- the watch loop, with the flips recorded instead of applied -----------------------------------

APP = AppConfig(
    name="demo",
    image="demo",
    ports=(PortMapping(1000, 8080, "tcp", 1001, 1002),),
    health=HealthCheck(type="tcp", port=8080),
    watchdog=POLICY,
)


class Engine:
    def __init__(self, root):
        self.store = StateStore(root)
        self.events = []
        self.journal = Journal([self.events.append])


def watch_with(tmp_path, monkeypatch, probes, *, busy=0):
    """Run rounds of a real AppWatch over a real record; modes' flips write the record and are counted."""
    engine = Engine(tmp_path)
    engine.store.save(AppState(app="demo", active=ACTIVE))
    flips, results = [], iter(probes)
    locked = {"left": busy}

    def failover_on(engine_, app, *, container_id, failures, last):
        if locked["left"]:
            locked["left"] -= 1
            raise LockError("a deploy runs")
        flips.append(("fail", failures))
        engine_.store.save(maintenance.failover_on(engine_.store.load(app.name), now="t", failures=failures, last=last))

    def failover_off(engine_, app, *, container_id, passes):
        flips.append(("recover", passes))
        engine_.store.save(maintenance.back_to_serving(engine_.store.load(app.name), now="t", address=ACTIVE.address))

    monkeypatch.setattr(watchdog.modes, "failover_on", failover_on)
    monkeypatch.setattr(watchdog.modes, "failover_off", failover_off)
    watch = watchdog.AppWatch(
        engine, APP, stop=None, probe=lambda app, state: ProbeResult(next(results) == "+", "probe")
    )
    for _ in probes:
        watch.round()
    return flips, engine


def test_the_loop_flips_after_full_streaks_and_notes_failed_probes(tmp_path, monkeypatch):
    flips, engine = watch_with(tmp_path, monkeypatch, "+---+-++")
    assert flips == [("fail", 3), ("recover", 2)]
    assert [e["streak"] for e in engine.events if e["event"] == "watchdog.probe"] == [1, 2, 3]


def test_a_busy_app_is_tried_again_at_the_next_probe_with_the_streak_kept(tmp_path, monkeypatch):
    flips, _ = watch_with(tmp_path, monkeypatch, "----", busy=1)
    assert flips == [("fail", 4)]


def test_a_change_by_someone_else_starts_a_new_streak(tmp_path, monkeypatch):
    engine = Engine(tmp_path)
    engine.store.save(AppState(app="demo", active=ACTIVE))
    calls = []
    monkeypatch.setattr(watchdog.modes, "failover_on", lambda *a, **k: calls.append(k))
    watch = watchdog.AppWatch(engine, APP, stop=None, probe=lambda app, state: ProbeResult(False, "refused"))
    watch.round()
    watch.round()
    # A deploy replaced the instance: two failures of the old one do not count against the new one.
    engine.store.save(AppState(app="demo", active=Instance(**{**ACTIVE.__dict__, "container_id": "c2"})))
    watch.round()
    watch.round()
    assert calls == []
    watch.round()
    assert [c["container_id"] for c in calls] == ["c2"]


# --- a canary ------------------------------------------------------------------------------------

CANARY_GREEN = Instance(
    port_set="green",
    tag="v2",
    image="demo",
    digest=None,
    container_id="c2",
    container_name="g",
    address="172.18.0.3",
    since="2026-11-21T10:00:00.000Z",
)


def canary_watch(tmp_path, monkeypatch, probes, *, bake_until=None):
    from deployer.plan import canary

    engine = Engine(tmp_path)
    engine.store.save(
        canary.started(
            AppState(app="demo", active=ACTIVE),
            CANARY_GREEN,
            weight=10,
            sticky=False,
            seed=1,
            now="t",
            actor="cli:ann",
            bake_until=bake_until,
        )
    )
    calls, probed, results = [], [], iter(probes)

    def ending(kind):
        def end(engine_, app_name, *, actor, reason):
            calls.append((kind, actor, reason))
            decide = canary.aborted if kind == "abort" else canary.promoted
            engine_.store.save(decide(engine_.store.load(app_name), now="t"))

        return end

    monkeypatch.setattr(watchdog.canary_ops, "abort", ending("abort"))
    monkeypatch.setattr(watchdog.canary_ops, "promote", ending("promote"))
    monkeypatch.setattr(watchdog.modes, "failover_on", lambda *a, **k: calls.append(("failover", k)))

    def probe(app, state):
        probed.append(watchdog.watched(state).container_id)
        return ProbeResult(next(results) == "+", "GET /healthz: refused")

    watch = watchdog.AppWatch(engine, APP, stop=None, probe=probe)
    for _ in probes:
        watch.round()
    return calls, probed


def test_a_canary_that_fails_its_checks_is_aborted_with_the_reason(tmp_path, monkeypatch):
    calls, probed = canary_watch(tmp_path, monkeypatch, "+---")
    assert probed == ["c2"] * 4  # the canary is what is watched while it runs
    assert calls == [("abort", "watchdog", "the canary failed 3 health checks in a row; last: GET /healthz: refused")]


def test_a_canary_is_promoted_once_its_bake_time_is_over_and_never_before(tmp_path, monkeypatch):
    calls, _ = canary_watch(tmp_path, monkeypatch, "++++", bake_until="2999-01-01T00:00:00.000Z")
    assert calls == []
    calls, _ = canary_watch(tmp_path, monkeypatch, "-+", bake_until="2000-01-01T00:00:00.000Z")
    assert calls == [("promote", "watchdog", "its bake time is over and it passed its health checks")]
