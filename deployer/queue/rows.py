"""Root never trusts a queue row: the receiver's group can write the queue file, so each field is checked again."""

from __future__ import annotations

from collections.abc import Mapping

from deployer.config import AppConfig
from deployer.errors import InvalidTag
from deployer.plan.tags import DOCKER_TAG_RE, check_tag
from deployer.queue.model import CANARY_KINDS, JOB_ID_RE, KINDS, Job, JobKind

MAX_ACTOR_CHARS = 200


def row_problem(job: Job, apps: Mapping[str, AppConfig], fleet_apps: tuple[str, ...] = ()) -> str | None:
    """Why a job read from the queue must not be acted on, or None.

    The receiver's group can write the queue file, so the worker checks every field it uses again:
    the id becomes a path, the app and tag reach Docker and hooks, the actor reaches the audit log.
    A rollout names a fleet app (`fleet_apps`); every other kind an app of this host.
    """
    if not isinstance(job.id, str) or not JOB_ID_RE.fullmatch(job.id):
        return f"job id {_shown(job.id)} is not a job id (job-<16 hex digits>)"
    if job.kind not in KINDS:
        return f"job kind {_shown(job.kind)} is not one of {', '.join(sorted(KINDS))}"
    if job.kind == JobKind.ROLLOUT:
        if not isinstance(job.app, str) or job.app not in fleet_apps:
            return f"app {_shown(job.app)} is not a fleet app ([fleet] apps)"
        if not isinstance(job.tag, str) or not DOCKER_TAG_RE.fullmatch(job.tag):
            return f"tag {_shown(job.tag)} is not a Docker tag"  # each host checks its own tag_pattern too
    elif not isinstance(job.app, str) or job.app not in apps:
        return f"app {_shown(job.app)} is not in the config"
    elif job.kind in CANARY_KINDS:
        if job.tag is not None:
            return f"a {job.kind} job names no tag, but this one names {_shown(job.tag)}"
    elif job.tag is None:
        if job.kind != JobKind.REDEPLOY:
            return "a release job names no tag"
    else:
        try:
            check_tag(apps[job.app], job.tag)
        except InvalidTag as exc:
            return str(exc)
    if not isinstance(job.actor, str) or not 0 < len(job.actor) <= MAX_ACTOR_CHARS or not job.actor.isprintable():
        return f"actor {_shown(job.actor)} is not printable text of at most {MAX_ACTOR_CHARS} characters"
    if not isinstance(job.source, Mapping):
        return "the job's source is not a JSON object"
    numbers = (job.attempts, job.not_before, job.created_at)
    if not all(isinstance(n, (int, float)) and not isinstance(n, bool) for n in numbers):
        return "the job's attempts and times are not numbers"
    return None


def _shown(value: object) -> str:
    return repr(value)[:60]
