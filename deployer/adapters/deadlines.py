"""Deadlines on sockets: a connection that has not finished its request in time is shut down.

A per-read timeout does not stop a client that drips one byte a second: every read succeeds. A
deadline for the whole request does. One thread per process checks the deadlines a few times a
second and shuts down each socket past its own; the thread blocked reading it then sees the end
of the stream, and the connection closes.
"""

from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable

CHECK_SECONDS = 0.1


class Deadlines:
    """Arm a deadline for a socket, re-arm or disarm it; the watcher shuts down what is late."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int]] = []
        self._armed: dict[int, tuple[float, socket.socket]] = {}
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, seconds: float, ticket: int | None = None) -> int:
        """Shut `sock` down `seconds` from now unless disarmed first; returns the ticket to re-arm or disarm."""
        self._start()
        ticket = next(self._tickets) if ticket is None else ticket
        at = self.clock() + seconds
        with self._lock:
            self._armed[ticket] = (at, sock)
            heapq.heappush(self._heap, (at, ticket))
        return ticket

    def disarm(self, ticket: int) -> None:
        with self._lock:
            self._armed.pop(ticket, None)

    def expire(self) -> int:
        """Shut down every socket past its deadline; returns how many."""
        now = self.clock()
        late = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                at, ticket = heapq.heappop(self._heap)
                armed = self._armed.get(ticket)
                if armed is not None and armed[0] == at:  # not re-armed or disarmed since
                    late.append(self._armed.pop(ticket)[1])
        for sock in late:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed by its own thread
        return len(late)

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._watch, name="request-deadlines", daemon=True)
                self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(CHECK_SECONDS)
            self.expire()
