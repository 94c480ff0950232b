"""A job's statuses and kinds: the words the queue's rows, the API's answers and the audit log share.

They are StrEnums, so a member equals its string: a row written as text reads back equal, and JSON keeps the text.
"""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    """accepting -> queued -> running -> succeeded | failed; queued -> superseded | skipped; running -> queued."""

    ACCEPTING = "accepting"  # held until its audit record is written; no worker claims it
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    SKIPPED = "skipped"

    @classmethod
    def finished(cls) -> frozenset[JobStatus]:
        """The statuses a job never leaves."""
        return FINISHED

    @classmethod
    def waiting(cls) -> frozenset[JobStatus]:
        """The statuses of a job that still runs or will."""
        return WAITING


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUPERSEDED, JobStatus.SKIPPED})
WAITING = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class JobKind(enum.StrEnum):
    RELEASE = "release"  # a GitHub release
    REDEPLOY = "redeploy"  # a signed request: a tag, or (no tag) whatever is active when it runs
    ROLLOUT = "rollout"  # a controller's job: a tag rolled out across the fleet's hosts (deployer/fleet/rollout.py)
    PROMOTE = "promote"  # a signed request that ends a running canary; it names no tag
    ABORT = "abort"

    @classmethod
    def canary_actions(cls) -> frozenset[JobKind]:
        """The kinds that end a running canary."""
        return CANARY_ACTIONS


CANARY_ACTIONS = frozenset({JobKind.PROMOTE, JobKind.ABORT})
