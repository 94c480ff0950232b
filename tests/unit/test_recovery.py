"""Which jobs a stopped worker left running are queued again and which are failed, one row per case
(deployer/plan/claims.py `decide_recovery`)."""

from __future__ import annotations

import pytest

from deployer.plan.claims import Interrupted, Recovery, Resumable, decide_recovery
from deployer.plan.job_states import JobKind

NOW = 100_000.0
LIMITS = Resumable(deadline=21_600.0, grace=1_200.0)
AGAIN = "the worker stopped while this job ran; queued again"


def interrupted(kind: str, attempts: int, queued_ago: float = 60.0) -> Interrupted:
    return Interrupted(seq=1, id="job-1", kind=kind, attempts=attempts, created_at=NOW - queued_ago)


def poison(attempts: int) -> str:
    return (
        f"the worker stopped while this job ran, {attempts} times; not tried again "
        f"(check the worker's log, then redeploy by hand)"
    )


def resumes(attempts: int) -> str:
    return (
        f"the controller stopped while this rollout ran ({attempts} {'time' if attempts == 1 else 'times'}); "
        f"it resumes from each host's recorded state"
    )


LATE = (
    "the controller stopped while this rollout ran, 9 times, the last after its deadline (21600 s) and the time "
    "to revert (1200 s) had passed; not tried again (check `deployer fleet status`, then redeploy by hand)"
)

CASES = [
    # name, job, limits, requeued, reason
    ("a release stopped once is queued again", interrupted(JobKind.RELEASE, 1), LIMITS, True, AGAIN),
    ("a release stopped twice is queued again", interrupted(JobKind.RELEASE, 2), LIMITS, True, AGAIN),
    ("a release stopped three times is failed", interrupted(JobKind.RELEASE, 3), LIMITS, False, poison(3)),
    ("a redeploy keeps the three-stops rule", interrupted(JobKind.REDEPLOY, 4), LIMITS, False, poison(4)),
    ("a canary promote keeps the three-stops rule", interrupted(JobKind.PROMOTE, 3), LIMITS, False, poison(3)),
    ("a rollout stopped once resumes", interrupted(JobKind.ROLLOUT, 1), LIMITS, True, resumes(1)),
    ("a rollout stopped three times resumes", interrupted(JobKind.ROLLOUT, 3), LIMITS, True, resumes(3)),
    ("a rollout stopped fifty times resumes", interrupted(JobKind.ROLLOUT, 50), LIMITS, True, resumes(50)),
    (
        "a rollout past its deadline resumes, to give up and revert",
        interrupted(JobKind.ROLLOUT, 9, queued_ago=21_600.0 + 600),
        LIMITS,
        True,
        resumes(9),
    ),
    (
        "a rollout at the end of its grace still resumes",
        interrupted(JobKind.ROLLOUT, 9, queued_ago=21_600.0 + 1_200),
        LIMITS,
        True,
        resumes(9),
    ),
    (
        "a rollout past its deadline and its grace is failed",
        interrupted(JobKind.ROLLOUT, 9, queued_ago=21_600.0 + 1_201),
        LIMITS,
        False,
        LATE,
    ),
    (
        "a rollout row on a host with no [fleet] keeps the three-stops rule",
        interrupted(JobKind.ROLLOUT, 3),
        None,
        False,
        poison(3),
    ),
]


@pytest.mark.parametrize("job, limits, requeued, reason", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_the_recovery_policy(job, limits, requeued, reason):
    assert decide_recovery([job], max_attempts=3, rollout=limits, now=NOW) == [Recovery(1, "job-1", requeued, reason)]


def test_each_job_is_decided_on_its_own_in_queue_order():
    jobs = [
        Interrupted(1, "job-1", JobKind.ROLLOUT, 7, NOW),
        Interrupted(2, "job-2", JobKind.RELEASE, 3, NOW),
        Interrupted(3, "job-3", JobKind.RELEASE, 1, NOW),
    ]
    decisions = decide_recovery(jobs, max_attempts=3, rollout=LIMITS, now=NOW)
    assert [(d.id, d.requeued) for d in decisions] == [("job-1", True), ("job-2", False), ("job-3", True)]
