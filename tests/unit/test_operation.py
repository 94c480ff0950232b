"""The bookkeeping around every operation, written once: the events each shape journals, and the lock."""

from __future__ import annotations

import re

import pytest

from deployer.errors import DeployerError, DockerUnavailable, PullError, RulesError
from deployer.host.operation import BRACKETED, FAILURES_ONLY, ONE_EVENT, Operation, record_repairs
from deployer.journal import Journal

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Clock:
    def __init__(self) -> None:
        self.now = 10.0

    def __call__(self) -> float:
        self.now += 0.25
        return self.now


class Lock:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def __enter__(self) -> None:
        self.log.append("lock")

    def __exit__(self, *exc: object) -> None:
        self.log.append("unlock")


def durable(events: list[dict]) -> list[dict]:
    """The audit log's view: durable events, without their times."""
    return [
        {k: v for k, v in e.items() if k not in ("ts", "started_at", "_durable", "duration_ms")}
        for e in events
        if e["_durable"]
    ]


def operation(shape: str = BRACKETED, kind: str = "deploy"):
    events: list[dict] = []
    log: list[str] = []
    journal = Journal([lambda e: (events.append(e), log.append(e["event"]))], clock=Clock())
    return (
        Operation(
            journal, kind, {"app": "web", "job": None, "actor": "cli:ann"}, lock=Lock(log), shape=shape, clock=Clock()
        ),
        events,
        log,
    )


def test_a_bracketed_operation_journals_started_its_steps_and_finished_inside_its_lock():
    op, events, log = operation()
    with op:
        op.start(tag="v2")
        with op.step("pull") as step:
            step.detail["digest"] = "sha256:ab"
        op.finish(tag="v2", set="green")
    assert log == ["lock", "deploy.started", "step.begin", "step", "deploy.finished", "unlock"]
    assert durable(events) == [
        {"event": "deploy.started", "tag": "v2", "app": "web", "actor": "cli:ann"},
        {"event": "step", "app": "web", "actor": "cli:ann", "digest": "sha256:ab", "step": "pull", "outcome": "ok"},
        {"event": "deploy.finished", "outcome": "ok", "tag": "v2", "set": "green", "app": "web", "actor": "cli:ann"},
    ]


def test_a_failure_after_start_is_journaled_with_its_error_and_type_then_raised():
    op, events, log = operation()
    with pytest.raises(RulesError, match="^refused$"):
        with op:
            op.start(tag="v2")
            op.failed["tag"] = "v2"
            raise RulesError("refused")
    assert log == ["lock", "deploy.started", "deploy.failed", "unlock"]
    assert durable(events)[-1] == {
        "event": "deploy.failed",
        "outcome": "failed",
        "tag": "v2",
        "error": "refused",
        "error_type": "RulesError",
        "app": "web",
        "actor": "cli:ann",
    }


def test_what_is_refused_before_start_journals_nothing_and_still_unlocks():
    op, events, log = operation()
    with pytest.raises(DeployerError):
        with op:
            raise DeployerError("nothing to roll back to")
    assert log == ["lock", "unlock"]


def test_an_operation_that_ends_without_finish_is_finished_at_the_end():
    op, events, _ = operation()
    with op:
        op.start()
    assert [e["event"] for e in durable(events)] == ["deploy.started", "deploy.finished"]


def test_a_finish_without_start_is_one_finished_event():
    op, events, log = operation(kind="forward-off")
    with op:
        op.finish(removed="leftover accept rules")
    assert log == ["lock", "forward-off.finished", "unlock"]


def test_a_mode_change_is_one_event_with_its_outcome_and_duration():
    op, events, log = operation(ONE_EVENT, "maintenance.on")
    with op:
        op.start()
        op.finish(mode="maintenance")
    assert log == ["lock", "maintenance.on", "unlock"]
    assert durable(events) == [
        {"event": "maintenance.on", "app": "web", "actor": "cli:ann", "outcome": "ok", "mode": "maintenance"}
    ]
    assert events[0]["duration_ms"] == 250.0  # from start() to finish(), on the operation's clock

    op, events, log = operation(ONE_EVENT, "maintenance.on")
    with pytest.raises(RulesError):
        with op:
            op.start()
            raise RulesError("refused")
    assert durable(events) == [
        {
            "event": "maintenance.on",
            "outcome": "failed",
            "error": "refused",
            "error_type": "RulesError",
            "app": "web",
            "actor": "cli:ann",
        }
    ]


def test_a_reconcile_journals_only_its_repairs_and_a_failure():
    op, events, log = operation(FAILURES_ONLY, "reconcile")
    with op:
        op.start()
        record_repairs(op.journal, ["rules of web restored"], **op.base)
    assert log == ["lock", "reconcile.repair", "unlock"]
    assert durable(events) == [
        {"event": "reconcile.repair", "app": "web", "actor": "cli:ann", "detail": "rules of web restored"}
    ]
    op, events, log = operation(FAILURES_ONLY, "reconcile")
    with pytest.raises(RulesError):
        with op:
            op.start()
            raise RulesError("refused")
    assert log == ["lock", "reconcile.failed", "unlock"]


def test_an_interrupt_is_not_a_failure_of_the_operation():
    op, events, log = operation()
    with pytest.raises(KeyboardInterrupt):
        with op:
            op.start()
            raise KeyboardInterrupt
    assert log == ["lock", "deploy.started", "unlock"]


@pytest.mark.parametrize(
    "error, waits, event",
    [
        (DockerUnavailable("the Docker daemon does not answer"), True, "deploy.waiting"),
        (DockerUnavailable("the Docker daemon does not answer"), False, "deploy.failed"),
        (PullError("manifest unknown"), True, "deploy.failed"),
    ],
)
def test_a_transient_fault_the_caller_waits_on_ends_the_operation_as_waiting(error, waits, event):
    events: list[dict] = []
    with pytest.raises(type(error)):
        with Operation(
            Journal([events.append]), "deploy", {"app": "web", "job": "j", "actor": "a"}, clock=Clock()
        ) as operation:
            operation.waits_on_transient = waits
            operation.start(tag="v2")
            raise error
    ended = durable(events)[-1]
    assert (ended["event"], ended["outcome"], ended["error"]) == (
        event,
        "waiting" if event == "deploy.waiting" else "failed",
        str(error),
    )
