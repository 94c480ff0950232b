"""What the audit log's entries tell GitHub and the notification targets, and when a refused message is tried again.

The audit log is the outbox: every step is an entry written where it happens, and each feed ("github",
"notify:<n>") keeps a cursor over it (deployer/report/outbox.py). This module maps one entry, as plain values, and
the feed's small state to the messages the entry sends, and a new state. It is deterministic: an entry mapped
again from the same state gives the same messages, so a feed that stopped half-way through an entry's messages
maps it again and skips the ones already delivered.

GitHub: a deploy is a deployment of its tag (a job's is created when it is queued), whose statuses follow the
deploy: queued, in_progress, success (at the flip: traffic has moved), failure; a canary is in_progress with its
weight until promoted (success) or aborted (failure); a release superseded while queued is inactive. A rollback
is a deployment of the tag it went back to, created when it finished. A deployment that reached an end state
takes no other status, so a job run again after its worker died does not report twice.

Pure: no I/O, no clock; `now` is given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

from deployer.plan.job_states import JOB_ID_RE

GITHUB_FEED = "github"
DESCRIPTION_MAX = 140  # GitHub refuses a longer status description
END_STATES = ("success", "failure", "error", "inactive")
KEPT_DEPLOYMENTS = 200  # the deployments a feed remembers: enough for the jobs in flight and those just ended
KEPT_JOBS = 100

FIRST_DELAY = 1.0
MOST_DELAY = 60.0
MOST_HEADER_DELAY = 3600.0  # a Retry-After or a rate limit's reset further away than this is waited for this long
RETRIED_CLIENT_ERRORS = (401, 403, 408, 429)  # a token being fixed, a rate limit, a timeout: not the message's fault


# --- the messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GithubTarget:
    """An app that reports to GitHub: its repository, the environment, the URL a success links to."""

    repository: str
    environment: str
    environment_url: str | None = None


@dataclass(frozen=True)
class CreateDeployment:
    key: str  # the job id, or `<app>#<seq>` for a deploy run by hand
    app: str
    repository: str
    ref: str
    environment: str

    def body(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "environment": self.environment,
            "auto_merge": False,
            "required_contexts": [],
            "payload": {"job": self.key},
            "description": f"deployer: {self.ref}"[:DESCRIPTION_MAX],
            "transient_environment": False,
        }


@dataclass(frozen=True)
class DeploymentStatus:
    key: str
    app: str
    repository: str
    state: str  # queued | in_progress | success | failure | error | inactive
    description: str
    environment_url: str | None = None
    log_url: str | None = None  # the job's console page, where a [server] public_url and a [console] exist

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"state": self.state, "description": self.description[:DESCRIPTION_MAX]}
        if self.environment_url:
            body["environment_url"] = self.environment_url
        if self.log_url:
            body["log_url"] = self.log_url
        if self.state == "success":
            body["auto_inactive"] = True  # the release it replaced becomes inactive on GitHub's side
        return body


@dataclass(frozen=True)
class Notification:
    id: str  # stable: derived from the audit entry's seq, so a redelivery carries the same one
    event: str
    app: str | None
    text: str
    fields: Mapping[str, Any]


def job_page(public_url: str | None, job: str | None) -> str | None:
    """A job's stable console page (`<public_url>/console/jobs/<id>`), for statuses and notifications to link to;
    None without a public URL, or for a deploy run by hand, which is no job."""
    if not public_url or not job or not JOB_ID_RE.fullmatch(job):  # only the queue's jobs have a console page
        return None
    return f"{public_url.rstrip('/')}/console/jobs/{job}"


# --- GitHub ----------------------------------------------------------------------------------------


def github_messages(
    entry: Mapping[str, Any],
    targets: Mapping[str, GithubTarget],
    state: Mapping[str, Any],
    public_url: str | None = None,
) -> tuple[list[CreateDeployment | DeploymentStatus], dict[str, Any]]:
    """The GitHub messages of one audit entry and the feed's state after it.

    The state (plain JSON) holds `deployments` (key -> app, tag, the last state and description sent), `open`
    (app -> the key of the deploy running now) and `canary` (app -> the key of its running canary).
    """
    new = {
        "deployments": dict(state.get("deployments", {})),
        "open": dict(state.get("open", {})),
        "canary": dict(state.get("canary", {})),
    }
    app = entry.get("app")
    target = targets.get(app) if isinstance(app, str) else None
    if target is None:
        return [], new
    messages: list[CreateDeployment | DeploymentStatus] = []
    deployments, event, job = new["deployments"], entry.get("event"), entry.get("job")

    def create(key: str, tag: str) -> None:
        if key not in deployments:
            deployments[key] = {"app": app, "tag": tag, "last": None}
            messages.append(CreateDeployment(key, app, target.repository, tag, target.environment))

    def status(key: str | None, state_name: str, description: str) -> None:
        known = deployments.get(key) if key else None
        if known is None or known["last"] in END_STATES:
            return
        if (known["last"], known.get("said")) == (state_name, description):
            return  # the same status again (a job run again after its worker died starts again): sent once
        deployments[key] = {**known, "last": state_name, "said": description}
        url = target.environment_url if state_name == "success" else None
        log = job_page(public_url, key)
        messages.append(DeploymentStatus(key, app, target.repository, state_name, description, url, log))

    tag = entry.get("tag")
    if event == "job.queued" and job and tag and entry.get("kind") in ("release", "redeploy"):
        create(job, tag)
        status(job, "queued", f"{tag} is queued")
    elif event == "deploy.started" and tag:
        key = job or f"{app}#{entry.get('seq')}"
        new["open"][app] = key
        create(key, tag)
        weight = entry.get("canary")
        status(key, "in_progress", f"canary of {tag} starting at {weight}%" if weight else f"deploying {tag}")
    elif event == "step" and entry.get("step") == "flip" and entry.get("outcome") == "ok" and not entry.get("canary"):
        key = new["open"].get(app)
        if key and (job is None or job == key):
            status(key, "success", f"{(deployments.get(key) or {}).get('tag')} is live")
    elif event == "deploy.finished" and entry.get("outcome") == "ok":
        key = job or new["open"].get(app)
        new["open"].pop(app, None)
        if entry.get("canary"):
            if key in deployments:
                new["canary"][app] = key
            status(key, "in_progress", f"canary: {tag} takes {entry['canary']}% of the traffic")
        else:
            status(key, "success", f"{tag} is live")
    elif event == "deploy.failed":
        key = job or new["open"].get(app)
        new["open"].pop(app, None)
        status(key, "failure", str(entry.get("error") or "the deploy failed"))
    elif event == "rollback.finished" and entry.get("outcome") == "ok" and tag:
        key = job or f"{app}#{entry.get('seq')}"
        create(key, tag)
        status(key, "success", f"rolled back to {tag}")
    elif event == "promote.finished":
        status(new["canary"].pop(app, None), "success", f"canary promoted: {tag} takes all the traffic")
    elif event == "abort.finished":
        reason = entry.get("reason")
        status(new["canary"].pop(app, None), "failure", "canary aborted" + (f": {reason}" if reason else ""))
    elif event == "job.superseded" and job:
        status(job, "inactive", f"superseded by {entry.get('superseded_by') or 'a newer release'}")
    elif event == "job.failed" and job:
        status(job, "failure", str(entry.get("reason") or "the job failed"))
    elif event == "job.finished" and job and entry.get("outcome") in ("ok", "skipped"):
        # a job run again after its worker died finds its tag live: the deploy it reported had done its work.
        # A release that started a canary ends with the canary running: its deployment waits for the promote.
        if job in new["canary"].values():
            pass
        elif (deployments.get(job) or {}).get("tag") == tag or entry.get("outcome") == "skipped":
            status(job, "success", str(entry.get("reason") or "live"))
    new["deployments"] = _last(deployments, KEPT_DEPLOYMENTS)
    return messages, new


def _last(items: dict[str, Any], keep: int) -> dict[str, Any]:
    """The `keep` newest items (dicts keep their insertion order); the ones still open stay too."""
    if len(items) <= keep:
        return items
    ended = [k for k, v in items.items() if v.get("last") in END_STATES]
    drop = set(ended[: len(items) - keep])
    return {k: v for k, v in items.items() if k not in drop}


def github_request(message: CreateDeployment | DeploymentStatus, deployment_id: int | None) -> tuple[str, str]:
    """The method and path a message is sent to (a status needs its deployment's id)."""
    if isinstance(message, CreateDeployment):
        return "POST", f"/repos/{message.repository}/deployments"
    return "POST", f"/repos/{message.repository}/deployments/{deployment_id}/statuses"


def found_deployment(answer: Any, key: str) -> int | None:
    """The id of the deployment created for `key`, in GitHub's answer to GET .../deployments?ref=&environment=."""
    for deployment in answer if isinstance(answer, list) else []:
        payload = deployment.get("payload") if isinstance(deployment, dict) else None
        if isinstance(payload, str):  # GitHub answers the payload as a string when it was sent as one
            try:
                payload = json.loads(payload)
            except ValueError:
                payload = None
        if isinstance(payload, dict) and payload.get("job") == key and isinstance(deployment.get("id"), int):
            return deployment["id"]
    return None


# --- notifications ---------------------------------------------------------------------------------


def notify_messages(
    entry: Mapping[str, Any], events: frozenset[str], state: Mapping[str, Any], public_url: str | None = None
) -> tuple[list[Notification], dict[str, Any]]:
    """The notification an entry sends to a target that wants `events` ("*": all), and the feed's state after.

    The state remembers the jobs whose failure was told (a failed deploy's job fails too: told once) and the
    rollouts (a rollout job that ends is a rollout finished, not a deploy).
    """
    new = {"failed": list(state.get("failed", [])), "rollouts": list(state.get("rollouts", []))}
    event, app, job, tag = entry.get("event"), entry.get("app"), entry.get("job"), entry.get("tag")
    name, text = None, ""
    if event == "deploy.finished" and entry.get("outcome") == "ok":
        if entry.get("canary"):
            name, text = "canary.started", f"{app}: canary of {tag} started at {entry['canary']}%"
        else:
            name, text = "deploy.succeeded", f"{app}: {tag} is live"
    elif event == "deploy.failed":
        name, text = "deploy.failed", f"{app}: deploy of {tag} failed: {entry.get('error')}"
        new["failed"] = [*new["failed"], job][-KEPT_JOBS:] if job else new["failed"]
    elif event == "job.failed" and job not in new["failed"] and job not in new["rollouts"]:
        name, text = "deploy.failed", f"{app}: job {job} failed: {entry.get('reason')}"
    elif event in ("rollback.finished", "rollback.failed"):
        ok = event == "rollback.finished"
        name = "rollback"
        text = f"{app}: rolled back to {tag}" if ok else f"{app}: rollback failed: {entry.get('error')}"
    elif event == "promote.finished":
        name, text = "canary.promoted", f"{app}: canary promoted, {tag} takes all the traffic"
    elif event == "abort.finished":
        reason = entry.get("reason")
        name, text = (
            "canary.aborted",
            f"{app}: canary aborted, {tag} serves everything" + (f" ({reason})" if reason else ""),
        )
    elif event in ("rollout.planned", "rollout.resumed") and entry.get("rollout"):
        if entry["rollout"] not in new["rollouts"]:
            new["rollouts"] = [*new["rollouts"], entry["rollout"]][-KEPT_JOBS:]
    elif event == "rollout.stopping":
        reason = str(entry.get("reason") or "")
        name = "rollout.aborted" if reason.startswith("aborted") else "rollout.stopped"
        text = f"{app}: rollout {entry.get('rollout')} stopped: {reason}"
    elif event == "rollout.host" and entry.get("outcome") == "failed":
        name, text = "rollout.stopped", f"{app}: rollout stopped on {entry.get('host')}: {entry.get('reason')}"
    elif event == "job.finished" and job in new["rollouts"]:
        name, text = "rollout.finished", f"{app}: rollout {job}: {entry.get('reason')}"
    elif event == "worker.fault":
        name, text = "fault.open", f"fault on this host: {entry.get('fault')}: {entry.get('reason')}"
    if name is None or ("*" not in events and name not in events):
        return [], new
    fields = {k: entry.get(k) for k in ("app", "job", "tag", "outcome", "ts") if entry.get(k) is not None}
    if (page := job_page(public_url, job)) is not None:
        fields["url"] = page
    return [Notification(f"audit-{entry.get('seq')}", name, app, text, fields)], new


def notification_body(note: Notification, fmt: str) -> bytes:
    """The bytes a notification posts: our JSON, or Slack's incoming-webhook schema (section and context blocks)."""
    if fmt == "slack":
        shown = (
            {**note.fields, "job": f"<{note.fields['url']}|{note.fields['job']}>"}
            if "url" in note.fields
            else note.fields
        )
        context = " · ".join(str(shown[k]) for k in ("app", "job", "ts") if k in shown)
        body: dict[str, Any] = {
            "text": note.text,
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": f"*{note.event}*: {note.text}"[:3000]}},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{context} · {note.id}"[:3000]}]},
            ],
        }
    else:
        body = {"id": note.id, "event": note.event, "text": note.text, **note.fields}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


