"""The HTTP receiver: GitHub webhooks, signed manual redeploys, job status, the audit log, health and metrics.

It only checks, decides, enqueues and reads; it never touches Docker or netfilter, so it can run as an
unprivileged user. gunicorn serves it with `deployer.receiver.web:create_app()`. Every error becomes its
status code in `STATUS` (statuses.py), the one place that maps them. Every delivery and manual request
is recorded in the journal (verdict and reason, never a secret or a raw header).

    curl -s http://127.0.0.1:8000/healthz
"""

from __future__ import annotations

import atexit
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from flask import Blueprint, Flask, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from deployer import config as config_module
from deployer import signatures
from deployer.audit import AuditLog, Query, audit_query_from_args, build_journal, query_to_json
from deployer.config import Config, OperatorKey
from deployer.errors import (
    AuditError,
    DeployerError,
    Forbidden,
    InvalidRequest,
    MalformedRequest,
    MisdirectedRequest,
    PayloadTooLarge,
    StateError,
    Unauthorized,
    UnknownApp,
    UnknownJob,
    UnsupportedMediaType,
)
from deployer.folders import space_problem
from deployer.journal import Journal
from deployer.queue.accept import accept
from deployer.queue.model import CANARY_KINDS, JOB_ID_RE, JobKind, JobStatus
from deployer.queue.queue import Queue
from deployer.receiver import metrics, releases, scopes
from deployer.receiver.console import register_console
from deployer.receiver.rejections import Rejections
from deployer.receiver.scopes import Action
from deployer.receiver.statuses import status_for

log = logging.getLogger("deployer.web")


DELIVERY_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
EVENT_RE = re.compile(r"^[a-z_]{1,64}$")
HOOK_ID_RE = re.compile(r"^[0-9]{1,20}$")
GITHUB_SIGNATURE_RE = re.compile(r"^sha256=[0-9a-f]{64}$")
WORKER_STALE_SECONDS = 15.0
MAX_REASON = 500
RETRY_AFTER_SECONDS = 10  # a 503: the queue or the audit log cannot be written (most often a full disk)


