"""The claim policy, one row per case: which waiting job runs, which it supersedes and why (deployer/plan/claims.py)."""

from __future__ import annotations

import pytest

from deployer.plan.claims import Candidate, ClaimDecision, Superseded, decide_claim
from deployer.plan.job_states import JobKind
from deployer.plan.release_order import KnownRelease

NOW = 1_000.0
LATER = "which was queued later"
NEWER = "a newer release than the live one this would redeploy"


def job(seq: int, tag: str | None, kind: str = JobKind.RELEASE, app: str = "web", not_before: object = 0.0):
    return Candidate(seq=seq, id=f"job-{seq}", app=app, tag=tag, kind=kind, not_before=not_before)


def by(seq: int, tag: str | None, why: str) -> str:
    return f"superseded by job-{seq} ({tag or 'active release'}), {why}"


# (case, waiting in queue order, busy apps, live tags, the job that runs or None, [(superseded seq, reason)])
CASES = [
    ("nothing waits", [], set(), {}, None, []),
    ("one release runs alone", [job(1, "v1")], set(), {}, 1, []),
    (
        "the newest release supersedes the older ones",
        [job(1, "v1"), job(2, "v2"), job(3, "v3")],
        set(),
        {},
        3,
        [(1, by(3, "v3", LATER)), (2, by(3, "v3", LATER))],
    ),
    (
        "a job that went back to the queue is superseded by a newer one",
        [job(1, "v1"), job(4, "v2", JobKind.REDEPLOY)],
        set(),
        {"web": "v1"},
        4,
        [(1, by(4, "v2", LATER))],
    ),
    ("a busy app waits; another app is not held up", [job(1, "v2"), job(2, "v1", app="api")], {"web"}, {}, 2, []),
    ("a busy app alone: nothing runs", [job(1, "v2")], {"web"}, {}, None, []),
    (
        "apps are served in the order their oldest waiting job arrived",
        [job(1, "v1", app="api"), job(2, "v1"), job(3, "v2", app="api")],
        set(),
        {},
        3,
        [(1, by(3, "v2", LATER))],
    ),
    (
        "a tagless redeploy behind a release does not cancel it",
        [job(1, "v2"), job(2, None, JobKind.REDEPLOY)],
        set(),
        {"web": "v1"},
        1,
        [(2, by(1, "v2", NEWER))],
    ),
    (
        "a redeploy of the live tag never cancels a newer release",
        [job(1, "v2"), job(2, "v1", JobKind.REDEPLOY)],
        set(),
        {"web": "v1"},
        1,
        [(2, by(1, "v2", NEWER))],
    ),
    (
        "of several releases behind a redeploy of the live tag, the last runs",
        [job(1, "v2"), job(2, "v3"), job(3, "v1", JobKind.REDEPLOY)],
        set(),
        {"web": "v1"},
        2,
        [(1, by(2, "v3", LATER)), (3, by(2, "v3", NEWER))],
    ),
    (
        "a rollback to another tag is the last word over a waiting release",
        [job(1, "v4"), job(2, "v1", JobKind.REDEPLOY)],
        set(),
        {"web": "v3"},
        2,
        [(1, by(2, "v1", LATER))],
    ),
    ("a rollback with no release waiting runs", [job(1, "v1", JobKind.REDEPLOY)], set(), {"web": "v3"}, 1, []),
    (
        "a tagless redeploy with no release waiting runs, named the active release",
        [job(1, "v2", JobKind.REDEPLOY), job(2, None, JobKind.REDEPLOY)],
        set(),
        {"web": "v1"},
        2,
        [(1, by(2, None, LATER))],
    ),
    (
        "a redeploy of the live tag with nothing else waiting runs",
        [job(1, "v1", JobKind.REDEPLOY)],
        set(),
        {"web": "v1"},
        1,
        [],
    ),
    (
        "a promote runs first, alone, and supersedes nothing",
        [job(1, "v2"), job(2, None, JobKind.PROMOTE), job(3, "v3")],
        set(),
        {"web": "v1"},
        2,
        [],
    ),
    (
        "an abort runs first, alone, and supersedes nothing",
        [job(1, "v2"), job(2, None, JobKind.ABORT)],
        set(),
        {},
        2,
        [],
    ),
    ("a promote of a busy app waits", [job(1, None, JobKind.PROMOTE)], {"web"}, {}, None, []),
    (
        "a promote not yet due holds its app",
        [job(1, "v2"), job(2, None, JobKind.PROMOTE, not_before=NOW + 1)],
        set(),
        {},
        None,
        [],
    ),
    (
        "a job not yet due waits; another app runs",
        [job(1, "v2", not_before=NOW + 5), job(2, "v1", app="api")],
        set(),
        {},
        2,
        [],
    ),
    ("a job not yet due: nothing runs", [job(1, "v2", not_before=NOW + 5)], set(), {}, None, []),
    ("a job due now runs", [job(1, "v2", not_before=NOW)], set(), {}, 1, []),
    (
        "only the job that runs must be due",
        [job(1, "v1", not_before=NOW + 5), job(2, "v2")],
        set(),
        {},
        2,
        [(1, by(2, "v2", LATER))],
    ),
    (
        "a row with a malformed time is claimed at once, for the worker to refuse",
        [job(1, "v2", not_before="soon")],
        set(),
        {},
        1,
        [],
    ),
    (
        "the newest rollout of a fleet app supersedes the older one",
        [job(1, "v1", JobKind.ROLLOUT), job(2, "v2", JobKind.ROLLOUT)],
        set(),
        {},
        2,
        [(1, by(2, "v2", LATER))],
    ),
]


