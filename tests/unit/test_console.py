"""The read-only console through Flask's test client, over a real queue and audit log in tmp_path.

Signed out, every page leads to the sign-in page; a sign-in is a name, a password and the form's token, and each
attempt is audited. The pages escape whatever the log holds, and send the headers that keep scripts, frames and
copies out.
"""

from __future__ import annotations

import json
import re

import pytest

from deployer.audit import AuditLog
from deployer.journal import Journal
from deployer.passwords import hash_password
from deployer.plan.report import job_page
from deployer.queue.queue import Queue
from deployer.receiver.web import create_app
from support.configs import app_toml, make_config
from support.receiver import NAMES

PASSWORD = "correct horse battery staple"
SESSION_KEY = "k" * 64
HTTPS = "https://localhost"
JOB = "job-0123456789abcdef"


def console_table(**keys: str) -> str:
    viewers = f'alice = "{hash_password(PASSWORD, n=2**4, r=1, p=1)}"\n'
    lines = "".join(f"{key} = {value}\n" for key, value in keys.items())
    return f'[console]\nsession_key_env = "CONSOLE_KEY"\n{lines}[console.viewers]\n{viewers}'


def build(tmp_path, events, clock, table: str):
    config = make_config(
        tmp_path,
        app_toml("web", 8000),
        server=NAMES,
        tables=table,
        environ={"CONSOLE_KEY": SESSION_KEY},
    )
    queue = Queue.for_state_dir(config.settings.state_dir, clock=clock)
    audit = AuditLog.for_state_dir(config.settings.state_dir)
    journal = Journal([events.append], secrets=config.secrets())
    app = create_app(
        {"DEPLOYER_CONFIG": config, "QUEUE": queue, "JOURNAL": journal, "CLOCK": clock, "AUDIT": audit, "TESTING": True}
    )
    return app, queue, audit


@pytest.fixture
def parts(tmp_path, events, clock):
    return build(tmp_path, events, clock, console_table())


@pytest.fixture
def client(parts):
    return parts[0].test_client()


@pytest.fixture
def audit(parts):
    return parts[2]


@pytest.fixture
def queue(parts):
    return parts[1]


def get(client, path, **kwargs):
    return client.get(path, base_url=HTTPS, **kwargs)


def token(client) -> str:
    page = get(client, "/console/signin").get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def sign_in(client, name="alice", password=PASSWORD, *, csrf=None, source="127.0.0.1"):
    csrf = token(client) if csrf is None else csrf
    return client.post(
        "/console/signin",
        base_url=HTTPS,
        data={"name": name, "password": password, "csrf": csrf, "next": "/console/audit"},
        environ_base={"REMOTE_ADDR": source},
    )


def named(events, event):
    return [e for e in events if e["event"] == event]