class Receiver:
    """What the views share: the loaded config, the queue, the journal, the audit log and the clock."""

    def __init__(
        self, config: Config, queue: Queue, journal: Journal, clock: Callable[[], float], audit: AuditLog | None = None
    ) -> None:
        self.config = config
        self.queue = queue
        self.journal = journal
        self.clock = clock
        self.audit = audit or AuditLog.for_state_dir(config.settings.state_dir)
        self.rejections = Rejections(journal.record, clock)
        # The report loop's feeds (GitHub, [[notify]]): serve keeps only the configured ones' cursors.
        self.outbox_backlog: metrics.Backlog | None = self._outbox_backlog
        self.metrics = metrics.registry(
            lambda: metrics.facts(
                self.queue,
                self.audit,
                now=self.clock(),
                stale_after=WORKER_STALE_SECONDS,
                backlog=self.outbox_backlog,
            )
        )
        # A receiver process that stops (gunicorn restarts its workers, serve stops) writes what it counted.
        atexit.register(self._flush_at_exit)

    def _outbox_backlog(self) -> dict[str, int]:
        return self.queue.reports.backlog(self.audit.newest_seq())

    def _flush_at_exit(self) -> None:
        try:
            self.rejections.flush()
        except Exception as exc:  # noqa: BLE001 - the process is ending; say so, do not mask its own exit
            log.warning("could not record the refused requests counted before exit: %s", exc)

    @property
    def operator_secrets(self) -> dict[str, str]:
        return {key_id: key.secret for key_id, key in self.config.server.operators.items()}

    def plausible_credential(self, headers: Mapping[str, str]) -> bool:
        """Whether a request offers a credential worth reading its body for, judged from its headers alone.

        A throttled source is answered 429 before its body is read unless it offers one; a header that is
        merely present (`X-Hub-Signature-256: x`) is not one. A signature must have its form, name a known
        key and be within its time window; a bearer token must be the token.
        """
        if GITHUB_SIGNATURE_RE.match(headers.get(signatures.GITHUB_HEADER) or ""):
            return True
        if headers.get(signatures.AUTHORIZATION_HEADER) is not None:
            for token in (self.config.server.audit_token, self.config.server.metrics_token):
                try:
                    signatures.verify_bearer(token, headers.get(signatures.AUTHORIZATION_HEADER))
                    return True
                except Unauthorized:
                    pass
            return False
        try:
            signed = signatures.read_signed_headers(headers)
            signatures.check_timestamp(signed.timestamp, self.clock())
        except Unauthorized:
            return False
        return signed.key_id in self.config.server.operators


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The app factory. gunicorn reads the config named by $DEPLOYER_CONFIG; tests pass their own parts.

    test_config keys: DEPLOYER_CONFIG (a loaded Config), QUEUE, JOURNAL, CLOCK, AUDIT (the AuditLog GET /audit reads),
    OUTBOX_BACKLOG (what GET /metrics reports as the outbox's backlog: a function, feed -> entries not sent).
    """

    overrides = dict(test_config or {})
    # The receiver's own part of the config: it never opens registry passwords, asset tokens or env files.
    config = overrides.pop("DEPLOYER_CONFIG", None) or config_module.load_receiver(config_module.config_path(None))
    queue = overrides.pop("QUEUE", None) or Queue.for_state_dir(config.settings.state_dir)
    journal = overrides.pop("JOURNAL", None) or build_journal(config)
    clock = overrides.pop("CLOCK", None) or time.time
    audit = overrides.pop("AUDIT", None)
    backlog = overrides.pop("OUTBOX_BACKLOG", None)

    app = Flask("deployer")
    app.config.update(MAX_CONTENT_LENGTH=config.server.max_body_bytes, JSON_SORT_KEYS=False)
    app.config.update(overrides)
    app.extensions["deployer"] = Receiver(config, queue, journal, clock, audit)
    if backlog is not None:
        app.extensions["deployer"].outbox_backlog = backlog
    app.register_blueprint(hooks)
    app.register_blueprint(manual)
    app.register_blueprint(review)
    app.register_blueprint(health)
    app.register_blueprint(scrapes)
    if config.console is not None:  # off unless [console] is configured
        register_console(app, config.console)
    app.register_error_handler(DeployerError, _deployer_error)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected_error)
    app.before_request(_throttle)
    app.after_request(_record_request)
    _share_gunicorn_logging()
    return app


def _receiver() -> Receiver:
    return current_app.extensions["deployer"]


# --- recording every request -----------------------------------------------------------------------


def _begin_record(name: str, **fields: Any) -> dict[str, Any]:
    """Start the journal entry of this request; views add facts as they learn them."""
    g.record_event = name
    g.record = {"remote_addr": request.remote_addr, **fields}
    return g.record


def _authenticated() -> None:
    """From here on the request is recorded one by one, whatever its answer."""
    g.authenticated = True


def _throttle():
    """A source over its limit that offers no plausible credential is answered 429 before its body is read.

    /healthz is exempt: it writes nothing, and a load balancer's probe behind the same proxy as a flood
    must not take the receiver out of rotation.
    """
    rejections = _receiver().rejections
    rejections.flush_due()
    if request.path == "/healthz":
        return None
    wait = rejections.retry_after(request.remote_addr)
    if wait is None or _receiver().plausible_credential(request.headers):
        return None
    rejections.note(route=request.path[:64], status=429, source=request.remote_addr, reason="rate limited")
    return _too_many(wait)


def _too_many(wait: int):
    response = jsonify(error=f"too many refused requests from this address; retry after {wait} s")
    response.status_code = 429
    response.headers["Retry-After"] = str(wait)
    return response


def _record_request(response):
    event = g.pop("record_event", None)
    if event is not None:
        fields = g.pop("record", {})
        fields.setdefault("verdict", "rejected" if response.status_code >= 400 else "accepted")
        if fields["verdict"] == "rejected" and not g.get("authenticated"):
            # Anyone can send these: counted and recorded in aggregate, never a row each (rejections.py)
            wait = _receiver().rejections.note(
                route=request.path[:64],
                status=response.status_code,
                source=request.remote_addr,
                reason=str(fields.get("reason")),
            )
            return _too_many(wait) if wait is not None and response.status_code == 401 else response
        journal = _receiver().journal
        # A status poll (`redeploy --wait` asks every second) goes to the log only; its refusals are recorded.
        emit = journal.note if fields["verdict"] == "answered" else journal.record
        emit(event, status=response.status_code, **fields)
    return response


# --- errors: the one place that maps them to status codes ------------------------------------------


def _deployer_error(exc: DeployerError):
    status = status_for(exc)
    if "record" in g:
        g.record.update(verdict="rejected", reason=str(exc))
    if status >= 500:
        log.error("request failed: %s", exc)
    response = jsonify(error=str(exc))
    response.status_code = status
    if status == 503:
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


def _http_error(exc: HTTPException):
    if "record" in g:
        g.record.update(verdict="rejected", reason=exc.description)
    response = jsonify(error=exc.description)
    response.status_code = exc.code or 500
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value  # Allow, for a 405
    return response


def _unexpected_error(exc: Exception):
    log.exception("unexpected error while serving %s %s", request.method, request.path)
    if "record" in g:
        g.record.update(verdict="rejected", reason=f"internal error ({type(exc).__name__})")
    return jsonify(error="internal error; see the server log"), 500


# --- request bodies --------------------------------------------------------------------------------


def read_body(limit: int) -> bytes:
    """The raw body, refused with 413 before it is read whole when it is over `limit`."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"the body is {length} bytes; the limit is {limit}")
    chunks, size = [], 0
    try:
        stream = request.stream
        while True:
            chunk = stream.read(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the body is over the limit of {limit} bytes")
    except HTTPException as exc:
        if exc.code == 413:
            raise PayloadTooLarge(f"the body is over the limit of {limit} bytes") from None
        raise
    return b"".join(chunks)


def parse_json_object(data: bytes, what: str = "body") -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedRequest(f"the {what} is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(value, dict):
        raise MalformedRequest(f"the {what} must be a JSON object")
    return value


def github_payload(body: bytes, mimetype: str) -> dict[str, Any]:
    """GitHub's two content types: the JSON itself, or a form whose `payload` field holds it."""
    if mimetype == "application/json":
        return parse_json_object(body)
    if mimetype == "application/x-www-form-urlencoded":
        try:
            form = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=True, max_num_fields=20)
        except (UnicodeDecodeError, ValueError) as exc:
            raise MalformedRequest(f"the body is not a valid form: {str(exc)[:120]}") from None
        values = form.get("payload")
        if not values or len(values) != 1:
            raise MalformedRequest("the form has no single 'payload' field")
        return parse_json_object(values[0].encode("utf-8"), "payload field")
    raise UnsupportedMediaType(
        f"content type {mimetype or '(none)'!r} is not accepted: use application/json "
        f"or application/x-www-form-urlencoded"
    )


def _header(name: str, pattern: re.Pattern[str], *, required: bool = True) -> str | None:
    value = request.headers.get(name)
    if value is None or value == "":
        if required:
            raise InvalidRequest(f"missing {name} header")
        return None
    if not pattern.match(value):
        raise InvalidRequest(f"malformed {name} header")
    return value


# --- POST /hooks/github ----------------------------------------------------------------------------

hooks = Blueprint("hooks", __name__)


@hooks.route("/hooks/github", methods=["POST"])
def github_hook():
    """Receive a GitHub delivery. Example: GitHub → Settings → Webhooks → https://host/hooks/github."""
    receiver = _receiver()
    record = _begin_record(
        "delivery",
        delivery=_safe_header("X-GitHub-Delivery", DELIVERY_RE),
        hook_id=_safe_header("X-GitHub-Hook-ID", HOOK_ID_RE),
        github_event=_safe_header("X-GitHub-Event", EVENT_RE),
    )
    body = read_body(receiver.config.server.max_body_bytes)
    record["body_sha256"] = signatures.body_sha256(body)
    repository = _claimed_repository(body)  # picks the secret that must have signed; trusted only once it has
    signatures.verify_github(
        receiver.config.github_secret_for(repository), body, request.headers.get(signatures.GITHUB_HEADER)
    )
    pinned_hook = receiver.config.github_hook_id_for(repository)
    if pinned_hook is not None and request.headers.get("X-GitHub-Hook-ID") != str(pinned_hook):
        raise Unauthorized("X-GitHub-Hook-ID is not the webhook this repository's app is pinned to (github_hook_id)")
    _authenticated()
    payload = github_payload(body, request.mimetype)
    event = _header("X-GitHub-Event", EVENT_RE)
    delivery = _header("X-GitHub-Delivery", DELIVERY_RE)
    hook_id = _header("X-GitHub-Hook-ID", HOOK_ID_RE, required=False) or "-"

    decision = releases.decide(event, payload, receiver.config)
    record.update(
        action=decision.action,
        repository=decision.repository,
        sender=decision.sender,
        app=decision.app,
        tag=decision.tag,
        verdict=decision.verdict,
        reason=decision.reason,
    )
    if decision.verdict == "pong":
        listed = {"repositories": list(decision.repositories)} if decision.repositories is not None else {}
        return jsonify(status="pong", reason=decision.reason, **listed), 200
    if decision.verdict == "ignore":
        outcome = receiver.queue.deliveries.record_ignored(hook_id=hook_id, delivery=delivery, reason=decision.reason)
        record["reason"] = outcome.reason
        return jsonify(status="ignored", reason=outcome.reason), 200

    actor = f"{decision.actor} (delivery {delivery})"
    source = {
        "delivery": delivery,
        "hook_id": hook_id,
        "action": decision.action,
        "release_id": decision.release_id,
        "published_at": decision.published_at,
        "repository": decision.repository,
        "sender": decision.sender,
    }
    if decision.asset is not None:
        source["asset"] = {
            "id": decision.asset.asset_id,
            "name": decision.asset.name,
            "size": decision.asset.size,
            "checksum_id": decision.asset.checksum_id,
        }
    # A controller's fleet app is not deployed here: its release is rolled out across the fleet (fleet.md).
    kind = JobKind.ROLLOUT if getattr(receiver.config.app(decision.app), "fleet", False) else JobKind.RELEASE
    outcome = receiver.queue.jobs.submit_release(
        app=decision.app,
        tag=decision.tag,
        actor=actor,
        hook_id=hook_id,
        delivery=delivery,
        source=source,
        published_at=decision.published_at,
        hold=True,
        kind=kind,
    )
    record.update(job=outcome.job.id if outcome.job else None, verdict=outcome.verdict, reason=outcome.reason)
    if outcome.created:
        accept(
            receiver.queue.jobs,
            receiver.journal,
            outcome.job,
            job=outcome.job.id,
            app=decision.app,
            tag=decision.tag,
            actor=actor,
            kind=kind,
            delivery=delivery,
            **({"retry_of": outcome.job.source["retry_of"]} if "retry_of" in outcome.job.source else {}),
            **({"rollout": outcome.job.id} if kind == JobKind.ROLLOUT else {}),
            **({"reason": outcome.reason} if outcome.verdict == "waiting" else {}),
        )
        return _job_accepted(outcome.job.id, decision.app, decision.tag, outcome.reason)
    return jsonify(
        status=outcome.verdict,
        reason=outcome.reason,
        job=outcome.job.id if outcome.job else None,
        job_status=outcome.job.status if outcome.job else None,
    ), 200


def _claimed_repository(body: bytes) -> str | None:
    """`repository.full_name` as the unverified body claims it; None when the body cannot say (refused later)."""
    try:
        repository = github_payload(body, request.mimetype).get("repository")
    except DeployerError:
        return None
    name = repository.get("full_name") if isinstance(repository, dict) else None
    return name if isinstance(name, str) else None


def _safe_header(name: str, pattern: re.Pattern[str]) -> str | None:
    """A header for the record only when it looks like what it claims: no forged log lines."""
    value = request.headers.get(name)
    return value if value and pattern.match(value) else None


def _job_accepted(job_id: str, app: str, tag: str | None, reason: str):
    response = jsonify(status=JobStatus.QUEUED, job=job_id, app=app, tag=tag, reason=reason, url=f"/jobs/{job_id}")
    response.status_code = 202
    response.headers["Location"] = f"/jobs/{job_id}"
    return response


# --- signed manual requests: POST /deploy, GET /jobs/<id> ------------------------------------------

manual = Blueprint("manual", __name__)


def check_host(receiver: Receiver) -> None:
    """Refuse a request that names another server, before any credential is looked at.

    A signature binds the Host it was made for; a server that shares the key with others must also know that
    Host is its own, or a request signed for one host, sent unchanged to another, would be acted on by both.
    """
    host = request.host.lower()
    if host not in receiver.config.server.names:
        raise MisdirectedRequest(
            f"this server answers to {', '.join(receiver.config.server.names)}, not to "
            f"{request.host[:100]!r} ([server] names)"
        )


def authenticate(body: bytes, record: dict[str, Any]) -> OperatorKey:
    """Check the Host, key, timestamp, signature, then spend the nonce. Returns the verified key."""
    receiver = _receiver()
    check_host(receiver)
    signed = signatures.read_signed_headers(request.headers)
    record.update(
        key_id=signed.key_id if signed.key_id in receiver.operator_secrets else None,
        nonce=signed.nonce,
        timestamp=signed.timestamp,
    )
    now = receiver.clock()
    path = signatures.request_target(request.script_root + request.path, request.query_string)
    signatures.verify_manual(
        receiver.operator_secrets, signed, method=request.method, host=request.host, path=path, body=body, now=now
    )
    receiver.queue.deliveries.use_nonce(signed.key_id, signed.nonce, signatures.nonce_expiry(signed.timestamp, now))
    _authenticated()
    return receiver.config.server.operators[signed.key_id]


def permit(key: OperatorKey, action: Action, app: str | None = None) -> None:
    refusal = scopes.refusal(key, action, app)
    if refusal is not None:
        raise Forbidden(refusal)


@manual.route("/deploy", methods=["POST"])
def deploy():
    """Redeploy an app, or promote or abort its canary ("action"), signed with an operator key.
    Example: deployer redeploy demo v1.2.0 --url http://host:8000"""
    receiver = _receiver()
    record = _begin_record("manual_request")
    body = read_body(receiver.config.server.max_body_bytes)
    record["body_sha256"] = signatures.body_sha256(body)
    key = authenticate(body, record)
    key_id = key.key_id
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            f"content type {request.mimetype or '(none)'!r} is not accepted: use application/json"
        )
    wanted = manual_request(parse_json_object(body), receiver.config)
    record.update(app=wanted["app"], tag=wanted["tag"], reason=wanted["reason"])
    permit(key, Action.END_CANARY if wanted["action"] else Action.DEPLOY, wanted["app"])
    actor = f"key:{key_id}"
    kind = wanted["action"] or JobKind.REDEPLOY
    rollout = {"rollout": wanted["rollout"]} if wanted["rollout"] else {}
    source = {"key_id": key_id, "reason": wanted["reason"]}
    if wanted["rollout"] and kind == JobKind.REDEPLOY:  # a controller's step: posted again, it is the same job
        job, new = receiver.queue.jobs.submit_rollout_step(
            app=wanted["app"], tag=wanted["tag"], actor=actor, rollout=wanted["rollout"], source=source
        )
        if not new:
            record.update(job=job.id, verdict="duplicate", **rollout)
            return _job_accepted(
                job.id, job.app, job.tag, f"rollout {wanted['rollout']} already has job {job.id} for this tag"
            )
    else:
        job = receiver.queue.jobs.submit_manual(
            app=wanted["app"], tag=wanted["tag"], actor=actor, kind=kind, source={**source, **rollout}, hold=True
        )
    record.update(job=job.id, verdict="queued", **rollout)
    accept(
        receiver.queue.jobs,
        receiver.journal,
        job,
        job=job.id,
        app=job.app,
        tag=job.tag,
        actor=actor,
        kind=kind,
        reason=wanted["reason"],
        **rollout,
    )
    return _job_accepted(job.id, job.app, job.tag, "queued")


def manual_request(data: Mapping[str, Any], config: Config) -> dict[str, Any]:
    """Validate {"app": ..., "tag": ... (optional), "action": "promote" or "abort" (optional, without a tag),
    "reason": ... (optional), "rollout": the controller's rollout id (optional, a job id; docs/fleet.md)}."""
    app_name = data.get("app")
    if app_name is None:
        raise InvalidRequest("missing field app")
    if not isinstance(app_name, str):
        raise InvalidRequest("field app must be a string")
    app = config.apps.get(app_name)
    if app is None:
        raise UnknownApp(f"unknown app {app_name[:64]!r}")
    if getattr(app, "fleet", False):  # (only a receiver's config knows fleet apps)
        raise InvalidRequest(
            f"app {app.name!r} is a fleet app: it runs on the fleet's hosts; roll a tag out with "
            f"`deployer rollout {app.name} TAG` on this controller"
        )
    tag = data.get("tag")
    if tag is not None:
        releases.valid_tag(app, tag)
    reason = data.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON or not reason.isprintable()):
        raise InvalidRequest(f"field reason must be printable text of at most {MAX_REASON} characters")
    action = data.get("action")
    if action is not None and action not in CANARY_KINDS:
        raise InvalidRequest('field action must be "promote" or "abort" (a canary\'s end)')
    if action is not None and tag is not None:
        raise InvalidRequest(f"field action {action!r} takes no tag: it ends the running canary")
    rollout = data.get("rollout")
    if rollout is not None and (not isinstance(rollout, str) or not JOB_ID_RE.match(rollout)):
        raise InvalidRequest("field rollout must be a rollout's id (job-<16 hex digits>)")
    unknown = sorted(set(data) - {"app", "tag", "reason", "action", "rollout"})
    if unknown:
        raise InvalidRequest(f"unknown field {unknown[0][:64]!r} (allowed: app, tag, action, reason, rollout)")
    return {"app": app.name, "tag": tag, "reason": reason, "action": action, "rollout": rollout}


