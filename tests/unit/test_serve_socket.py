"""serve's listening socket outlives gunicorn: bound once before anything starts, passed to every gunicorn serve
starts (`--bind fd://N`), closed only when serve returns; a taken port stops serve before anything starts.

Driven with hand-written fakes of the socket, the spawn function and the worker, which record their effects in
one list, in order.
"""

from __future__ import annotations

import os
import pwd
import socket
import threading

import pytest

from deployer import wiring
from deployer.adapters import listeners
from deployer.errors import DeployerError
from deployer.worker import supervisor
from deployer.worker.supervisor import Backoff
from support.configs import app_toml, make_config

# The receiver's user: whoever runs the tests (the default, `deployer`, need not exist here).
ME = f'user = "{pwd.getpwuid(os.geteuid()).pw_name}"'


@pytest.fixture
def config(tmp_path):
    return make_config(tmp_path, app_toml("web", 8000), server=f'listen = "127.0.0.1:8123"\nworkers = 3\n{ME}')


class FakeListener:
    def __init__(self, effects: list[str], fd: int = 7) -> None:
        self.effects = effects
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def __enter__(self) -> FakeListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.effects.append("listener closed")


class FakeGunicorn:
    """A gunicorn master: dead at once (SIGKILLed) when `dies`, else running until terminated."""

    def __init__(self, effects: list[str], pid: int, dies: bool) -> None:
        self.effects = effects
        self.pid = pid
        self.returncode = -9 if dies else None

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode

    def terminate(self):
        self.effects.append(f"terminate {self.pid}")
        self.returncode = -15

    def kill(self):
        self.returncode = -9


class FakeWorker:
    """serve's deploy worker: runs until `done` is set (by the test's spawn), then returns as a stopped one does."""

    def __init__(self, effects: list[str]) -> None:
        self.effects = effects
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.journal = None

    def start(self) -> None:
        self.effects.append("worker started")

    def run(self) -> None:
        assert self.done.wait(10), "gunicorn was not started again"
        self.effects.append("worker stopped")


def test_serve_binds_once_and_passes_the_same_socket_to_every_gunicorn_it_starts(config, monkeypatch):
    monkeypatch.setattr(supervisor, "stop_worker_on_signals", lambda worker: None)
    effects: list[str] = []
    worker = FakeWorker(effects)
    started: list[tuple[list[str], dict]] = []

    def listen(given):
        assert given is config
        effects.append("listen")
        return FakeListener(effects)

    def spawn(argv, env, **options):
        started.append((argv, options))
        effects.append(f"spawn {len(started)}")
        if len(started) == 2:
            worker.done.set()
        return FakeGunicorn(effects, pid=100 + len(started), dies=len(started) == 1)

    code = supervisor.serve(
        config, worker, spawn=spawn, build_engine=lambda *a: None, listen=listen, backoff=Backoff(first=0.01)
    )
    assert code == 0
    assert effects.count("listen") == 1
    assert effects[0] == "listen" and effects[-2:] == ["terminate 102", "listener closed"]
    assert [e for e in effects if e.startswith("spawn")] == ["spawn 1", "spawn 2"]  # the first one was SIGKILLed
    for argv, options in started:
        bind = argv[argv.index("--bind") + 1]
        assert (bind, options["pass_fds"]) == ("fd://7", (7,))


def test_a_taken_port_stops_serve_before_anything_starts(config, monkeypatch):
    monkeypatch.setattr(supervisor, "stop_worker_on_signals", lambda worker: None)
    effects: list[str] = []
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = make_config(config.path.parent, app_toml("web", 8000), server=f'listen = "127.0.0.1:{port}"\n{ME}')
        with pytest.raises(DeployerError) as caught:
            supervisor.serve(
                busy,
                FakeWorker(effects),
                spawn=lambda *a, **k: effects.append("spawn"),
                build_engine=lambda *a: None,
                listen=wiring.receiver_listener,
            )
    assert str(caught.value) == f"the receiver cannot listen on 127.0.0.1:{port}: Address already in use"
    assert effects == []  # no gunicorn, no worker


def test_gunicorn_takes_the_inherited_socket_instead_of_binding(config):
    argv = supervisor.gunicorn_argv(config, python="/opt/deployer/.venv/bin/python", listener_fd=5)
    options = dict(zip(argv[3::2], argv[4::2]))
    assert options["--bind"] == "fd://5"
    assert supervisor.gunicorn_argv(config)[supervisor.gunicorn_argv(config).index("--bind") + 1] == "127.0.0.1:8123"


def test_the_bound_socket_listens_with_the_backlog_and_stays_with_serve(config):
    with listeners.bind("127.0.0.1", 0) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert not sock.get_inheritable()  # a job's process or a hook never gets it; gunicorn, through pass_fds
        assert listeners.BACKLOG == 2048


def test_the_socket_of_a_socket_unit_is_taken_when_it_listens_on_server_listen():
    with socket.create_server(("127.0.0.1", 0), backlog=16) as unit:
        port = unit.getsockname()[1]
        with listeners.adopt(os.dup(unit.fileno()), "127.0.0.1", port) as taken:
            assert taken.getsockname() == ("127.0.0.1", port)
            assert not taken.get_inheritable()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: socket.socket(),
            "the socket systemd passed is not a listening TCP socket: give its unit ListenStream=",
        ),
        (
            lambda: socket.socket(type=socket.SOCK_DGRAM),
            "the socket systemd passed is not a listening TCP socket: give its unit ListenStream=",
        ),
        (
            lambda: socket.create_server(("127.0.0.1", 0)),
            "the socket systemd passed listens on 127.0.0.1:{port}, but [server] listen is 127.0.0.1:1: "
            "make its ListenStream= and [server] listen the same",
        ),
    ],
)
def test_a_socket_from_systemd_serve_cannot_use_is_refused_with_one_line(make, message):
    with make() as given:
        port = given.getsockname()[1] if given.type == socket.SOCK_STREAM else 0
        with pytest.raises(DeployerError) as caught:
            listeners.adopt(os.dup(given.fileno()), "127.0.0.1", 1)
    assert str(caught.value) == message.format(port=port)


def test_a_descriptor_that_is_no_socket_is_refused():
    read, write = os.pipe()
    try:
        with pytest.raises(DeployerError, match=r"^descriptor \d+ from systemd is not a socket: "):
            listeners.adopt(read, "127.0.0.1", 1)
    finally:
        os.close(read)
        os.close(write)


def test_an_ipv6_address_is_named_in_brackets_as_server_listen_writes_it():
    with socket.create_server(("127.0.0.1", 0)) as unit:
        port = unit.getsockname()[1]
        with pytest.raises(DeployerError) as caught:
            listeners.adopt(os.dup(unit.fileno()), "::1", port)
    assert str(caught.value) == (
        f"the socket systemd passed listens on 127.0.0.1:{port}, but [server] listen is [::1]:{port}: "
        f"make its ListenStream= and [server] listen the same"
    )
