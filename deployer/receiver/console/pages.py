"""The console's routes: sign-in and sign-out, the overview, an app's page, a job's page, the audit log.

Read-only: the views read the queue and the audit log; the only writes are the audit entries of sign-ins.
Every value that reaches a page goes through Jinja's autoescape, and every name or filter in a URL is checked
before it is used.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    send_from_directory,
    session,
    stream_with_context,
    url_for,
)

from deployer.audit import Query, audit_query_from_args
from deployer.config.fields import APP_NAME_RE
from deployer.errors import AuditError, DeployerError, MalformedRequest, UnknownJob
from deployer.queue.model import JOB_ID_RE, JobStatus
from deployer.receiver.console import views
from deployer.receiver.console.auth import Gate, csrf_matches, new_csrf, safe_next
from deployer.receiver.statuses import status_for

console = Blueprint("console", __name__, url_prefix="/console", template_folder="templates")
STATIC = Path(__file__).with_name("static")

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_SIZE = 50
EXPORT_CHUNK = 1000
AUDIT_FILTERS = ("app", "event", "outcome", "actor", "since", "until")
FILTER_FORMS = {
    "app": (APP_NAME_RE, "an app's name"),
    "event": (re.compile(r"^[a-z0-9_.*,-]{1,200}$"), "event names or prefixes such as deploy.*"),
    "outcome": (re.compile(r"^[a-z_]{1,32}$"), "an outcome such as ok or failed"),
    "actor": (re.compile(r"^[\x21-\x7e]{1,200}$"), "an actor such as github:* or cli:ann"),
    "since": (re.compile(r"^[0-9A-Za-z:.+ -]{1,40}$"), "a time such as 24h or 2024-05-01"),
    "until": (re.compile(r"^[0-9A-Za-z:.+ -]{1,40}$"), "a time such as 24h or 2024-05-01"),
    "before": (re.compile(r"^[0-9]{1,19}$"), "an entry's number"),
}
OPEN_STATUSES = (JobStatus.RUNNING, JobStatus.QUEUED)


def _receiver() -> Any:
    return current_app.extensions["deployer"]


def _gate() -> Gate:
    return current_app.extensions["deployer.console"]


# --- every console request -----------------------------------------------------------------------


@console.before_request
def _signed_in_only():
    """Signed out, every page leads to the sign-in page (which comes back here after)."""
    if request.endpoint in ("console.signin", "console.stylesheet"):
        return None
    g.viewer, started = _gate().admit(session, request.headers, request.remote_addr)
    if started is not None:  # a trusted proxy's sign-in: the same signed cookie as a password's
        session.clear()
        session.update(started)
        session.permanent = True
    if g.viewer is None:
        return redirect(url_for("console.signin", next=request.full_path.rstrip("?")))
    return None


@console.after_request
def _headers(response: Response) -> Response:
    """The console's headers: nothing runs or loads from elsewhere, no framing, no referrer, no copies kept."""
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.endpoint != "console.stylesheet":
        response.headers["Cache-Control"] = "no-store"
    return response


@console.errorhandler(DeployerError)
def _error_page(exc: DeployerError):
    return render_template("console/error.html", message=str(exc)), status_for(exc)


@console.app_template_filter("when")
def _when(moment: float | None) -> str:
    """A unix time as the audit log spells times, in UTC."""
    if moment is None:
        return "-"
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


@console.route("/static/console.css", methods=["GET"])
def stylesheet():
    """The console's one style sheet, served by the receiver so a page loads nothing from elsewhere.
    Example: <link rel="stylesheet" href="/console/static/console.css">"""
    return send_from_directory(STATIC, "console.css", mimetype="text/css", max_age=3600)


# --- sign-in and sign-out ------------------------------------------------------------------------


@console.route("/signin", methods=["GET", "POST"])
def signin():
    """The sign-in form (GET) and a sign-in (POST, with the form's token). Example: open https://host/console/"""
    gate = _gate()
    target = safe_next(request.values.get("next")) or url_for("console.overview")
    if request.method == "GET":
        if "csrf" not in session:
            session["csrf"] = new_csrf()
        return render_template("console/signin.html", next=target, csrf=session["csrf"], refused=False)
    wait = gate.throttled(request.remote_addr)
    if wait is not None:
        _receiver().rejections.note(
            route="/console/signin", status=429, source=request.remote_addr, reason="sign-in attempts throttled"
        )
        page = render_template("console/error.html", message=f"too many sign-in attempts; retry after {wait} s")
        return page, 429, {"Retry-After": str(wait)}
    if not csrf_matches(session, request.form.get("csrf")):
        raise MalformedRequest("the sign-in form is stale or was not sent from this console: reload it")
    signed = gate.sign_in(request.form.get("name", "").strip(), request.form.get("password", ""), request.remote_addr)
    if signed is None:
        page = render_template("console/signin.html", next=target, csrf=session["csrf"], refused=True)
        return page, 401
    session.clear()
    session.update(signed)
    session.permanent = True
    return redirect(target)


@console.route("/signout", methods=["POST"])
def signout():
    """End the session (a POST with the page's token). Example: the "Sign out" button of every page"""
    if not csrf_matches(session, request.form.get("csrf")):
        raise MalformedRequest("the sign-out form is stale or was not sent from this console: reload the page")
    _gate().sign_out(g.viewer, request.remote_addr)
    session.clear()
    return redirect(url_for("console.signin"))


# --- the overview --------------------------------------------------------------------------------