@manual.route("/jobs/<job_id>", methods=["GET"])
def job_status(job_id: str):
    """A job's state and steps, signed like /deploy. Example: deployer redeploy demo --wait (polls this)."""
    receiver = _receiver()
    record = _begin_record("manual_request")
    body = read_body(receiver.config.server.max_body_bytes)
    record["body_sha256"] = signatures.body_sha256(body)
    key = authenticate(body, record)
    job = receiver.queue.jobs.get(job_id) if JOB_ID_RE.match(job_id) else None
    if job is None or scopes.refusal(key, Action.READ_APP, job.app) is not None:
        raise UnknownJob("no job has that id")  # a job of an app the key may not see is as unknown
    record.update(job=job.id, app=job.app, verdict="answered")
    return jsonify(**job.as_dict(), steps=receiver.queue.jobs.steps(job.id)), 200


@manual.route("/apps/<app_name>", methods=["GET"])
def app_status(app_name: str):
    """An app's live tag and port set and its last job, signed like /deploy: what a fleet controller reads.
    Example: deployer fleet status web (asks each host of [fleet])"""
    receiver = _receiver()
    record = _begin_record("manual_request", route="/apps")
    body = read_body(receiver.config.server.max_body_bytes)
    record["body_sha256"] = signatures.body_sha256(body)
    key = authenticate(body, record)
    app = receiver.config.app(app_name)
    permit(key, Action.READ_APP, app.name)
    live = receiver.queue.live.live(app.name)
    record.update(app=app.name, verdict="answered")
    return jsonify(**live, health=health_report(receiver)), 200


