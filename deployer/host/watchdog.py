"""The watchdog: fail an app over to the maintenance page when its active instance stops passing its health check,
and back when it passes again.

`observe` decides (pure): it counts a streak. `failures` failed probes in a row while the app serves flip it to
the page; `recoveries` passing probes in a row while it is failed over flip it back. The streak restarts from zero
at every flip and whenever anyone else changes the app (a deploy, `maintenance on`): so two flips are at least
min(failures, recoveries) x interval apart however the instance flaps, and an instance that alternates between
passing and failing never moves the rules at all.

`AppWatch` acts: one thread per app probes the active instance through its set port, as the deploy's health gate
does, every `[apps.NAME.watchdog] interval`, and flips through modes.py, which locks the app (a running deploy
wins; the watchdog tries again at its next probe), flips the chain in one transaction, records and journals it.
A manual maintenance is the operator's: the watchdog leaves it alone. Host-bound apps are covered by the socket
match instead. While it runs, a dying instance's refused handshakes become retries (retries.py), so the window
before the flip shows as a short delay, not as "connection refused". Run one watchdog per host.

While a canary runs, the watch is on the canary: `failures` failed probes in a row abort it (host/canary.py: all
traffic back to the active instance, the canary stopped, the reason in the audit log), and once its bake time is
over a passing probe promotes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from deployer.audit import build_journal
from deployer.config import AppConfig, Config, WatchdogConfig
from deployer.errors import DeployerError, LockError, WatchdogDied
from deployer.host import canary as canary_ops
from deployer.host import modes
from deployer.host.canary import CanaryHost
from deployer.host.health import ProbeResult, set_port_probe
from deployer.journal import Journal, utc_now
from deployer.plan import canary, maintenance
from deployer.plan.records import SERVING, AppState, Instance

log = logging.getLogger("deployer.watchdog")

WATCH_CHECK_SECONDS = 0.5  # how soon a dead app watch stops the watchdog

FAILED_OVER = "failed-over"  # the phases: SERVING (watching for a failure) or FAILED_OVER (for a recovery)
CANARY = canary.MODE  # watching a canary: for a failure (abort) or the end of its bake time (promote)
HostFactory = Callable[[Config, Journal], CanaryHost]  # e.g. wiring.build_engine


@dataclass(frozen=True)
class Streak:
    failing: int = 0  # failed probes in a row, while serving
    passing: int = 0  # passed probes in a row, while failed over


def observe(streak: Streak, ok: bool, phase: str, policy: WatchdogConfig) -> tuple[Streak, str | None]:
    """Count one probe; return the new streak and "fail" or "recover" when it is time to flip."""
    if phase == FAILED_OVER:
        passing = streak.passing + 1 if ok else 0
        return Streak(passing=passing), ("recover" if passing >= policy.recoveries else None)
    failing = 0 if ok else streak.failing + 1
    return Streak(failing=failing), ("fail" if failing >= policy.failures else None)


def phase_of(state: AppState) -> str | None:
    """What the watchdog watches for in this record: a failure, a recovery, or nothing (None)."""
    if state.active is None:
        return None
    if canary.in_canary(state):
        return CANARY
    if state.mode == SERVING:
        return SERVING
    if maintenance.failover_applies(state):
        return FAILED_OVER
    return None  # a manual maintenance, or another mode: not the watchdog's


def watched(state: AppState) -> Instance | None:
    """The instance the watchdog probes: the canary while one runs, else the active one."""
    split = canary.Split.of(state)
    return split.canary if split is not None else state.active


def watched_apps(config: Config) -> list[AppConfig]:
    return [app for app in config.apps.values() if not app.host_bound and app.watchdog.enabled]


class AppWatch:
    """Probe one app's active instance until `stop` is set, flipping when `observe` says so."""

    def __init__(
        self,
        engine: CanaryHost,
        app: AppConfig,
        stop: threading.Event,
        probe: Callable[[AppConfig, AppState], ProbeResult] | None = None,
    ) -> None:
        self.engine = engine
        self.app = app
        self.stop = stop
        self.probe = probe or self._probe_active
        self.streak = Streak()
        self.watching: tuple[str, str] | None = None  # (phase, container id) the streak is about

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.round()
            except DeployerError as exc:
                log.warning("[%s] watchdog: %s", self.app.name, exc)
            self.stop.wait(self.app.watchdog.interval)

    def round(self) -> None:
        state = self.engine.store.load(self.app.name)
        phase = phase_of(state)
        instance = watched(state)
        watching = (phase, instance.container_id) if phase and instance else None
        if watching != self.watching:  # a flip, or somebody else's change: a new streak
            self.watching, self.streak = watching, Streak()
        if watching is None:
            return
        result = self.probe(self.app, state)
        self.streak, action = observe(self.streak, result.ok, watching[0], self.app.watchdog)
        if not result.ok and watching[0] in (SERVING, CANARY):
            self.engine.journal.note(
                "watchdog.probe",
                app=self.app.name,
                outcome="failed",
                detail=result.detail,
                streak=self.streak.failing,
                of=self.app.watchdog.failures,
            )
        if watching[0] == CANARY:
            self._judge_canary(state, action, result)
            return
        if action is None:
            return
        try:
            if action == "fail":
                modes.failover_on(
                    self.engine, self.app, container_id=watching[1], failures=self.streak.failing, last=result.detail
                )
            else:
                modes.failover_off(self.engine, self.app, container_id=watching[1], passes=self.streak.passing)
        except LockError:
            return  # a deploy holds the app: it decides where traffic goes; the streak stands for the next probe

    def _judge_canary(self, state: AppState, action: str | None, result: ProbeResult) -> None:
        """Abort a canary that failed its checks; promote one whose bake time is over while it passes."""
        try:
            if action == "fail":
                canary_ops.abort(
                    self.engine,
                    self.app.name,
                    actor="watchdog",
                    reason=f"the canary failed {self.streak.failing} health checks in a row; last: {result.detail}",
                )
            elif result.ok and self.streak.failing == 0 and canary.baked(state, utc_now()):
                canary_ops.promote(
                    self.engine,
                    self.app.name,
                    actor="watchdog",
                    reason="its bake time is over and it passed its health checks",
                )
        except LockError:
            return  # somebody else moves the app now; the next probe sees what they did

    def _probe_active(self, app: AppConfig, state: AppState) -> ProbeResult:
        instance = watched(state)
        assert instance is not None
        return set_port_probe(self.engine.prober, app, instance.port_set)()


