"""The registries are probed in parallel, bounded by one deadline a round, off the heartbeat's thread.

Hanging registries are fakes that wait on an event: a round ends at its deadline whatever they do, a hanging probe
is not started again while it hangs, and the heartbeat reports the last round at once, even during a round.
"""

from __future__ import annotations

import threading
import time

import pytest

from deployer.journal import Journal
from deployer.worker.loop import Worker
from deployer.worker.registries import RegistryWatch, summary
from support.worker_fakes import Process


class Registries:
    """Fake probes: each registry answers (None), refuses (a reason) or hangs until released."""

    def __init__(self, answers: dict[str, str | None]) -> None:
        self.answers = answers
        self.released = threading.Event()
        self.calls: dict[str, int] = {name: 0 for name in answers}

    def probe(self, name: str):
        def run() -> str | None:
            self.calls[name] += 1
            if self.answers[name] == "hang":
                self.released.wait(10)
                return None
            return self.answers[name]

        return run

    def watch(self, **options) -> RegistryWatch:
        return RegistryWatch({name: self.probe(name) for name in self.answers}, **options)


@pytest.mark.parametrize(
    ("problems", "reported"),
    [
        ([], "ok"),
        (["registry a: answers 503"], "registry a: answers 503"),
        (
            ["registry a: answers 503", "registry b: no answer within 1 s"],
            "registry a: answers 503; registry b: no answer within 1 s",
        ),
        (["x" * 400], "x" * 300),
    ],
)
def test_what_the_heartbeat_reports(problems, reported):
    assert summary(problems) == reported


def test_hanging_registries_cost_one_deadline_together_not_one_each():
    registries = Registries({"a:5000": "hang", "b:5000": "hang", "c:5000": "hang", "d:5000": None})
    watch = registries.watch(deadline=0.3)
    started = time.monotonic()
    result = watch.probe_once()
    elapsed = time.monotonic() - started
    registries.released.set()
    assert 0.25 <= elapsed < 0.9  # one deadline, not three
    assert result == "; ".join(f"registry {name}: no answer within 0.3 s" for name in ("a:5000", "b:5000", "c:5000"))
    assert watch.last() == result


def test_a_hanging_probe_is_not_started_again_until_it_ends():
    registries = Registries({"slow:5000": "hang", "up:5000": None})
    watch = registries.watch(deadline=0.1)
    watch.probe_once()
    watch.probe_once()
    assert registries.calls == {"slow:5000": 1, "up:5000": 2}  # one thread held by the hanging registry, at most
    registries.released.set()
    time.sleep(0.05)
    assert watch.probe_once() == "ok"
    assert registries.calls == {"slow:5000": 1, "up:5000": 3}  # its answer was read; the next round starts it


def test_a_probe_that_raises_is_reported_and_the_round_goes_on():
    def broken():
        raise OSError("no route to host")

    watch = RegistryWatch({"a:5000": broken, "b:5000": lambda: "registry b:5000: answers 502"}, deadline=1)
    assert watch.probe_once() == "registry a:5000: OSError: no route to host; registry b:5000: answers 502"


def test_the_heartbeat_reports_the_last_round_at_once_while_a_round_hangs(config, queue, clock):
    registries = Registries({"a:5000": "hang", "b:5000": "hang"})
    watch = registries.watch(deadline=5, every=0.05)
    worker = Worker(
        config,
        queue,
        Journal([]),
        launch=lambda job: Process(None),
        reconcile=lambda app: [],
        clock=clock,
        checks=lambda: ("ok", "ok"),
        disk=lambda: "ok",
        registry=watch.last,
        registry_watch=watch.watch,
    )
    worker.started_at = clock.now
    stopping = threading.Event()
    thread = threading.Thread(target=watch.watch, args=(stopping,), daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        worker.check_once()  # the round hangs for 5 s: the beat does not wait for it
        assert time.monotonic() - started < 0.5
        assert queue.heartbeat.worker_status()["registry"] is None  # not known yet, not a fault
        assert queue.heartbeat.worker_status()["faults"] == {}
    finally:
        registries.released.set()
        stopping.set()
        thread.join(5)
    worker.check_once()
    assert queue.heartbeat.worker_status()["registry"] == "ok"


class Rounds:
    """A stop event that records each wait between rounds and stops after `count` of them."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return len(self.waits) >= self.count

    def wait(self, timeout: float) -> bool:
        self.waits.append(timeout)
        return self.is_set()


def test_rounds_come_every_second_while_a_registry_is_down_and_every_five_once_all_answer():
    registries = Registries({"r1:5000": "refused"})
    watch = RegistryWatch({"r1:5000": registries.probe("r1:5000")})
    rounds = Rounds(2)
    watch.watch(rounds)  # type: ignore[arg-type]
    registries.answers["r1:5000"] = None
    back = Rounds(1)
    watch = RegistryWatch({"r1:5000": registries.probe("r1:5000")})
    watch.watch(back)  # type: ignore[arg-type]
    assert (rounds.waits, back.waits) == ([1.0, 1.0], [5.0])