# --- GET /audit ------------------------------------------------------------------------------------

review = Blueprint("audit", __name__)


@review.route("/audit", methods=["GET"])
def audit_entries():
    """Audit entries as JSON, filtered like `deployer audit`; signed like /deploy, or with the read-only token.

    Example: curl -H "Authorization: Bearer $TOKEN" 'http://host:8000/audit?app=demo&since=24h'
    """
    receiver = _receiver()
    record = _begin_record("manual_request", route="/audit")
    _authenticate_reader(receiver, record)
    query = audit_query(request.args, now=receiver.clock())
    entries = receiver.audit.query(query)
    record.update(verdict="answered", count=len(entries))
    return jsonify(query_to_json(query, entries)), 200


def _authenticate_reader(receiver: Receiver, record: dict[str, Any]) -> None:
    """The read-only audit token, or an operator signature: what GET /audit and a detailed /healthz take."""
    check_host(receiver)
    header = request.headers.get(signatures.AUTHORIZATION_HEADER)
    if header is not None:  # the token is checked alone: a request that offers one stands or falls by it
        record["auth"] = "token"
        signatures.verify_bearer(receiver.config.server.audit_token, header)
        _authenticated()
    else:
        record["auth"] = "signature"
        body = read_body(receiver.config.server.max_body_bytes)
        record["body_sha256"] = signatures.body_sha256(body)
        permit(authenticate(body, record), Action.READ_LOG)


