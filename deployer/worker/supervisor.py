"""What `deployer serve`, `worker`, `watch` and `maintenance-server` run, and what restarts what.

- `serve`: the deploy worker runs in this process's main thread; gunicorn (the receiver) is a child,
  started as `[server] user` when serve runs as root, and started again with a growing delay
  (1 s, doubling to 30 s; back to 1 s once it has run a minute) whenever it dies. A dead gunicorn
  never stops the worker, and loses no connection: serve binds [server] listen once (or takes the socket of its
  `.socket` unit) and hands that socket to every gunicorn it starts, so connections made meanwhile wait in its
  backlog for the next one. With --watch the watchdog runs in a thread (it needs root), started again the same
  way when it dies (each restart logged and audited as `watchdog.restart`), and the
  maintenance responder, which anyone on the network reaches, in a `maintenance-server` child on a
  socket serve binds, as `[server] user` too, restarted the same way. When deploys are reported (to GitHub, to
  [[notify]] targets), the report loop (`deployer report`) is a child too, as `[server] user`, restarted the same
  way: it reads the audit log and delivers what it says, and never holds up a deploy.
- `run_threads`: the threads of `watch` and `maintenance-server`, and of serve's --watch: if one dies
  of an error, the others are stopped and the command exits 1, so the service manager restarts it.
- systemd restarts a whole command that dies (deploy/systemd: `Restart=on-failure`).

The processes themselves are started by the spawn function it is given (`adapters.processes.spawn`
through deployer/wiring.py), and the worker and the watchdog's engine come from there too, so tests drive
the restarts with fakes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from deployer import config as config_module
from deployer.config import Config
from deployer.config.accounts import receiver_account
from deployer.errors import DeployerError
from deployer.host import responder
from deployer.host.watchdog import HostFactory, run_watchdog
from deployer.worker.child import child_environment
from deployer.worker.loop import Worker
from deployer.worker.run import WORKER_ACTOR

log = logging.getLogger("deployer.supervisor")

GUNICORN_STOP_SECONDS = 15
THREADS = 64  # per gunicorn worker: a dripping client holds one for at most the request deadlines
WORKER_CONNECTIONS = THREADS  # a worker whose threads are all busy accepts nothing: another one does
# (and no connection is kept alive: a kept-alive one would count against that, and GitHub does not reuse them)
WORKER_CLASS = "deployer.adapters.http_worker.DeadlineThreadWorker"


class Process(Protocol):
    """What subprocess.Popen offers and the supervisor uses."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


Spawn = Callable[..., Process]  # spawn(argv, env, *, user=None, group=None, umask=0o077, log=None)


# --- the receiver's command line -------------------------------------------------------------------


def gunicorn_argv(config: Config, python: str = sys.executable, listener_fd: int | None = None) -> list[str]:
    """gunicorn's command line: on the socket inherited at `listener_fd` (`fd://N`), else binding [server] listen."""
    server = config.server
    return [
        python,
        "-m",
        "gunicorn",
        "--workers",
        str(server.workers),
        "--bind",
        server.listen if listener_fd is None else f"fd://{listener_fd}",
        "--worker-class",
        WORKER_CLASS,
        "--threads",
        str(THREADS),
        "--worker-connections",
        str(WORKER_CONNECTIONS),
        "--keep-alive",
        "0",
        "--timeout",
        "30",
        "--graceful-timeout",
        "10",
        "--access-logfile",
        "-",
        "--error-logfile",
        "-",
        "--log-level",
        "info",
        "--name",
        "deployer-receiver",
        *_no_control_socket(),
        "deployer.receiver.web:create_app()",
    ]


def _no_control_socket() -> list[str]:
    """Newer gunicorn opens a control socket in $HOME; the receiver needs none (and may have no home)."""
    from gunicorn.config import KNOWN_SETTINGS  # lazy: loaded only by serve, which starts gunicorn

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in KNOWN_SETTINGS) else []


def receiver_user(config: Config) -> tuple[str, str] | None:
    """The user and group the receiver runs as when serve drops to them; None when it runs as this user."""
    account = receiver_account(config.server)
    user = account.user
    if os.geteuid() == 0:
        return None if account.is_root else (account.user, account.group)
    if os.geteuid() != account.uid:
        raise DeployerError(
            f"[server] user is {user!r}: start serve as root (it drops to {user!r} for gunicorn), or as {user!r} itself"
        )
    return None


def unprivileged_environment(config: Config) -> dict[str, str]:
    """The environment of what serve starts as [server] user (gunicorn, the responder): the receiver's own.

    Never the worker's registry, asset or app secrets from root's environment; PYTHONPATH so the package
    imports from any working folder.
    """
    env = config_module.receiver_environment(config)
    env["PYTHONPATH"] = child_environment()["PYTHONPATH"]
    return env


