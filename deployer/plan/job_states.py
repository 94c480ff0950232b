"""A job's statuses and kinds: the words the queue's rows, the API's answers and the audit log share.

They are StrEnums, so a member equals its string: a row written as text reads back equal, and JSON keeps the text.
"""

from __future__ import annotations

import enum
import re

# A job's id as the queue makes it (deployer/queue/model.py's new_job_id): what every layer that meets one checks.
JOB_ID_RE = re.compile(r"^job-[0-9a-f]{16}$")


class JobStatus(enum.StrEnum):
    """accepting -> queued -> running -> succeeded | failed; queued -> superseded | skipped; running -> queued."""

    ACCEPTING = "accepting"  # held until its audit record is written; no worker claims it
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    SKIPPED = "skipped"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.SUPERSEDED, JobStatus.SKIPPED})  # never left
WAITING = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})  # a job that runs, or will


class JobKind(enum.StrEnum):
    RELEASE = "release"  # a GitHub release
    REDEPLOY = "redeploy"  # a signed request: a tag, or (no tag) whatever is active when it runs
    ROLLOUT = "rollout"  # a controller's job: a tag rolled out across the fleet's hosts (deployer/fleet/rollout.py)
    PROMOTE = "promote"  # a signed request that ends a running canary; it names no tag
    ABORT = "abort"


CANARY_KINDS = frozenset({JobKind.PROMOTE, JobKind.ABORT})  # they end a running canary; they name no tag
KINDS = frozenset(JobKind)
