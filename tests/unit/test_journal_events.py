"""Events and timed steps: what each sink receives, masking, and the one-line format."""

import logging
import re

import pytest

from deployer.journal import Journal, format_event, log_sink

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Clock:
    def __init__(self, *readings: float) -> None:
        self.readings = list(readings)

    def __call__(self) -> float:
        return self.readings.pop(0)


def journal(*readings: float, secrets=None):
    events = []
    return Journal([events.append], secrets=secrets, clock=Clock(*readings)), events


def without_times(event):
    assert TS.match(event.pop("ts")), event
    if "started_at" in event:
        assert TS.match(event.pop("started_at")), event
    return event


def test_a_step_that_succeeds_is_noted_then_recorded_once_with_its_duration():
    j, events = journal(10.0, 10.1234)
    with j.step("pull", app="demo", job=None) as step:
        step.detail.update(digest="sha256:ab", image="127.0.0.1:5000/demo:v2")
    assert [without_times(e) for e in events] == [
        {"event": "step.begin", "step": "pull", "app": "demo", "_durable": False},
        {
            "event": "step",
            "step": "pull",
            "outcome": "ok",
            "duration_ms": 123.4,
            "app": "demo",
            "digest": "sha256:ab",
            "image": "127.0.0.1:5000/demo:v2",
            "_durable": True,
        },
    ]


def test_a_step_that_fails_is_recorded_failed_and_the_error_goes_on():
    j, events = journal(5.0, 7.5)
    with pytest.raises(RuntimeError, match="^registry down$"):
        with j.step("pull", app="demo") as step:
            step.detail["attempt"] = 2
            raise RuntimeError("registry down")
    assert without_times(events[-1]) == {
        "event": "step",
        "step": "pull",
        "outcome": "failed",
        "duration_ms": 2500.0,
        "error": "registry down",
        "app": "demo",
        "attempt": 2,
        "_durable": True,
    }
    assert len(events) == 2


def test_an_error_without_a_message_is_named_by_its_type():
    j, events = journal(0.0, 0.0)
    with pytest.raises(KeyboardInterrupt):
        with j.step("drain"):
            raise KeyboardInterrupt
    assert events[-1]["error"] == "KeyboardInterrupt"
    assert events[-1]["outcome"] == "failed"


def test_started_at_is_the_wall_time_the_step_began():
    j, events = journal(0.0, 1.0)
    with j.step("flip"):
        pass
    assert events[-1]["started_at"] <= events[-1]["ts"]
    assert TS.match(events[-1]["started_at"])


def test_record_is_durable_note_is_not_and_none_fields_are_dropped():
    j, events = journal()
    j.record("deploy.started", app="demo", tag="v2", job=None)
    j.note("waiting", app="demo", remaining=3)
    assert [without_times(e) for e in events] == [
        {"event": "deploy.started", "app": "demo", "tag": "v2", "_durable": True},
        {"event": "waiting", "app": "demo", "remaining": 3, "_durable": False},
    ]


def test_every_sink_gets_every_event():
    first, second = [], []
    j = Journal([first.append, second.append])
    j.record("x")
    j.note("y")
    assert [e["event"] for e in first] == [e["event"] for e in second] == ["x", "y"]


def test_secrets_are_masked_in_nested_values():
    j, events = journal(0.0, 1.0, secrets=["hunter2", "", "tok-123"])
    j.record(
        "pull.failed",
        error="login with hunter2 refused",
        detail={"auth": {"password": "hunter2"}, "tries": ["tok-123", ("x", "hunter2hunter2")], "n": 3},
    )
    with j.step("hook pre-deploy") as step:
        step.detail["output"] = "token tok-123 used"
    assert without_times(events[0]) == {
        "event": "pull.failed",
        "error": "login with *** refused",
        "detail": {"auth": {"password": "***"}, "tries": ["***", ["x", "******"]], "n": 3},
        "_durable": True,
    }
    assert events[-1]["output"] == "token *** used"
    assert "hunter2" not in repr(events) and "tok-123" not in repr(events)


def test_without_secrets_values_are_passed_as_they_are():
    j, events = journal()
    detail = {"a": ("b",)}
    j.record("x", detail=detail)
    assert events[0]["detail"] is detail


def test_a_secret_containing_another_is_masked_whole():
    j, events = journal(secrets=["abc", "abcdef-long-token"])
    j.record("x", error="sent abcdef-long-token")
    assert events[0]["error"] == "sent ***"


def test_a_detail_named_like_a_step_field_does_not_break_the_record():
    j, events = journal(0.0, 1.0)
    with pytest.raises(RuntimeError, match="^pull failed$"):
        with j.step("pull", app="demo") as step:
            step.detail["error"] = "registry answered 401"
            raise RuntimeError("pull failed")


def test_format_event_lines():
    assert (
        format_event({"ts": "t", "event": "step.begin", "step": "pull", "app": "demo", "_durable": False})
        == "[demo] pull ..."
    )
    assert (
        format_event(
            {
                "ts": "t",
                "event": "step",
                "step": "pull",
                "outcome": "ok",
                "duration_ms": 120.4,
                "started_at": "t0",
                "app": "demo",
                "digest": "sha256:ab",
                "empty": "",
                "none": None,
                "nothing": {},
                "_durable": True,
            }
        )
        == "[demo] pull ok 120.4ms digest=sha256:ab"
    )
    assert (
        format_event(
            {
                "ts": "t",
                "event": "deploy.failed",
                "outcome": "failed",
                "app": "demo",
                "tag": "v2",
                "error": "health check did not pass",
                "_durable": True,
            }
        )
        == "[demo] deploy.failed failed tag=v2 error=health check did not pass"
    )
    assert (
        format_event({"ts": "t", "event": "server.started", "port": 8000, "_durable": True})
        == "[deployer] server.started port=8000"
    )


def test_log_sink_warns_on_failures(caplog):
    caplog.set_level(logging.INFO, logger="deployer")
    log_sink({"ts": "t", "event": "deploy.failed", "outcome": "failed", "app": "demo"})
    log_sink({"ts": "t", "event": "deploy.finished", "outcome": "ok", "app": "demo"})
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "[demo] deploy.failed failed"),
        (logging.INFO, "[demo] deploy.finished ok"),
    ]
