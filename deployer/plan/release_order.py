"""Which release of an app is the newest, in the order GitHub published them (pure).

An arriving release is queued; or it waits behind a newer release that is queued or running (it runs only if that
one fails); or it is refused as older, when a newer release is live or has succeeded. At claim time a waiting
release older than a live or succeeded one is superseded by it: a late delivery never deploys over a newer release,
and no release is lost because a newer one failed.

"Newer" is GitHub's `published_at` (one spelling, `YYYY-MM-DDTHH:MM:SSZ`, so it compares as text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SETTLED = frozenset({"live", "succeeded"})  # a newer release here refuses an older one
IN_FLIGHT = frozenset({"queued", "running"})  # a newer release here makes an older one wait


@dataclass(frozen=True)
class KnownRelease:
    """A release of the app that the queue has a job for; `where`: "live", "succeeded", "queued" or "running"."""

    id: str
    tag: str | None
    published_at: str
    where: str


@dataclass(frozen=True)
class Arrival:
    """What happens to an arriving release: "queued", "waiting" (queued behind `newer`) or "older" (refused)."""

    verdict: str
    reason: str
    newer: KnownRelease | None = None


def retried(previous_status: str | None, live: bool) -> bool:
    """Whether a release that arrives again (a redelivery, or a new delivery of the same tag) is tried again: only
    when its last job failed and the tag is not live now. A queued, running or finished one keeps its first answer."""
    return previous_status == "failed" and not live


def retry_reason(tag: str, failed_job: str, arrival_reason: str) -> str:
    """The answer to a release tried again after `failed_job`."""
    again = f"release {tag} failed in {failed_job}; queued again as a retry"
    return again if arrival_reason == "queued" else f"{again}: {arrival_reason}"


def decide_arrival(tag: str, published_at: str | None, known: Sequence[KnownRelease]) -> Arrival:
    """Queue the release, queue it to wait behind the newest release in flight, or refuse it as older.

    Without `published_at` (a caller that has none) the order is not checked.
    """
    if published_at is None:
        return Arrival("queued", "queued")
    newer = [release for release in known if release.published_at > published_at]
    settled = [release for release in newer if release.where in SETTLED]
    if settled:
        best = newest(settled)
        return Arrival(
            "older",
            f"release {tag} (published {published_at}) is older than release {best.tag} "
            f"(published {best.published_at}), which is {best.where}; deploy it on purpose with POST /deploy",
            best,
        )
    in_flight = [release for release in newer if release.where in IN_FLIGHT]
    if in_flight:
        best = newest(in_flight)
        return Arrival("waiting", waiting_reason(tag, published_at, best), best)
    return Arrival("queued", "queued")


def waiting_reason(tag: str | None, published_at: str, newer: KnownRelease) -> str:
    return (
        f"release {tag} (published {published_at}) waits behind release {newer.tag} "
        f"(published {newer.published_at}), which is {newer.where}; it runs only if that one fails"
    )


def stale_reason(tag: str | None, published_at: str, settled: KnownRelease) -> str:
    return (
        f"release {tag} (published {published_at}) is older than release {settled.tag} "
        f"(published {settled.published_at}), which is {settled.where}"
    )


def newest(releases: Sequence[KnownRelease]) -> KnownRelease:
    """The latest published; of two published at once, a live one."""
    return max(releases, key=lambda release: (release.published_at, release.where == "live"))