@console.route("/", methods=["GET"])
def overview():
    """Every app's live tag, port set, digest, mode, canary, health and live flows; the host's faults; the open jobs.
    Example: https://host/console/"""
    receiver = _receiver()
    apps = [
        views.app_summary(name, receiver.queue.live.live(name), receiver.audit.query(Query(app=name, limit=200)))
        for name in sorted(receiver.config.apps)
    ]
    worker = receiver.queue.heartbeat.worker_status()
    jobs = [job for status in OPEN_STATUSES for job in receiver.queue.jobs.jobs(status=status)]
    samples = receiver.queue.flows.samples()
    return render_template(
        "console/overview.html",
        apps=apps,
        samples={app.name: views.live_sample(samples.get(app.name)) for app in apps},
        sampled_at=max((s.sampled_at for s in samples.values()), default=None),
        worker=worker,
        faults=sorted((worker or {}).get("faults", {}).items()),
        jobs=jobs,
        now=receiver.clock(),
    )


# --- an app --------------------------------------------------------------------------------------


@console.route("/apps/<app_name>", methods=["GET"])
def app_page(app_name: str):
    """An app's releases (who, when, from what, outcome, duration) and its last deploys' steps as a chart.
    Example: https://host/console/apps/web"""
    receiver = _receiver()
    app = receiver.config.app(app_name)  # an unknown name is a 404, never echoed unescaped
    entries = receiver.audit.query(Query(app=app.name, limit=5000))
    history = views.releases(reversed(entries))
    return render_template(
        "console/app.html",
        app=views.app_summary(app.name, receiver.queue.live.live(app.name), entries),
        history=history,
        chart=views.step_chart(history),
    )


# --- a job ---------------------------------------------------------------------------------------


@console.route("/jobs/<job_id>", methods=["GET"])
def job_page(job_id: str):
    """A job's steps on a time line, its hooks' output, why it failed or waits, its GitHub delivery.
    Example: https://host/console/jobs/job-0123456789abcdef"""
    receiver = _receiver()
    if not JOB_ID_RE.match(job_id):
        raise UnknownJob("no job has that id")
    job = receiver.queue.jobs.get(job_id)
    entries = receiver.audit.timeline(job_id)
    if job is None and not entries:
        raise UnknownJob("no job has that id")
    source = job.source if job is not None and isinstance(job.source, Mapping) else {}
    return render_template(
        "console/job.html",
        job_id=job_id,
        job=job,
        app_page=job is not None and job.app in receiver.config.apps,  # a rollout's app has no page on a controller
        source=sorted((str(k), str(v)) for k, v in source.items()),
        moments=views.timeline(entries),
        hooks=views.hook_outputs(entries),
        failure=(job.reason if job is not None and job.status == JobStatus.FAILED else None) or views.failure(entries),
    )


# --- the audit log -------------------------------------------------------------------------------


@console.route("/audit", methods=["GET"])
def audit_page():
    """The audit log, filtered and paged newest first; each entry's hash and whether the chain holds from it.
    Example: https://host/console/audit?app=web&event=deploy.*&since=24h"""
    receiver = _receiver()
    query, shown = audit_filter(request.args, now=receiver.clock())
    entries = receiver.audit.query(replace(query, limit=PAGE_SIZE + 1))
    page, more = entries[:PAGE_SIZE], len(entries) > PAGE_SIZE
    marks = views.chain_marks([e.seq for e in page], receiver.audit.verify_from)
    return render_template(
        "console/audit.html",
        rows=[(entry, views.details(entry), marks[entry.seq]) for entry in page],
        filters=shown,
        older={**shown, "before": page[-1].seq} if more else None,
        export={k: v for k, v in shown.items() if k != "before"},
    )


@console.route("/audit.jsonl", methods=["GET"])
def audit_export():
    """The entries of the current filter as JSON lines, newest first, as a download.
    Example: curl -b cookies https://host/console/audit.jsonl?app=web"""
    receiver = _receiver()
    query, _ = audit_filter(request.args, now=receiver.clock())

    def lines() -> Iterator[str]:
        cursor = query.before
        while True:
            chunk = receiver.audit.query(replace(query, limit=EXPORT_CHUNK, before=cursor))
            for entry in chunk:
                yield json.dumps(entry.as_dict(), sort_keys=True) + "\n"
            if len(chunk) < EXPORT_CHUNK:
                return
            cursor = chunk[-1].seq

    response = Response(stream_with_context(lines()), mimetype="application/x-ndjson")
    response.headers["Content-Disposition"] = 'attachment; filename="audit.jsonl"'
    return response


def audit_filter(args: Any, *, now: float) -> tuple[Query, dict[str, str]]:
    """The audit page's filters (a MultiDict), each given once and of its form; a bad one is a 400 naming it."""
    shown: dict[str, str] = {}
    for name in args:
        if name not in FILTER_FORMS:
            raise MalformedRequest(f"unknown filter {name[:64]!r} (known: {', '.join(FILTER_FORMS)})")
        values = args.getlist(name)
        if len(values) > 1:
            raise MalformedRequest(f"filter {name}: given more than once")
        value = values[0].strip()
        if not value:
            continue
        pattern, form = FILTER_FORMS[name]
        if not pattern.fullmatch(value):
            raise MalformedRequest(f"filter {name}: must be {form}")
        shown[name] = value
    try:
        query = audit_query_from_args(
            {k: v for k, v in shown.items() if k in AUDIT_FILTERS}, now=datetime.fromtimestamp(now, UTC)
        )
    except AuditError as exc:
        raise MalformedRequest(f"filter {exc}") from None
    before = int(shown["before"]) if "before" in shown else None
    return replace(query, before=before), shown