# --- answers and retries ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpAnswer:
    """What a POST or GET got: its status (None: no answer in time, or no connection), the JSON body, the headers
    a wait is read from, and a short problem that names no secret."""

    status: int | None
    body: Any = None
    retry_after: str | None = None
    rate_reset: str | None = None
    problem: str = ""


@dataclass(frozen=True)
class Verdict:
    """What becomes of a message after an answer: delivered, tried again after `delay` s, or refused for good."""

    step: str  # "delivered" | "retry" | "refused"
    delay: float = 0.0
    reason: str = ""


def backoff(attempt: int) -> float:
    """1 s, doubling, to 60 s: the wait after the `attempt`-th failure in a row."""
    return min(MOST_DELAY, FIRST_DELAY * 2 ** max(0, attempt - 1))


def judge(
    status: int | None,
    *,
    attempt: int,
    now: float,
    retry_after: str | None = None,
    rate_reset: str | None = None,
    problem: str = "",
) -> Verdict:
    """The verdict on an answer (`status` None: no answer, e.g. a timeout). 401, 403, 408, 429 and 5xx wait and
    try again, honouring Retry-After and X-RateLimit-Reset; any other 4xx is refused: the message itself is wrong.
    """
    if status is not None and 200 <= status < 300:
        return Verdict("delivered")
    reason = problem or (f"HTTP {status}" if status is not None else "no answer")
    if status is not None and 400 <= status < 500 and status not in RETRIED_CLIENT_ERRORS:
        return Verdict("refused", reason=reason)
    delay = backoff(attempt)
    asked = _header_delay(retry_after, rate_reset, now)
    if asked is not None:
        delay = max(1.0, min(asked, MOST_HEADER_DELAY))
    return Verdict("retry", delay, reason)


def _header_delay(retry_after: str | None, rate_reset: str | None, now: float) -> float | None:
    if retry_after:
        text = retry_after.strip()
        if text.isdigit():
            return float(text)
        try:
            return parsedate_to_datetime(text).timestamp() - now
        except (TypeError, ValueError):
            pass
    if rate_reset and rate_reset.strip().isdigit():
        return float(rate_reset.strip()) - now
    return None
