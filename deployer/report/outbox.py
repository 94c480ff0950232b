"""The outbox: each feed reads the audit log after its cursor, in order, and delivers what each entry says.

The audit log is the source of truth: every step is an entry written where it happens, so a worker killed
between a deploy's flip and its status loses nothing: the entry is there, the cursor is behind it. A feed
("github", "notify:<name>") maps an entry to its messages (deployer/plan/report.py, pure), sends them one by one
and moves its cursor after each, so after a crash it resumes at the first message not delivered. A message that
is not answered, or answered 401, 403, 408, 429 or 5xx, is tried again with a backoff (1 s doubling to 60 s,
or what Retry-After / X-RateLimit-Reset ask); the feed waits on it, so its messages keep their order. Any other
refusal is recorded as `report.dropped` and skipped, so the feed does not stall forever. Nothing here blocks or
fails a deploy: the loop runs in its own process, as [server] user.

Delivery is at least once: a crash after GitHub or a receiver answered and before the cursor moved sends that one
message again. A deployment is never created twice: its creation is marked first, and a marked one is looked up
(by its ref, environment and the job in its payload) before it is created again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from deployer.audit.log import AuditLog
from deployer.audit.query import Query
from deployer.config.model import GithubReport, NotifyTarget, ReportsConfig
from deployer.journal import Journal
from deployer.plan.report import (
    GITHUB_FEED,
    CreateDeployment,
    DeploymentStatus,
    GithubTarget,
    HttpAnswer,
    Notification,
    found_deployment,
    github_messages,
    github_request,
    judge,
    notification_body,
    notify_messages,
)
from deployer.queue.reports import Cursor
from deployer.signatures import DELIVERY_HEADER, SIGNATURE_HEADER, github_signature

log = logging.getLogger("deployer.report")

BATCH = 100  # entries read at a time
IDLE_SECONDS = 1.0  # how often an idle feed looks for new entries
KEPT_IDS = 200
GITHUB_HEADERS = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}

# http(method, url, headers, body) -> the answer; the adapter never raises for a failed request
Http = Callable[[str, str, Mapping[str, str], bytes | None], HttpAnswer]


class Feed(Protocol):
    name: str

    def plan(self, entry: Mapping[str, Any], state: Mapping[str, Any]) -> tuple[Sequence[Any], dict[str, Any]]: ...

    def send(self, message: Any, memo: dict[str, Any], save: Callable[[], None]) -> HttpAnswer: ...


class Cursors(Protocol):
    def begin(self, feed: str, head: int) -> Cursor: ...
    def cursor(self, feed: str) -> Cursor: ...
    def save(self, cursor: Cursor) -> None: ...


class AuditReader(Protocol):
    def after(self, seq: int, limit: int) -> list[dict[str, Any]]: ...
    def head(self) -> int: ...


class GithubFeed:
    """Deployments and their statuses, through GitHub's REST API with each app's token."""

    name = GITHUB_FEED

    def __init__(self, apps: Mapping[str, GithubReport], api: str, http: Http, public_url: str | None = None) -> None:
        self.apps = apps
        self.public_url = public_url
        self.targets = {a: GithubTarget(r.repository, r.environment, r.environment_url) for a, r in apps.items()}
        self.api = api.rstrip("/")
        self.http = http

    def plan(self, entry: Mapping[str, Any], state: Mapping[str, Any]) -> tuple[Sequence[Any], dict[str, Any]]:
        return github_messages(entry, self.targets, state, self.public_url)

    def send(self, message: Any, memo: dict[str, Any], save: Callable[[], None]) -> HttpAnswer:
        ids, creating = memo.setdefault("ids", {}), memo.setdefault("creating", [])
        headers = {**GITHUB_HEADERS, "Authorization": f"Bearer {self.apps[message.app].token}"}
        if isinstance(message, CreateDeployment):
            if message.key in creating:  # a creation that may have happened before a crash: look first
                found = self.http(
                    "GET",
                    f"{self.api}/repos/{message.repository}/deployments?ref={message.ref}"
                    f"&environment={message.environment}&per_page=100",
                    headers,
                    None,
                )
                if found.status is None or not 200 <= found.status < 300:
                    return found
                if (deployment := found_deployment(found.body, message.key)) is not None:
                    self._created(memo, message.key, deployment)
                    return HttpAnswer(200)
            else:
                memo["creating"] = [*creating, message.key]
                save()
        deployment_id = ids.get(message.key)
        if isinstance(message, DeploymentStatus) and deployment_id is None:
            return HttpAnswer(410, problem="its deployment was not created")
        method, path = github_request(message, deployment_id)
        answer = self.http(method, self.api + path, headers, _json(message.body()))
        if isinstance(message, CreateDeployment) and answer.status is not None and 200 <= answer.status < 300:
            if not isinstance(answer.body, dict) or not isinstance(answer.body.get("id"), int):
                return HttpAnswer(None, problem="GitHub's answer has no deployment id")
            self._created(memo, message.key, answer.body["id"])
        elif isinstance(message, CreateDeployment) and answer.status is not None and 400 <= answer.status < 500:
            # GitHub refused it: nothing was created, so nothing to look up (and no marker kept for ever)
            memo["creating"] = [k for k in memo.get("creating", []) if k != message.key]
        return answer

    @staticmethod
    def _created(memo: dict[str, Any], key: str, deployment: int) -> None:
        memo["ids"] = dict(list({**memo.get("ids", {}), key: deployment}.items())[-KEPT_IDS:])
        memo["creating"] = [k for k in memo.get("creating", []) if k != key]


class NotifyFeed:
    """One [[notify]] target: a POST of each notification, signed when the target has a secret."""

    def __init__(self, target: NotifyTarget, http: Http, public_url: str | None = None) -> None:
        self.target = target
        self.public_url = public_url
        self.name = f"notify:{target.name}"
        self.http = http

    def plan(self, entry: Mapping[str, Any], state: Mapping[str, Any]) -> tuple[Sequence[Any], dict[str, Any]]:
        return notify_messages(entry, self.target.events, state, self.public_url)

    def send(self, message: Notification, memo: dict[str, Any], save: Callable[[], None]) -> HttpAnswer:
        body = notification_body(message, self.target.format)
        headers = {"Content-Type": "application/json", DELIVERY_HEADER: message.id}
        if self.target.secret:
            headers[SIGNATURE_HEADER] = github_signature(self.target.secret, body)
        return self.http("POST", self.target.url, headers, body)


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Outbox:
    """The feeds over one audit log, each with its cursor; `step` delivers what is due, `run` keeps doing it."""

    def __init__(
        self,
        feeds: Sequence[Feed],
        cursors: Cursors,
        audit: AuditReader,
        journal: Journal,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.feeds = list(feeds)
        self.cursors = cursors
        self.audit = audit
        self.journal = journal
        self.clock = clock

    def start(self) -> None:
        """Every feed's cursor, a new one at the audit log's head."""
        head = self.audit.head()
        for feed in self.feeds:
            self.cursors.begin(feed.name, head)

    def step(self, feed: Feed) -> float | None:
        """Deliver what `feed` has due now. Returns when to look again: 0 more now, None when it is idle, else
        the seconds until its retry."""
        cursor = self.cursors.cursor(feed.name)
        if cursor.retry_at is not None and cursor.retry_at > self.clock():
            return cursor.retry_at - self.clock()
        entries = self.audit.after(cursor.seq, BATCH)
        if not entries:
            return None
        for entry in entries:
            messages, planned = feed.plan(entry, cursor.state.get("plan", {}))
            memo = dict(cursor.state.get("memo", {}))
            for n in range(cursor.done, len(messages)):

                def save(at: Cursor = cursor, kept: dict[str, Any] = memo) -> None:
                    self.cursors.save(replace(at, state={**at.state, "memo": kept}))

                answer = feed.send(messages[n], memo, save)
                verdict = judge(
                    answer.status,
                    attempt=cursor.attempts + 1,
                    now=self.clock(),
                    retry_after=answer.retry_after,
                    rate_reset=answer.rate_reset,
                    problem=answer.problem,
                )
                state = {**cursor.state, "memo": memo}
                if verdict.step == "retry":
                    cursor = replace(
                        cursor,
                        state=state,
                        attempts=cursor.attempts + 1,
                        retry_at=self.clock() + verdict.delay,
                        problem=verdict.reason,
                    )
                    self.cursors.save(cursor)
                    log.warning(
                        "report: %s: entry %s: %s; trying again in %g s",
                        feed.name,
                        entry.get("seq"),
                        verdict.reason,
                        verdict.delay,
                    )
                    return verdict.delay
                if verdict.step == "refused":
                    self.journal.record(
                        "report.dropped",
                        outcome="failed",
                        feed=feed.name,
                        entry=entry.get("seq"),
                        app=entry.get("app"),
                        job=entry.get("job"),
                        message=type(messages[n]).__name__,
                        reason=verdict.reason,
                    )
                cursor = replace(cursor, state=state, done=n + 1, attempts=0, retry_at=None, problem=None)
                self.cursors.save(cursor)
            cursor = replace(
                cursor,
                seq=entry["seq"],
                done=0,
                state={"plan": planned, "memo": memo},
                attempts=0,
                retry_at=None,
                problem=None,
            )
            self.cursors.save(cursor)
        return 0.0

    def drain(self, feed: Feed) -> float | None:
        """Deliver until `feed` is idle or waits on a retry; returns what the last step returned."""
        while (wait := self.step(feed)) == 0.0:
            pass
        return wait

    def run(self, stop: threading.Event) -> None:
        """Each feed in a thread of its own, so a GitHub that hangs does not hold up a notification; until `stop`."""
        self.start()

        def keep(feed: Feed) -> None:
            while not stop.is_set():
                wait = self.drain(feed)
                stop.wait(IDLE_SECONDS if wait is None else min(wait, IDLE_SECONDS * 60))

        threads = [threading.Thread(target=keep, args=(f,), name=f.name, daemon=True) for f in self.feeds]
        for thread in threads:
            thread.start()
        while not stop.wait(0.5):
            if not all(t.is_alive() for t in threads):
                stop.set()
                raise RuntimeError("a report feed died")  # the supervisor starts the loop again
        for thread in threads:
            thread.join(timeout=30)


class AuditEntries:
    """The audit log as the outbox reads it: entries after a seq, oldest first, as plain values; its head."""

    def __init__(self, audit_log: AuditLog) -> None:
        self.audit_log = audit_log

    def after(self, seq: int, limit: int) -> list[dict[str, Any]]:
        found = self.audit_log.query(Query(after=seq, limit=limit, oldest_first=True))
        return [{**entry.fields, "seq": entry.seq} for entry in found]

    def head(self) -> int:
        return self.audit_log.newest_seq()


def feed_names(reports: ReportsConfig) -> list[str]:
    """The feeds a config has: "github" when an app reports there, and one per [[notify]] target."""
    return ([GITHUB_FEED] if reports.github else []) + [f"notify:{t.name}" for t in reports.notify]


def backlog(cursors: Sequence[Cursor], head: int) -> list[dict[str, Any]]:
    """Each feed's backlog for `deployer status` and the status JSON: entries behind the head, its retry."""
    return [
        {
            "feed": c.feed,
            "behind": max(0, head - c.seq),
            "attempts": c.attempts,
            "retry_at": c.retry_at,
            "problem": c.problem,
        }
        for c in cursors
    ]