@pytest.mark.parametrize(
    "waiting, busy, live, runs, superseded", [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_the_claim_policy(waiting, busy, live, runs, superseded):
    decision = decide_claim(waiting, busy=busy, live=live, now=NOW)
    if runs is None:
        assert decision is None
        return
    expected = ClaimDecision(
        next(j for j in waiting if j.seq == runs), tuple(Superseded(seq, reason) for seq, reason in superseded)
    )
    assert decision == expected


# --- the order releases were published in (deployer/plan/release_order.py) -----------------------------------------

P1, P2, P3, P9 = "2026-02-02T00:00:00Z", "2026-02-03T00:00:00Z", "2026-02-04T00:00:00Z", "2026-03-01T00:00:00Z"


def published(seq: int, tag: str, at: str, kind: str = JobKind.RELEASE, app: str = "web", not_before: object = 0.0):
    return Candidate(seq=seq, id=f"job-{seq}", app=app, tag=tag, kind=kind, not_before=not_before, published_at=at)


def settled(seq: int, tag: str, at: str, where: str = "live") -> KnownRelease:
    return KnownRelease(f"job-{seq}", tag, at, where)


def older(tag: str, at: str, newer: KnownRelease) -> str:
    return (
        f"release {tag} (published {at}) is older than release {newer.tag} "
        f"(published {newer.published_at}), which is {newer.where}"
    )


LIVE_3 = settled(10, "0.0.3", P3)
DONE_3 = settled(10, "0.0.3", P3, "succeeded")

# (case, waiting in queue order, busy apps, newest live or succeeded release by app, runs or None,
#  [(superseded seq, by, reason)])
PUBLISHED_CASES = [
    (
        "an older release queued later waits behind the newer one, not the other way round",
        [published(1, "9.9.9", P9), published(2, "0.0.3", P2)],
        set(),
        {},
        1,
        [],
    ),
    (
        "the newer one failed: the newest release still waiting runs, the older one waits behind it",
        [published(2, "0.0.3", P3), published(3, "0.0.2", P1)],
        set(),
        {},
        2,
        [],
    ),
    (
        "a waiting release older than a live one is superseded by it, and nothing runs",
        [published(3, "0.0.2", P1)],
        set(),
        {"web": LIVE_3},
        None,
        [(3, "job-10", older("0.0.2", P1, LIVE_3))],
    ),
    (
        "a waiting release older than a succeeded one is superseded by it, even while its app is busy",
        [published(3, "0.0.2", P1)],
        {"web"},
        {"web": DONE_3},
        None,
        [(3, "job-10", older("0.0.2", P1, DONE_3))],
    ),
    (
        "a release newer than the live one still runs, and the stale one goes",
        [published(3, "0.0.2", P1), published(4, "9.9.9", P9)],
        set(),
        {"web": LIVE_3},
        4,
        [(3, "job-10", older("0.0.2", P1, LIVE_3))],
    ),
    (
        "releases published at the same time: the last queued supersedes the others, as without a time",
        [published(1, "v9", P2), published(2, "v2", P2)],
        set(),
        {},
        2,
        [(1, "job-2", by(2, "v2", LATER))],
    ),
    (
        "a rollback queued after the releases supersedes them all, the waiting ones too",
        [published(1, "9.9.9", P9), published(2, "0.0.3", P3), job(3, "0.0.1", JobKind.REDEPLOY)],
        set(),
        {"web": LIVE_3},
        3,
        [(1, "job-3", by(3, "0.0.1", LATER)), (2, "job-3", by(3, "0.0.1", LATER))],
    ),
    (
        "a redeploy of the live tag never cancels a newer release; older ones still wait",
        [published(1, "9.9.9", P9), published(2, "0.0.4", "2026-02-05T00:00:00Z"), job(3, "0.0.3", JobKind.REDEPLOY)],
        set(),
        {"web": LIVE_3},
        1,
        [(3, "job-1", by(1, "9.9.9", NEWER))],
    ),
    (
        "the newest release in its backoff holds the older ones back",
        [published(1, "9.9.9", P9, not_before=NOW + 5), published(2, "0.0.3", P3)],
        set(),
        {},
        None,
        [],
    ),
    (
        "a release without a time is not ordered: the newest waiting one supersedes it",
        [job(1, "v1"), published(2, "0.0.3", P3), published(3, "0.0.2", P1)],
        set(),
        {},
        2,
        [(1, "job-2", by(2, "0.0.3", LATER))],
    ),
]


@pytest.mark.parametrize(
    "waiting, busy, settled_by_app, runs, superseded",
    [case[1:] for case in PUBLISHED_CASES],
    ids=[case[0] for case in PUBLISHED_CASES],
)
def test_the_claim_policy_by_publication(waiting, busy, settled_by_app, runs, superseded):
    decision = decide_claim(waiting, busy=busy, live={"web": "0.0.3"}, now=NOW, settled=settled_by_app)
    if runs is None and not superseded:
        assert decision is None
        return
    run = next((j for j in waiting if j.seq == runs), None)
    assert decision == ClaimDecision(
        run,
        tuple(
            Superseded(seq, reason, None if run is not None and whom == run.id else whom)
            for seq, whom, reason in superseded
        ),
    )
