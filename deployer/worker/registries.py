"""The registries' liveness, probed in parallel in a thread of its own; the heartbeat reports the last round.

A probe takes up to its timeout (3 s) when a registry hangs, and the worker's heartbeat, which /healthz and
`status` read, beats every 2 s: probed one after another in the heartbeat's thread, a few hanging registries
stalled it. Here each round probes every registry at once, in a bounded pool, and ends at one deadline; a probe
still running then is reported as not answering and is not started again until it ends, so a hanging registry
holds one thread at most.

While a registry does not answer, rounds come every second instead of every five: jobs wait on that registry, and
they are woken as soon as a round sees it back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait

Probe = Callable[[], "str | None"]  # None when the registry answers, else why not

ROUND_DEADLINE = 5.0  # seconds a round waits for all its probes together
EVERY_SECONDS = 5.0  # between the ends of two rounds
EVERY_SECONDS_WHILE_DOWN = 1.0  # between the ends of two rounds while a registry does not answer
MAX_THREADS = 8


def summary(problems: list[str]) -> str:
    """What the heartbeat reports: "ok", or the reasons."""
    return "; ".join(problems)[:300] if problems else "ok"


class RegistryWatch:
    def __init__(
        self,
        probes: Mapping[str, Probe],
        *,
        deadline: float = ROUND_DEADLINE,
        every: float = EVERY_SECONDS,
        every_while_down: float = EVERY_SECONDS_WHILE_DOWN,
        threads: int = MAX_THREADS,
    ) -> None:
        self.probes = dict(probes)
        self.deadline = deadline
        self.every = every
        self.every_while_down = every_while_down
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, min(threads, len(self.probes))), thread_name_prefix="registry-probe"
        )
        self.running: dict[str, Future[str | None]] = {}  # registry -> its probe, started and not yet read
        self._last: str | None = None
        self._lock = threading.Lock()

    def last(self) -> str | None:
        """The last round's result, "ok" or the reasons; None before the first round ends. Never waits."""
        with self._lock:
            return self._last

    def probe_once(self) -> str:
        """One round: every registry probed at once, waited for until the deadline at most."""
        for registry, probe in self.probes.items():
            if registry not in self.running:
                self.running[registry] = self.pool.submit(probe)
        wait(list(self.running.values()), timeout=self.deadline)
        problems = []
        for registry in self.probes:
            future = self.running[registry]
            if not future.done():
                problems.append(f"registry {registry}: no answer within {self.deadline:g} s")
                continue
            del self.running[registry]
            try:
                problem = future.result()
            except Exception as exc:  # noqa: BLE001 - a probe reports; it never ends the watch
                problem = f"registry {registry}: {type(exc).__name__}: {exc}".rstrip(": ")
            if problem:
                problems.append(problem)
        result = summary(problems)
        with self._lock:
            self._last = result
        return result

    def watch(self, stopping: threading.Event) -> None:
        """Rounds until `stopping`; runs in its own thread."""
        try:
            while not stopping.is_set():
                result = self.probe_once()
                stopping.wait(self.every if result == "ok" else self.every_while_down)
        finally:
            self.pool.shutdown(wait=False, cancel_futures=True)