def audit_query(args: Any, *, now: float) -> Query:
    """The filters of GET /audit (a MultiDict), each given once; a bad one is a 400 that names it."""
    repeated = next((name for name in args if len(args.getlist(name)) > 1), None)
    if repeated is not None:
        raise MalformedRequest(
            f"parameter {repeated[:64]}: given more than once (several events: event=a,b)", parameter=repeated[:64]
        )
    try:
        return audit_query_from_args(args.to_dict(), now=datetime.fromtimestamp(now, UTC))
    except AuditError as exc:
        name = str(exc.context.get("field", "?"))
        raise MalformedRequest(
            f"parameter {name[:64]}: {str(exc).removeprefix(name + ': ')}", parameter=name[:64]
        ) from None


# --- GET /healthz ----------------------------------------------------------------------------------

health = Blueprint("health", __name__)


@health.route("/healthz", methods=["GET"])
def healthz():
    """Whether the receiver, the queue, the worker, Docker and netfilter are ok; the details need a signature.

    Unauthenticated, it says ok (200) or degraded (503) and nothing else: the reasons name paths and
    daemon errors. Signed like /deploy, or with the audit token, it names each part.
    Example: curl host:8000/healthz; curl -H "Authorization: Bearer $TOKEN" host:8000/healthz
    """
    receiver = _receiver()
    report = health_report(receiver)
    healthy = all(value == "ok" for value in report.values())
    status = 200 if healthy else 503
    if not _offers_credentials():
        return jsonify(status="ok" if healthy else "degraded"), status
    record = _begin_record("manual_request", route="/healthz")
    _authenticate_reader(receiver, record)
    record["verdict"] = "answered"
    return jsonify(status="ok" if healthy else "degraded", **report), status