def start_gunicorn(config: Config, spawn: Spawn, log_file: Any = None, listener: Any = None) -> Process:
    """gunicorn with the app factory; as `[server] user` (whole process tree) when serve runs as root.

    With `listener` (serve's socket), gunicorn inherits it and binds nothing. A gunicorn master that dies leaves its
    workers behind for a moment: each sees its parent change, stops accepting, finishes the requests it accepted
    (up to --graceful-timeout) and exits. Meanwhile the next gunicorn's workers accept on the same socket beside
    them; each connection is accepted by one process only, and answered by it, so the two overlapping is harmless.
    """
    env = unprivileged_environment(config)
    drop = receiver_user(config)
    descriptors = () if listener is None else (listener.fileno(),)
    return spawn(
        gunicorn_argv(config, listener_fd=descriptors[0] if descriptors else None),
        env,
        user=drop[0] if drop else None,
        group=drop[1] if drop else None,
        umask=0o007,
        log=log_file,
        pass_fds=descriptors,
    )


def stop_process(process: Process, seconds: float = GUNICORN_STOP_SECONDS) -> None:
    """SIGTERM (gunicorn finishes the requests in flight), then SIGKILL after `seconds`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(seconds)
    except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired, or a fake's own
        process.kill()
        process.wait()


# --- restarting a child that dies ------------------------------------------------------------------


@dataclass
class Backoff:
    """The wait before a restart: doubling from `first` to `most`; back to `first` after a run of `stable` s."""

    first: float = 1.0
    most: float = 30.0
    stable: float = 60.0
    _next: float = 0.0

    def after(self, ran_for: float) -> float:
        if ran_for >= self.stable or self._next == 0.0:
            self._next = self.first
        delay = self._next
        self._next = min(self.most, self._next * 2)
        return delay


def keep_running(
    name: str,
    start: Callable[[], Process],
    stop: threading.Event,
    *,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.monotonic,
    poll_seconds: float = 0.2,
    on_restart: Callable[[str], None] | None = None,
) -> None:
    """Run `start()`'s process until `stop`; whenever it dies, or cannot start, start it again after a backoff."""
    backoff = backoff or Backoff()
    while not stop.is_set():
        started = clock()
        try:
            process = start()
        except DeployerError as exc:
            what = f"{name} could not start: {exc}"
        else:
            while process.poll() is None:
                if stop.wait(poll_seconds):
                    stop_process(process)
                    return
            what = f"{name} exited with status {process.returncode}"
        delay = backoff.after(clock() - started)
        message = f"{what}; starting it again in {delay:g} s"
        log.error("%s", message)
        if on_restart is not None:
            on_restart(message)
        if stop.wait(delay):
            return


def keep_thread_running(
    name: str,
    target: Callable[[threading.Event], None],
    stop: threading.Event,
    *,
    backoff: Backoff | None = None,
    clock: Callable[[], float] = time.monotonic,
    on_restart: Callable[[str], None] | None = None,
) -> None:
    """Run `target(stop)` in this thread until `stop`; whenever it dies of an error, or returns before `stop`, run
    it again after a backoff, as `keep_running` does for a child process."""
    backoff = backoff or Backoff()
    while not stop.is_set():
        started = clock()
        try:
            target(stop)
        except Exception as exc:  # noqa: BLE001 - the restart loop reports it and starts the target again
            what = (
                f"{name} died: {exc}" if isinstance(exc, DeployerError) else f"{name} died: {type(exc).__name__}: {exc}"
            )
        else:
            if stop.is_set():
                return
            what = f"{name} ended on its own"
        delay = backoff.after(clock() - started)
        message = f"{what}; starting it again in {delay:g} s"
        log.error("%s", message)
        if on_restart is not None:
            on_restart(message)
        if stop.wait(delay):
            return


