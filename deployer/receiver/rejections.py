"""Requests refused before they authenticate: counted in memory, recorded in aggregate, rate-limited per source.

Anyone can send an unsigned request, so recording each one durably lets anyone fill the disk. Each
process instead counts them per (route, status, source) and writes one audit row per key and
interval, with the count, the first reason and the first and last time. An authenticated request
is never counted here: the receiver records it one by one.

Bounds, per receiver process: at most `max_keys` keys are counted in an interval, and every
further key is folded into one overflow row, so an interval writes at most `max_keys + 1` rows
however many sources send. gunicorn runs `workers` processes that do not share this state, so an
interval writes at most workers x (max_keys + 1) rows; the default 64 keys, one-minute interval and
2 workers come to at most 130 small rows a minute, about 190,000 a day under a flood that never
stops. The limiter keeps at most `max_sources` buckets (the least recently seen is dropped first),
and each process has its own, so a source gets at most workers x burst refusals before it is
answered 429, then workers x per_second a second.

The limiter acts only on what failed to authenticate: a correctly signed request from a throttled
source (GitHub behind the same proxy, an operator behind the same NAT) is still verified and served.
A throttled source's request that offers no credential at all is answered 429 before its body is read.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

OVERFLOW = ("*", 0, "*")


@dataclass
class Tally:
    count: int
    reason: str
    first_at: float
    last_at: float


@dataclass
class Bucket:
    tokens: float
    at: float


class Rejections:
    """The counters and buckets of one receiver process; thread-safe (gthread workers share it)."""

    def __init__(
        self,
        emit: Callable[..., None],
        clock: Callable[[], float],
        *,
        interval: float = 60.0,
        max_keys: int = 64,
        burst: int = 30,
        per_second: float = 0.5,
        max_sources: int = 4096,
    ) -> None:
        self.emit = emit
        self.clock = clock
        self.interval = interval
        self.max_keys = max_keys
        self.buckets = SourceBuckets(burst=burst, per_second=per_second, max_sources=max_sources)
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, int, str], Tally] = {}
        self._since = clock()

    def note(self, *, route: str, status: int, source: str | None, reason: str) -> int | None:
        """Count one refusal; returns the seconds to wait when `source` is now over its limit, else None."""
        now = self.clock()
        source = source or "-"
        with self._lock:
            key = (route, status, source)
            if key not in self._tallies and len(self._tallies) >= self.max_keys:
                key = OVERFLOW
            tally = self._tallies.get(key)
            if tally is None:
                self._tallies[key] = Tally(1, reason[:200], now, now)
            else:
                tally.count += 1
                tally.last_at = now
        return self.buckets.take(source, now)

    def retry_after(self, source: str | None) -> int | None:
        """The seconds `source` must wait before a refusal is answered as usual again; None when it need not."""
        return self.buckets.wait(source, self.clock())

    def flush_due(self) -> None:
        """Write the interval's rows once it is over."""
        if self.clock() - self._since >= self.interval:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            tallies, self._tallies = self._tallies, {}
            since, self._since = self._since, self.clock()
        for (route, status, source), tally in tallies.items():
            fields: dict[str, Any] = {
                "route": route,
                "source": source,
                "count": tally.count,
                "reason": tally.reason,
                "first_at": tally.first_at,
                "last_at": tally.last_at,
                "interval_start": since,
            }
            if (route, status, source) == OVERFLOW:
                fields["reason"] = f"more than {self.max_keys} routes, statuses and sources in one interval"
            else:
                fields["status"] = status
            self.emit("rejected_requests", **fields)


class SourceBuckets:
    """A token bucket per source: `burst` at once, then `per_second`; the least recently seen go past `max_sources`.

    Thread-safe. The refusals above take from them. Each gunicorn worker holds its own; the console's sign-in
    attempts are counted in the queue database instead (deployer/queue/attempts.py), where every worker counts the
    same ones.
    """

    def __init__(self, *, burst: int, per_second: float, max_sources: int = 4096) -> None:
        self.burst = burst
        self.per_second = per_second
        self.max_sources = max_sources
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, Bucket] = OrderedDict()

    def __len__(self) -> int:
        """How many sources it holds a bucket for."""
        return len(self._buckets)

    def take(self, source: str | None, now: float) -> int | None:
        """Spend one token of `source`; the seconds to wait when it had none left, else None."""
        with self._lock:
            bucket = self._refilled(source or "-", now)
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return None
            return self._wait(bucket)

    def wait(self, source: str | None, now: float) -> int | None:
        """The seconds `source` must wait for a token; None when it has one."""
        with self._lock:
            bucket = self._refilled(source or "-", now)
            return None if bucket.tokens >= 1 else self._wait(bucket)

    def _refilled(self, source: str, now: float) -> Bucket:
        bucket = self._buckets.get(source)
        if bucket is None:
            bucket = self._buckets[source] = Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_sources:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.per_second)
            bucket.at = now
            self._buckets.move_to_end(source)
        return bucket

    def _wait(self, bucket: Bucket) -> int:
        return max(1, math.ceil((1 - bucket.tokens) / self.per_second))
