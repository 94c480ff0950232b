"""The newest deployable release wins, one row per case: an arriving release is queued, waits behind a newer one in
flight, or is refused as older than one live or succeeded (deployer/plan/release_order.py)."""

from __future__ import annotations

import pytest

from deployer.plan.release_order import Arrival, KnownRelease, decide_arrival

P1, P2, P3, P9 = "2026-02-02T00:00:00Z", "2026-02-03T00:00:00Z", "2026-02-04T00:00:00Z", "2026-03-01T00:00:00Z"


def known(tag: str, at: str, where: str) -> KnownRelease:
    return KnownRelease(f"job-{tag}", tag, at, where)


def waits(tag: str, at: str, newer: KnownRelease) -> Arrival:
    return Arrival(
        "waiting",
        f"release {tag} (published {at}) waits behind release {newer.tag} (published {newer.published_at}), "
        f"which is {newer.where}; it runs only if that one fails",
        newer,
    )


def refused(tag: str, at: str, newer: KnownRelease) -> Arrival:
    return Arrival(
        "older",
        f"release {tag} (published {at}) is older than release {newer.tag} (published {newer.published_at}), "
        f"which is {newer.where}; deploy it on purpose with POST /deploy",
        newer,
    )


QUEUED = Arrival("queued", "queued")
RUNNING_9 = known("9.9.9", P9, "running")
QUEUED_9 = known("9.9.9", P9, "queued")
QUEUED_3 = known("0.0.3", P3, "queued")
LIVE_3 = known("0.0.3", P3, "live")
DONE_3 = known("0.0.3", P3, "succeeded")
LIVE_9 = known("9.9.9", P9, "live")

# (case, arriving tag, its published_at, the releases the queue knows of the app, the outcome)
CASES = [
    ("nothing else known: queued", "0.0.3", P3, [], QUEUED),
    ("without a time the order is not checked", "0.0.2", None, [LIVE_3], QUEUED),
    ("older than one running: it waits behind it", "0.0.3", P3, [RUNNING_9], waits("0.0.3", P3, RUNNING_9)),
    ("older than one queued: it waits behind it", "0.0.3", P3, [QUEUED_9], waits("0.0.3", P3, QUEUED_9)),
    (
        "older than two in flight: it waits behind the newest",
        "0.0.2",
        P1,
        [RUNNING_9, QUEUED_3],
        waits("0.0.2", P1, RUNNING_9),
    ),
    ("older than the live one: refused", "0.0.2", P1, [LIVE_3], refused("0.0.2", P1, LIVE_3)),
    ("older than a succeeded one: refused", "0.0.2", P1, [DONE_3], refused("0.0.2", P1, DONE_3)),
    (
        "older than a live one and one in flight: refused, the live one settles it",
        "0.0.2",
        P1,
        [LIVE_3, RUNNING_9],
        refused("0.0.2", P1, LIVE_3),
    ),
    ("refused by the newest settled one", "0.0.2", P1, [DONE_3, LIVE_9], refused("0.0.2", P1, LIVE_9)),
    ("newer than everything known: queued", "9.9.9", P9, [LIVE_3], QUEUED),
    ("published at the same time is not older", "0.0.4", P3, [LIVE_3, QUEUED_3], QUEUED),
    ("a failed or superseded newer one does not count", "0.0.3", P3, [known("9.9.9", P9, "failed")], QUEUED),
]


@pytest.mark.parametrize(
    "tag, published_at, releases, outcome", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_an_arriving_release(tag, published_at, releases, outcome):
    assert decide_arrival(tag, published_at, releases) == outcome