# --- threads beside each other ---------------------------------------------------------------------


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = threading.Event()

    def handle(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def run_threads(
    stop: threading.Event, *targets: Callable[[], None], ready: threading.Event | None = None, announce: str = ""
) -> int:
    """Run each target in a thread until `stop`; if one dies of an error, stop the rest and return 1.

    `announce` is printed once `ready` is set: scripts wait for that line.
    """
    failures: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported below, and stops the others
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    if ready is not None:
        while not ready.wait(0.1) and not stop.is_set():
            pass
    if announce and (ready is None or ready.is_set()):
        print(announce, flush=True)
    while not stop.wait(0.5):
        pass
    for thread in threads:
        thread.join(timeout=30)
    for exc in failures:
        print(f"deployer: {exc}", file=sys.stderr)
    return 1 if failures else 0


# --- serve and worker ------------------------------------------------------------------------------


def stop_worker_on_signals(worker: Any) -> None:
    """The first SIGTERM/SIGINT stops claiming and waits for running deploys; the second kills them."""

    def handle(signum: int, _frame: Any) -> None:
        if worker.stopping.is_set():
            worker.kill_children()
        worker.stopping.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def run_worker(worker: Worker) -> int:
    """The worker alone (gunicorn runs elsewhere), built on the folders it shares with the receiver."""
    stop_worker_on_signals(worker)
    worker.start()
    worker.run()
    return 0


def serve(
    config: Config,
    worker: Worker,
    *,
    spawn: Spawn,
    build_engine: HostFactory,
    listen: Callable[[Config], Any],
    watch: bool = False,
    backoff: Backoff | None = None,
) -> int:
    """The worker here; gunicorn and, with `watch`, the responder beside it (each restarted whenever it dies).

    `worker` is built on the folders shared with the receiver; `build_engine` gives the watchdog its engine;
    `listen` gives the receiver's listening socket, which serve holds until it returns and passes to every gunicorn.
    """
    receiver_user(config)  # a wrong user fails now, not in the restart loop
    # Bound once, before anything starts (a taken port stops serve now), and closed only when serve returns: while
    # a dead gunicorn is started again, connections wait in its backlog.
    with listen(config) as listener:
        children = [("gunicorn", lambda: start_gunicorn(config, spawn, listener=listener))]
        if config.reports.github or config.reports.notify:
            children.append(("the report loop", lambda: start_reporter(config, spawn)))
        stop_watchdog = None
        if watch:
            page_listener = bind_listener(config)  # a taken port stops serve before anything starts
            children.append(("the maintenance responder", lambda: start_responder(config, spawn, page_listener)))
            stop_watchdog = start_watchdog(
                config,
                build_engine,
                backoff=backoff,
                on_restart=lambda message: worker.journal.record(
                    "watchdog.restart", actor=WORKER_ACTOR, outcome="failed", reason=message
                ),
            )
        children_stop = threading.Event()
        threads = [
            threading.Thread(
                target=keep_running,
                name=name,
                args=(name, start, children_stop),
                kwargs={"backoff": backoff},
                daemon=True,
            )
            for name, start in children
        ]
        for thread in threads:
            thread.start()
        stop_worker_on_signals(worker)
        try:
            worker.start()
            worker.run()
        finally:
            worker.stopping.set()
            children_stop.set()
            for thread in threads:
                thread.join(GUNICORN_STOP_SECONDS + 5)
            if stop_watchdog is not None:
                stop_watchdog()
    return 0


def bind_listener(config: Config) -> Any:
    return responder.bind_listener(config)


def start_responder(config: Config, spawn: Spawn, listener: Any, python: str = sys.executable) -> Process:
    """`deployer maintenance-server` on the socket serve bound, as the receiver's user when serve drops to one.

    The responder answers anyone on the network, so it does not run in the root worker's process.
    """
    drop = receiver_user(config)
    argv = [
        python,
        "-m",
        "deployer",
        "-c",
        str(config.path),
        "maintenance-server",
        "--listen-fd",
        str(listener.fileno()),
    ]
    env = unprivileged_environment(config)
    return spawn(
        argv,
        env,
        user=drop[0] if drop else None,
        group=drop[1] if drop else None,
        umask=0o077,
        pass_fds=(listener.fileno(),),
    )


def start_reporter(config: Config, spawn: Spawn, python: str = sys.executable) -> Process:
    """`deployer report`, as the receiver's user when serve drops to one: it talks to the internet, so it runs
    unprivileged, with the receiver's environment and the variables of its own tokens and secrets only."""
    drop = receiver_user(config)
    env = config_module.report_environment(config)
    env["PYTHONPATH"] = child_environment()["PYTHONPATH"]
    return spawn(
        [python, "-m", "deployer", "-c", str(config.path), "report"],
        env,
        user=drop[0] if drop else None,
        group=drop[1] if drop else None,
        umask=0o007,
    )


def start_watchdog(
    config: Config,
    build_engine: HostFactory,
    *,
    backoff: Backoff | None = None,
    on_restart: Callable[[str], None] | None = None,
) -> Callable[[], None]:
    """The failover watchdog in a thread beside the worker (it changes netfilter rules: root); returns its stop.

    A watchdog that dies is started again, with the children's backoff, and each restart is logged and given to
    `on_restart` (serve audits it as `watchdog.restart`). Restarted here rather than by taking serve down: serve's
    worker may be in the middle of deploys, and gunicorn would go down with it, for a failure of the failover
    monitor alone; `deployer watch`, run on its own, exits instead and its unit restarts it.
    """
    stop = threading.Event()
    thread = threading.Thread(
        target=keep_thread_running,
        name="watchdog",
        args=("the watchdog", lambda stopped: run_watchdog(config, stopped, build_engine), stop),
        kwargs={"backoff": backoff, "on_restart": on_restart},
        daemon=True,
    )
    thread.start()

    def finish() -> None:
        stop.set()  # the watchdog removes its retry rules on the way out
        thread.join(timeout=30)

    return finish
