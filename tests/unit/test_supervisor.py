"""The supervisor restarts a receiver that dies, with a growing delay, and stops the one that runs when told.

Driven with hand-written fakes for the process and the stop event, so no test waits for a real delay.
"""

from __future__ import annotations

import os
import pwd

import pytest

from deployer.errors import DeployerError
from deployer.worker import supervisor
from deployer.worker.supervisor import Backoff, keep_running
from support.configs import app_toml, make_config


class FakeProcess:
    def __init__(self, pid: int, exits_with: int | None = None) -> None:
        self.pid = pid
        self.returncode = exits_with
        self.signals: list[str] = []

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode

    def terminate(self):
        self.signals.append("TERM")
        self.returncode = -15

    def kill(self):
        self.signals.append("KILL")
        self.returncode = -9


class FakeStop:
    """A stop event whose waits return at once; it is set after `polls` polls of a live process."""

    def __init__(self, polls: int) -> None:
        self.polls = polls
        self.waits: list[float] = []
        self.flag = False

    def is_set(self) -> bool:
        return self.flag

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        if seconds == 0.2:
            self.polls -= 1
            self.flag = self.polls <= 0
        return self.flag


class Clock:
    now = 0.0

    def __call__(self) -> float:
        self.now += 0.5  # every start and every death half a second apart
        return self.now


def test_a_receiver_that_dies_is_started_again_with_a_growing_delay_and_stopped_at_the_end():
    started: list[FakeProcess] = []
    outcomes = iter([-9, 1, -9, None])  # SIGKILLed, exit 1, SIGKILLed, then it keeps running

    def start():
        started.append(FakeProcess(100 + len(started), next(outcomes)))
        return started[-1]

    messages: list[str] = []
    stop = FakeStop(polls=3)
    keep_running("gunicorn", start, stop, clock=Clock(), on_restart=messages.append)
    assert [p.pid for p in started] == [100, 101, 102, 103]
    assert [w for w in stop.waits if w != 0.2] == [1.0, 2.0, 4.0]
    assert messages == [
        "gunicorn exited with status -9; starting it again in 1 s",
        "gunicorn exited with status 1; starting it again in 2 s",
        "gunicorn exited with status -9; starting it again in 4 s",
    ]
    assert started[-1].signals == ["TERM"]  # the running one is stopped, gracefully first
    assert all(p.signals == [] for p in started[:-1])


def test_a_receiver_that_cannot_start_is_tried_again():
    attempts = []

    def start():
        attempts.append(1)
        if len(attempts) < 3:
            raise DeployerError("cannot start gunicorn: [Errno 2] No such file or directory")
        return FakeProcess(7)

    messages: list[str] = []
    keep_running("gunicorn", start, FakeStop(polls=1), clock=Clock(), on_restart=messages.append)
    assert len(attempts) == 3
    assert messages[0] == (
        "gunicorn could not start: cannot start gunicorn: [Errno 2] No such file or directory; starting it again in 1 s"
    )


def test_the_backoff_doubles_to_its_most_and_starts_over_after_a_stable_run():
    backoff = Backoff(first=1, most=30, stable=60)
    assert [backoff.after(1) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.after(61) == 1
    assert backoff.after(1) == 2


@pytest.fixture
def config(tmp_path):
    """[server] user is whoever runs the tests: the receiver runs as this user, with no user to drop to."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    return make_config(tmp_path, app_toml("web", 8000), server=f'listen = "127.0.0.1:8123"\nworkers = 3\nuser = "{me}"')


def test_gunicorn_runs_threads_with_request_deadlines_not_sync_workers(config):
    argv = supervisor.gunicorn_argv(config, python="/opt/deployer/.venv/bin/python")
    assert argv[:3] == ["/opt/deployer/.venv/bin/python", "-m", "gunicorn"]
    options = dict(zip(argv[3::2], argv[4::2]))
    assert options["--worker-class"] == "deployer.adapters.http_worker.DeadlineThreadWorker"
    assert (options["--workers"], options["--threads"], options["--bind"]) == ("3", "64", "127.0.0.1:8123")
    assert argv[-1] == "deployer.receiver.web:create_app()"


def test_the_receiver_is_spawned_with_its_config_and_umask(config, monkeypatch):
    calls = []

    def spawn(argv, env, **options):
        calls.append((argv, env, options))
        return FakeProcess(1)

    supervisor.start_gunicorn(config, spawn)
    [(argv, env, options)] = calls
    assert env["DEPLOYER_CONFIG"] == str(config.path)
    assert options == {"user": None, "group": None, "umask": 0o007, "log": None, "pass_fds": ()}


def test_the_responder_of_serve_watch_is_a_child_on_the_socket_serve_bound(config):
    import socket

    calls = []

    def spawn(argv, env, **options):
        calls.append((argv, options))
        return FakeProcess(2)

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        supervisor.start_responder(config, spawn, listener, python="/opt/deployer/.venv/bin/python")
    finally:
        listener.close()
    [(argv, options)] = calls
    assert argv == [
        "/opt/deployer/.venv/bin/python",
        "-m",
        "deployer",
        "-c",
        str(config.path),
        "maintenance-server",
        "--listen-fd",
        str(options["pass_fds"][0]),
    ]
    assert (options["user"], options["umask"]) == (None, 0o077)  # [server] user is this user: no user to drop to