# --- signed out ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/console/", "/console/audit", "/console/apps/web", f"/console/jobs/{JOB}"])
def test_signed_out_every_page_leads_to_the_sign_in_page(client, path):
    response = get(client, path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/console/signin?next=")


def test_a_sign_in_opens_the_pages_and_is_audited_without_the_password(client, events):
    response = sign_in(client)
    assert (response.status_code, response.headers["Location"]) == (302, "/console/audit")
    cookie = response.headers["Set-Cookie"]
    for attribute in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/console", "Expires="):
        assert attribute in cookie
    assert get(client, "/console/").status_code == 200
    [signin] = named(events, "console.signin")
    assert (signin["viewer"], signin["source"], signin["actor"]) == ("alice", "127.0.0.1", "console:alice")
    assert PASSWORD not in json.dumps(events) and "deployer_console=" not in json.dumps(events)


def test_a_wrong_password_is_refused_and_audited(client, events):
    response = sign_in(client, password="guess")
    assert response.status_code == 401
    assert "Wrong name or password" in response.get_data(as_text=True)
    assert get(client, "/console/").status_code == 302
    [failed] = named(events, "console.signin_failed")
    assert (failed["viewer"], failed["source"], failed["outcome"]) == ("alice", "127.0.0.1", "refused")
    assert "guess" not in json.dumps(events)


def test_an_unknown_name_is_refused_like_a_wrong_password(client, events):
    assert sign_in(client, name="mallory").status_code == 401
    assert named(events, "console.signin_failed")[0]["viewer"] == "mallory"


def test_a_sign_in_without_the_forms_token_is_refused(client, events):
    assert sign_in(client, csrf="forged").status_code == 400
    assert named(events, "console.signin") == []


def test_the_sixth_quick_attempt_from_one_address_is_throttled(client):
    codes = [sign_in(client, password="guess", source="198.51.100.7").status_code for _ in range(6)]
    assert codes == [401] * 5 + [429]
    assert sign_in(client, source="198.51.100.8").status_code == 302  # another address is not held up


def test_every_gunicorn_worker_counts_the_same_sign_in_attempts(tmp_path, events, clock):
    # Two apps over one state folder: two gunicorn workers of one receiver. Whichever answers, the sixth is refused.
    first, second = (build(tmp_path, events, clock, console_table())[0].test_client() for _ in range(2))
    codes = [sign_in(client, password="guess", source="198.51.100.7").status_code for client in [first, second] * 3]
    assert codes == [401] * 5 + [429]
    clock.now += 60
    assert sign_in(second, source="198.51.100.7").status_code == 302  # one attempt back a minute later


def test_a_forged_cookie_is_refused(client):
    client.set_cookie("deployer_console", "eyJ2aWV3ZXIiOiJhbGljZSJ9.forged.signature", path="/console")
    assert get(client, "/console/").status_code == 302


def test_a_session_expires_after_session_hours(client, clock):
    sign_in(client)
    clock.now += 11.9 * 3600
    assert get(client, "/console/").status_code == 200
    clock.now += 0.2 * 3600
    assert get(client, "/console/").status_code == 302


def test_sign_out_is_a_post_with_the_token_and_is_audited(client, events):
    sign_in(client)
    page = get(client, "/console/").get_data(as_text=True)
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert client.post("/console/signout", base_url=HTTPS, data={"csrf": "x"}).status_code == 400
    assert client.post("/console/signout", base_url=HTTPS, data={"csrf": csrf}).status_code == 302
    assert get(client, "/console/").status_code == 302
    assert [e["viewer"] for e in named(events, "console.signout")] == ["alice"]


def test_the_next_page_after_sign_in_stays_on_the_console(client):
    csrf = token(client)
    data = {"name": "alice", "password": PASSWORD, "csrf": csrf, "next": "//evil.example/console/"}
    response = client.post("/console/signin", base_url=HTTPS, data=data)
    assert response.headers["Location"] == "/console/"


# --- headers -------------------------------------------------------------------------------------


def test_every_console_response_carries_the_headers(client):
    sign_in(client)
    for path in ("/console/signin", "/console/", "/console/audit", "/console/apps/nope"):
        response = get(client, path)
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
    css = get(client, "/console/static/console.css")
    assert css.status_code == 200 and css.mimetype == "text/css"


# --- the audit log page --------------------------------------------------------------------------


def test_the_audit_page_escapes_what_the_log_holds(client, audit):
    audit.append({"event": "deploy.failed", "app": "web", "tag": "<script>alert(1)</script>", "outcome": "failed"})
    sign_in(client)
    page = get(client, "/console/audit").get_data(as_text=True)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_the_audit_page_filters_pages_and_marks_the_chain(client, audit):
    for n in range(60):
        audit.append({"event": "step", "app": "web", "step": "pull", "outcome": "ok", "n": n})
    audit.append({"event": "deploy.finished", "app": "web", "outcome": "ok"})
    sign_in(client)
    page = get(client, "/console/audit?app=web&event=step").get_data(as_text=True)
    assert page.count('<tr class="ok">') == 50
    assert "deploy.finished" not in page
    assert page.count("verifies") == 50
    older = re.search(r'href="(/console/audit\?[^"]*before=11[^"]*)"', page).group(1).replace("&amp;", "&")
    assert get(client, older).get_data(as_text=True).count('<tr class="ok">') == 10


def test_an_edited_entry_is_marked_with_those_before_it(client, audit):
    for n in range(5):
        audit.append({"event": "note", "n": n})
    conn = audit._connect(create=False)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET entry = replace(entry, '\"n\":3', '\"n\":9') WHERE seq = 4")
    sign_in(client)
    page = get(client, "/console/audit").get_data(as_text=True)
    assert page.count("verifies") == 1  # entry 5 alone reaches the head unbroken
    assert page.count("broken: entry 4 was edited") == 4


@pytest.mark.parametrize(
    "query, status",
    [("app=<b>", 400), ("since=yesterday", 400), ("nope=1", 400), ("app=web&app=api", 400), ("before=x", 400)],
)
def test_a_bad_filter_is_a_400_that_names_it(client, query, status):
    sign_in(client)
    response = get(client, f"/console/audit?{query}")
    assert response.status_code == status
    assert "<b>" not in response.get_data(as_text=True)


def test_the_export_downloads_the_filter_as_json_lines(client, audit):
    audit.append({"event": "deploy.started", "app": "web", "tag": "v1"})
    audit.append({"event": "deploy.started", "app": "api", "tag": "v1"})
    sign_in(client)
    response = get(client, "/console/audit.jsonl?app=web")
    assert response.headers["Content-Disposition"] == 'attachment; filename="audit.jsonl"'
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert [(e["app"], e["seq"]) for e in lines] == [("web", 1)]
    assert len(lines[0]["hash"]) == 64


def test_the_link_statuses_and_notifications_carry_is_the_job_pages_address():
    page = job_page("https://deploy.example.com/", JOB)
    assert page == f"https://deploy.example.com/console/jobs/{JOB}"
    assert [
        job_page(url, job)
        for url, job in ((None, JOB), ("https://d.example", "../etc"), ("https://d.example", "web#12"))
    ] == [None] * 3


# --- the overview, an app, a job -----------------------------------------------------------------


def deploy_entries(job: str, tag: str, *, failed: bool = False, ms: float = 100.0) -> list[dict]:
    base = {"app": "web", "job": job, "actor": "github:octocat"}
    steps = ["pull"] if failed else ["pull", "start", "health", "flip", "drain", "stop"]
    entries = [{"event": "deploy.started", "tag": tag, "ts": "2026-01-01T00:00:00.000Z", **base}]
    entries += [{"event": "step", "step": s, "outcome": "ok", "duration_ms": ms, **base} for s in steps]
    end = {"event": "deploy.failed", "outcome": "failed", "error": "pull <b>denied</b>"} if failed else {}
    end = end or {"event": "deploy.finished", "outcome": "ok", "digest": f"sha256:{tag}", "set": "blue"}
    return [*entries, {**end, "tag": tag, "ts": "2026-01-01T00:00:03.500Z", **base}]


def test_the_overview_shows_each_apps_release_the_faults_and_the_open_jobs(client, queue, audit):
    for entry in deploy_entries("job-000000000000000a", "v1"):
        audit.append(entry)
    queue.live.set_active("web", "v1", "job-000000000000000a", "blue")
    job = queue.jobs.submit_manual(app="web", tag="v2", actor="key:alice", kind="redeploy", source={"reason": "x"})
    queue.heartbeat.heartbeat(pid=1, started_at=0, faults={"registry": {"reason": "registry down", "since": 1.0}})
    sign_in(client)
    page = get(client, "/console/").get_data(as_text=True)
    for shown in ("v1", "blue", "sha256:v1", "serving", job.id, "registry down", "1970-01-01 00:00:01"):
        assert shown in page
    assert f'href="/console/jobs/{job.id}">redeploy v2</a> queued' in page


def test_the_overview_shows_the_sampled_health_flows_and_the_canarys_effective_share(client, queue, audit):
    for entry in deploy_entries("job-000000000000000a", "v1"):
        audit.append(entry)
    audit.append({"event": "deploy.finished", "app": "web", "tag": "v2", "canary": 10, "outcome": "ok"})
    sign_in(client)
    assert get(client, "/console/").get_data(as_text=True).count("<td>no sample</td>") == 2
    queue.flows.publish({"web": {"live": 3, "canary": 1, "old": 0, "health": "running (unhealthy)"}}, at=1.0)
    page = get(client, "/console/").get_data(as_text=True)
    assert "<td>v2 at 10%, 25.0% of flows</td>" in page
    assert '<td class="problem">running (unhealthy)</td>' in page
    assert "<td>live 3, canary 1</td>" in page  # the old instance only while it drains
    assert "as of 1970-01-01 00:00:01 UTC" in page


def test_the_overview_links_a_tagless_last_job_by_its_kind_alone(client, queue):
    job = queue.jobs.submit_manual(app="web", tag=None, actor="key:alice", kind="redeploy", source={"reason": "x"})
    sign_in(client)
    page = get(client, "/console/").get_data(as_text=True)
    assert f'href="/console/jobs/{job.id}">redeploy</a> queued' in page


def test_an_apps_page_lists_its_releases_and_charts_their_steps(client, audit):
    for entry in deploy_entries("job-000000000000000a", "v1") + deploy_entries(
        "job-000000000000000b", "v2", failed=True
    ):
        audit.append(entry)
    sign_in(client)
    page = get(client, "/console/apps/web").get_data(as_text=True)
    rows = re.findall(r'<tr class="(ok|failed)">(.*?)</tr>', page, re.S)
    assert [(outcome, "v2" in row, "v1" in row) for outcome, row in rows] == [
        ("failed", True, True),
        ("ok", False, True),
    ]
    assert "3.5 s" in page and "pull &lt;b&gt;denied&lt;/b&gt;" in page
    assert 'href="/console/jobs/job-000000000000000a"' in page
    assert page.count('<rect class="step-') == 6 + 1 + 6  # v1's six steps, v2's pull, the legend
    assert "style=" not in page and "<script" not in page


def test_a_jobs_page_shows_its_time_line_hooks_failure_and_delivery(client, queue, audit):
    submitted = queue.jobs.submit_release(
        app="web",
        tag="v2",
        actor="github:octocat",
        hook_id="1",
        delivery="72d3162e",
        source={"delivery": "72d3162e", "repository": "acme/web"},
    )
    job = submitted.job.id
    base = {"app": "web", "job": job}
    audit.append({"event": "deploy.started", "tag": "v2", **base})
    audit.append({"event": "step", "step": "hook pre-deploy", "outcome": "ok", "output": "<script>x</script>", **base})
    audit.append({"event": "deploy.failed", "outcome": "failed", "error": "health check failed", **base})
    sign_in(client)
    page = get(client, f"/console/jobs/{job}").get_data(as_text=True)
    assert "pre-deploy" in page and "&lt;script&gt;x&lt;/script&gt;" in page and "<script>" not in page
    assert "Failed: health check failed" in page and "72d3162e" in page and "acme/web" in page


@pytest.mark.parametrize(
    "path", ["/console/apps/nope", "/console/apps/%3Cscript%3E", "/console/jobs/job-1", "/console/jobs/" + JOB]
)
def test_an_unknown_or_malformed_app_or_job_is_a_404(client, path):
    sign_in(client)
    response = get(client, path)
    assert response.status_code == 404
    assert "<script>" not in response.get_data(as_text=True)


def test_the_console_is_off_without_its_table(tmp_path, events, clock):
    app, _, _ = build(tmp_path, events, clock, "")
    assert get(app.test_client(), "/console/").status_code == 404


def proxied(tmp_path, events, clock):
    table = console_table(trusted_proxy_header='"X-Forwarded-User"', trusted_proxies='["10.0.0.1/32"]')
    return build(tmp_path, events, clock, table)[0].test_client()


def via_proxy(client, name, source="10.0.0.1"):
    return get(client, "/console/", headers={"X-Forwarded-User": name}, environ_base={"REMOTE_ADDR": source})


def test_a_trusted_proxys_header_names_the_viewer_from_its_address_only(tmp_path, events, clock):
    client = proxied(tmp_path, events, clock)
    assert via_proxy(client, "bob").status_code == 200
    assert via_proxy(client, "bob", source="10.0.0.2").status_code == 302
    assert via_proxy(client, "<bob>").status_code == 302


def test_a_proxys_sign_in_starts_a_session_and_is_audited_once(tmp_path, events, clock):
    client = proxied(tmp_path, events, clock)
    first = via_proxy(client, "bob")
    for attribute in ("deployer_console=", "Secure", "HttpOnly", "SameSite=Strict", "Path=/console"):
        assert attribute in first.headers["Set-Cookie"]
    for _ in range(3):
        response = via_proxy(client, "bob")
        assert response.status_code == 200 and "Set-Cookie" not in response.headers
    [signin] = named(events, "console.signin")
    assert {k: signin[k] for k in ("viewer", "source", "actor", "via", "outcome")} == {
        "viewer": "bob",
        "source": "10.0.0.1",
        "actor": "console:bob",
        "via": "proxy",
        "outcome": "ok",
    }
    assert named(events, "console.signout") == []


def test_a_proxys_session_counts_only_on_the_proxys_requests(tmp_path, events, clock):
    client = proxied(tmp_path, events, clock)
    via_proxy(client, "bob")
    assert get(client, "/console/", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 302
    assert get(client, "/console/", environ_base={"REMOTE_ADDR": "10.0.0.1"}).status_code == 302


def test_a_header_naming_someone_else_ends_the_session_and_starts_theirs(tmp_path, events, clock):
    client = proxied(tmp_path, events, clock)
    via_proxy(client, "bob")
    assert via_proxy(client, "carol").status_code == 200
    assert [(e["event"], e["viewer"]) for e in events if e["event"].startswith("console.")] == [
        ("console.signin", "bob"),
        ("console.signout", "bob"),
        ("console.signin", "carol"),
    ]
    assert named(events, "console.signout")[0]["reason"] == "the proxy names another viewer"


def test_a_proxys_session_expires_and_the_next_request_signs_in_again(tmp_path, events, clock):
    client = proxied(tmp_path, events, clock)
    via_proxy(client, "bob")
    clock.now += 12.1 * 3600
    assert via_proxy(client, "bob").status_code == 200
    assert [e["viewer"] for e in named(events, "console.signin")] == ["bob", "bob"]


def test_a_password_session_of_the_name_the_proxy_sends_is_kept(tmp_path, events, clock):
    client = proxied(tmp_path, events, clock)
    sign_in(client, source="10.0.0.1")
    assert via_proxy(client, "alice").status_code == 200
    assert [e.get("via") for e in named(events, "console.signin")] == [None]


def test_the_console_writes_nothing_to_the_queue(client, queue, audit):
    before = queue.database.read("SELECT COUNT(*) FROM jobs")
    sign_in(client)
    for path in ("/console/", "/console/apps/web", "/console/audit", "/console/audit.jsonl"):
        assert get(client, path).status_code == 200
    assert queue.database.read("SELECT COUNT(*) FROM jobs") == before
