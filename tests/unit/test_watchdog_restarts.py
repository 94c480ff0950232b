"""A watchdog that dies under `serve --watch` is started again, with the children's backoff, each restart logged
and audited; an app's watch that dies stops the whole watchdog, so that no app is left without failover."""

from __future__ import annotations

import threading

import pytest

from deployer.errors import WatchdogDied
from deployer.host import watchdog
from deployer.journal import Journal
from deployer.worker import supervisor
from deployer.worker.supervisor import Backoff, keep_thread_running


class FakeStop:
    """A stop whose waits return at once, set by the test's target when it is done."""

    def __init__(self) -> None:
        self.flag = False
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return self.flag

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self.flag


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


@pytest.mark.parametrize(
    ("runs", "delays"),
    [
        ([], []),
        (["raise"], [1.0]),
        (["raise", "raise", "raise"], [1.0, 2.0, 4.0]),
        (["return", "raise"], [1.0, 2.0]),
    ],
)
def test_each_death_is_restarted_after_the_backoff_and_reported(runs, delays):
    stop, reported, started = FakeStop(), [], []

    def target(stopping) -> None:
        started.append(len(started))
        what = runs[len(started) - 1] if len(started) <= len(runs) else "last"
        if what == "raise":
            raise RuntimeError("socket closed")
        if what == "last":
            stopping.flag = True  # runs until stopped: a stop ends the loop, with no restart

    keep_thread_running("the watchdog", target, stop, backoff=Backoff(), clock=Clock(), on_restart=reported.append)
    assert len(started) == len(runs) + 1
    assert stop.waits == delays
    said = {"raise": "died: RuntimeError: socket closed", "return": "ended on its own"}
    assert reported == [
        f"the watchdog {said[what]}; starting it again in {delay:g} s" for what, delay in zip(runs, delays)
    ]


class Chains:
    pass


class Engine:
    def __init__(self) -> None:
        self.chains = Chains()


@pytest.fixture
def one_watched_app(monkeypatch):
    retries: list[str] = []
    app = type("App", (), {"name": "web"})()
    monkeypatch.setattr(watchdog, "watched_apps", lambda config: [app])
    monkeypatch.setattr(watchdog.modes, "ensure_retries", lambda chains, apps: retries.append("ensure"))
    monkeypatch.setattr(watchdog.modes, "remove_retries", lambda chains: retries.append("remove") or [])
    return retries


def test_an_app_watch_that_dies_stops_the_watchdog_whole(monkeypatch, one_watched_app):
    def broken(self) -> None:
        raise KeyError("mode_detail")

    monkeypatch.setattr(watchdog.AppWatch, "run", broken)
    with pytest.raises(WatchdogDied) as caught:
        watchdog.run_watchdog(object(), threading.Event(), lambda config, journal: Engine(), journal=Journal([]))
    assert str(caught.value) == "the watchdog's watch of web: KeyError: 'mode_detail'; it stopped"
    assert one_watched_app == ["ensure", "remove"]  # the retry rules go with it; the restart writes them again


def test_a_stopped_watchdog_returns_without_an_error(monkeypatch, one_watched_app):
    monkeypatch.setattr(watchdog.AppWatch, "run", lambda self: self.stop.wait())
    stop = threading.Event()
    stop.set()
    watchdog.run_watchdog(object(), stop, lambda config, journal: Engine(), journal=Journal([]))
    assert one_watched_app == ["ensure", "remove"]


def test_serves_watchdog_is_started_again_and_each_restart_reported(monkeypatch):
    runs: list[int] = []
    second = threading.Event()

    def run_watchdog(config, stop, build_engine) -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise WatchdogDied("the watchdog's watch of web: KeyError: 'x'; it stopped")
        second.set()
        stop.wait()

    monkeypatch.setattr(supervisor, "run_watchdog", run_watchdog)
    reported: list[str] = []
    finish = supervisor.start_watchdog(
        object(), lambda *a: None, backoff=Backoff(first=0.01), on_restart=reported.append
    )
    try:
        assert second.wait(5)
    finally:
        finish()
    assert runs == [0, 1]
    assert reported == [
        "the watchdog died: the watchdog's watch of web: KeyError: 'x'; it stopped; starting it again in 0.01 s"
    ]