def health_report(receiver: Receiver) -> dict[str, str]:
    """Each part and "ok" or what is wrong with it, for an operator's eyes only."""
    try:
        worker = receiver.queue.heartbeat.worker_status()
        queue_state = "ok"
    except StateError as exc:
        worker, queue_state = None, str(exc)
    now = receiver.clock()
    alive = worker is not None and now - worker["heartbeat_at"] < WORKER_STALE_SECONDS
    # The receiver checks the disk itself: a worker that cannot write the queue cannot report it either.
    disk = (
        space_problem(receiver.config.settings.state_dir)
        or (worker or {}).get("faults", {}).get("disk", {}).get("reason")
        or "ok"
    )
    report = {
        "receiver": "ok",
        "queue": queue_state,
        "worker": (
            "ok"
            if alive
            else "no heartbeat"
            if worker is None
            else f"last heartbeat {now - worker['heartbeat_at']:.0f} s ago"
        ),
        "docker": (worker or {}).get("docker") or "unknown",
        "netfilter": (worker or {}).get("netfilter") or "unknown",
        "disk": disk,
    }
    if (worker or {}).get("registry") is not None:  # only when an app pulls from a registry
        report["registry"] = worker["registry"]
    return report


def _offers_credentials() -> bool:
    """An operator's signature or the audit token (a GitHub signature opens no detail)."""
    return (
        request.headers.get(signatures.AUTHORIZATION_HEADER) is not None
        or request.headers.get(signatures.SIGNATURE_HEADER) is not None
    )