def run_watchdog(
    config: Config,
    stop: threading.Event,
    build_engine: HostFactory,
    *,
    journal: Journal | None = None,
    ready: threading.Event | None = None,
) -> None:
    """Watch every app with the watchdog enabled until `stop` is set; for `deployer watch` and the server.

    `build_engine` makes the engine each app's watch flips through (wiring.build_engine: the caller picks the
    adapters). `ready` is set once the retry rules are in place and every app is watched.
    """
    journal = journal or build_journal(config)
    apps = watched_apps(config)
    engine = build_engine(config, journal)
    modes.ensure_retries(engine.chains, apps)
    journal.note("watchdog.started", actor="watchdog", apps=[a.name for a in apps])
    watching = threading.Event()  # the app watches' own stop: set with `stop`, or when one of them died
    died: list[str] = []

    def guarded(watch: AppWatch) -> None:
        try:
            watch.run()
        except Exception as exc:  # noqa: BLE001 - reported below: the whole watchdog stops, to be started again
            died.append(f"{watch.app.name}: {type(exc).__name__}: {exc}")

    threads = [
        threading.Thread(
            target=guarded,
            args=(AppWatch(build_engine(config, journal), app, watching),),
            name=f"watchdog-{app.name}",
            daemon=True,
        )
        for app in apps
    ]
    try:
        for thread in threads:
            thread.start()
        if ready is not None:
            ready.set()
        # An app's watch that died would leave that app without failover while the others go on: the watchdog
        # stops whole instead, and whoever runs it starts it again (serve's restart loop, or the service manager).
        while not stop.wait(WATCH_CHECK_SECONDS) and not died:
            pass
    finally:
        watching.set()
        for thread in threads:
            thread.join()
        modes.remove_retries(engine.chains)
    if died and not stop.is_set():
        raise WatchdogDied(f"the watchdog's watch of {'; '.join(died)}; it stopped")