# --- GET /metrics ----------------------------------------------------------------------------------

scrapes = Blueprint("metrics", __name__)


@scrapes.route("/metrics", methods=["GET"])
def scrape():
    """The deployer's metrics in Prometheus's format, computed from the queue and the audit log (docs/metrics.md).

    Only for a scraper that `[server] metrics_allow` or `metrics_token_file` admits; a refusal is counted like any
    other before authentication. An answered scrape writes nothing: a scraper asks every 15 s.
    Example: curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/metrics
    """
    receiver = _receiver()
    _begin_record("metrics_scrape", route="/metrics")
    metrics.check_scraper(
        receiver.config.server, request.remote_addr, request.headers.get(signatures.AUTHORIZATION_HEADER)
    )
    g.pop("record_event")
    body, content_type = metrics.render(receiver.metrics, request.headers.get("Accept"))
    return body, 200, {"Content-Type": content_type, "Cache-Control": "no-store"}


def _share_gunicorn_logging() -> None:
    """Under gunicorn, the deployer's log lines go where gunicorn's do (its error log)."""
    gunicorn = logging.getLogger("gunicorn.error")
    deployer_log = logging.getLogger("deployer")
    if gunicorn.handlers and not deployer_log.handlers:
        deployer_log.handlers = list(gunicorn.handlers)
        deployer_log.setLevel(logging.INFO)
        deployer_log.propagate = False
