"""The web console in a real browser: headless Chromium (Debian's, through Selenium) over `deployer serve`, after a
deploy, a failed deploy, a canary, its promote and a rollback on the test bed.

While the canary runs, four connections held open to the app's port show as live flows of the live and the canary
instance, as the worker's heartbeat sampled them, with the canary's effective share beside its weight.

Signed out, every page leads to the sign-in page; a forged cookie and an expired one are refused; a wrong password
is refused and audited, and the sixth quick attempt from the address is throttled. Signed in, each page's facts
(tags, port sets, digests, outcomes, step names, durations, hashes) match the audit log and the records, its links
lead where they say, the audit log's filter narrows it, and a screenshot of each page is saved (CONSOLE_SCREENSHOTS
names the folder; docs/console/ holds the ones docs/console.md shows). Every page the browser opened came with the
console's headers and holds no script, and the browser reported no Content Security Policy violation on any.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from flask import Flask
from flask.sessions import SecureCookieSessionInterface

from deployer.audit import AuditLog, Entry, Query
from deployer.passwords import hash_password
from deployer.queue.flows import FlowSample
from deployer.queue.queue import Queue
from deployer.receiver.console.auth import COOKIE_NAME, fingerprint
from deployer.receiver.console.pages import CSP
from support.browser import Browser, chromium, reports_violations
from support.served import Served, web_app

pytestmark = pytest.mark.integration

PORT = 22460
VIEWER = "ann"
PASSWORD = "a long and correct password"
WRONG = "not the password at all"
# A low scrypt cost keeps each sign-in fast; the config takes any cost within bounds.
HASH = hash_password(PASSWORD, n=2**4, r=1, p=1)
RELEASE_KINDS = ("deploy", "rollback", "promote", "abort")


def console_table(key_file: Path) -> str:
    return (
        f'[console]\nsession_key_file = "{key_file}"\nsecure_cookie = false\n'  # plain http on loopback
        f'[console.viewers]\n{VIEWER} = "{HASH}"\n'
    )


def session_cookie(key: str, content: dict) -> str:
    """A session cookie as the receiver signs them (Flask's), signed with `key`."""
    app = Flask("forger")
    app.secret_key = key
    return SecureCookieSessionInterface().get_signing_serializer(app).dumps(content)


def entries(served: Served, query: Query) -> list[Entry]:
    return AuditLog.for_state_dir(served.deployer.root / "state").query(query)


def job(served: Served, **request: str) -> dict:
    answer = served.signed("POST", "/deploy", json.dumps(request).encode())
    assert answer.status_code == 202, answer.text
    return served.wait(answer.json()["job"])


def cli(served: Served, *args: str) -> None:
    done = served.deployer.cli(*args)
    assert done.returncode == 0, done.stdout + done.stderr


def record(served: Served) -> dict:
    """web's record, as `deployer status --json` reads it."""
    done = served.deployer.cli("status", "web", "--json")
    return json.loads(done.stdout)[0]


def signed_out_to_signin(browser: Browser, path: str) -> None:
    browser.open(path)
    where = urlsplit(browser.path())
    assert (where.path, parse_qs(where.query)) == ("/console/signin", {"next": [path]}), (path, browser.path())
    assert browser.driver.find_element("name", "password").get_attribute("type") == "password"


def sign_in(browser: Browser, name: str, password: str) -> int:
    browser.fill("main form", {"name": name, "password": password})
    return browser.last_document().status


def releases_from_log(log: list[Entry]) -> list[dict]:
    """web's releases, newest first, read from its audit entries (oldest first) without the console's code: each
    `<kind>.started` and the `.finished` or `.failed` of the same kind and job that ends it, and its steps."""
    found = []
    for start in log:
        kind, _, phase = start.event.rpartition(".")
        if kind not in RELEASE_KINDS or phase != "started":
            continue
        later = [e for e in log if e.seq > start.seq and e.get("job") == start.get("job")]
        end = next(e for e in later if e.event in (f"{kind}.finished", f"{kind}.failed"))
        found.append(
            {
                "kind": "canary" if start.get("canary") is not None else kind,
                "tag": start.get("tag"),
                "job": start.get("job"),
                "seq": start.seq,
                "outcome": "ok" if end.event.endswith(".finished") else "failed",
                "error": end.get("error"),
                "took": f"{seconds(start.ts, end.ts):.1f} s",
                "finished_tag": end.get("tag"),
                "steps": {e.get("step"): e.get("duration_ms") for e in later if e.event == "step" and e.seq < end.seq},
            }
        )
    return found[::-1]


def seconds(start: str, end: str) -> float:
    """Exact to the microsecond, as the stored times are: a difference of two epoch floats is not (0.05 s may come
    out 0.0499999, shown as 0.0 s where the page rightly shows 0.1 s)."""
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def flows_sampled_after(served: Served, moment: float, timeout: float = 15.0) -> FlowSample:
    """web's flows and health as the worker sampled them, once a sample is newer than `moment` (every 10 s)."""
    queue = Queue.for_state_dir(served.deployer.root / "state")
    deadline = time.monotonic() + timeout
    try:
        while True:
            sample = queue.flows.samples().get("web")
            if sample is not None and sample.sampled_at > moment:
                return sample
            assert time.monotonic() < deadline, f"no sample of the flows after {moment}: {sample}"
            time.sleep(0.2)
    finally:
        queue.close()


def check_page(browser: Browser) -> None:
    """The page the browser shows holds no script (the policy would refuse one; there is none to refuse), and fits
    the window's width: no column (the audit log's chain marks) is out of view."""
    assert browser.inline_scripts() == 0, f"{browser.path()} holds a script"
    wide, window = browser.driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert wide <= window, f"{browser.path()} is {wide} pixels wide in a {window}-pixel window"


def test_the_console_in_a_browser_after_deploys_a_canary_and_a_rollback(serve, images, tmp_path, request):
    images.ensure("v1", "v2")
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    key_file = tmp_path / "console-session-key"
    key_file.write_text(key + "\n")
    served = serve(web_app(PORT, drain=0.5, stop_timeout=3), settings=console_table(key_file))

    # The bed: a deploy, a failed deploy (a tag the registry lacks), and a canary of v2 at 20%, running.
    deployed = job(served, app="web", tag="v1")
    assert deployed["status"] == "succeeded", deployed
    failed = job(served, app="web", tag="v9-missing")
    assert failed["status"] == "failed", failed
    cli(served, "deploy", "web", "v2", "--canary", "20")
    held = [socket.create_connection(("127.0.0.1", PORT), timeout=5) for _ in range(4)]  # live flows to count
    held_since = time.time()
    request.addfinalizer(lambda: [connection.close() for connection in held])

    with chromium() as driver:
        assert reports_violations(driver), "this browser does not report a refused inline script in its log"
        browser = Browser(driver, served.url, shots)

        # --- signed out ---------------------------------------------------------------------------------
        pages = [
            "/console/",
            "/console/apps/web",
            f"/console/jobs/{deployed['id']}",
            f"/console/jobs/{failed['id']}",
            "/console/audit?event=deploy.*",
            "/console/audit.jsonl",
        ]
        for path in pages:
            signed_out_to_signin(browser, path)
        check_page(browser)
        browser.screenshot("signin")

        # A cookie signed with another key, and one of the real key whose sign-in is older than session_hours
        # (12), are refused; the same cookie with a fresh sign-in time is taken, so the refusals are for those.
        content = {"viewer": VIEWER, "hash": fingerprint(HASH), "csrf": "t" * 43}
        for cookie in (
            session_cookie(secrets.token_hex(32), {**content, "at": time.time()}),
            session_cookie(key, {**content, "at": time.time() - 13 * 3600}),
        ):
            driver.add_cookie({"name": COOKIE_NAME, "value": cookie, "path": "/console", "httpOnly": True})
            signed_out_to_signin(browser, "/console/")
            driver.delete_all_cookies()
        driver.add_cookie(
            {"name": COOKIE_NAME, "value": session_cookie(key, {**content, "at": time.time()}), "path": "/console"}
        )
        browser.open("/console/")
        assert browser.path() == "/console/" and VIEWER in browser.text("header")
        driver.delete_all_cookies()

        # A wrong password is refused, and audited with the name and the source, never the password.
        signed_out_to_signin(browser, "/console/apps/web")
        started = time.monotonic()
        assert sign_in(browser, VIEWER, WRONG) == 401
        assert "Wrong name or password." in browser.text()
        [refused] = entries(served, Query(event=("console.signin_failed",)))
        assert (refused.get("viewer"), refused.get("source"), refused.get("outcome")) == (
            VIEWER,
            "127.0.0.1",
            "refused",
        )

        # The right one leads to the page first asked for, and is audited as the viewer's.
        assert sign_in(browser, VIEWER, PASSWORD) == 200
        assert browser.path() == "/console/apps/web"
        [signin] = entries(served, Query(event=("console.signin",)))
        assert (signin.get("actor"), signin.get("source"), signin.get("outcome")) == (
            f"console:{VIEWER}",
            "127.0.0.1",
            "ok",
        )
        every = entries(served, Query(limit=None))
        assert not [e.seq for e in every if PASSWORD in json.dumps(e.fields) or WRONG in json.dumps(e.fields)]
        [signed_in] = [c for c in driver.get_cookies() if c["name"] == COOKIE_NAME]
        assert (signed_in["path"], signed_in["httpOnly"], signed_in["sameSite"]) == ("/console", True, "Strict")

        # Signed out again (the cookie put aside), the sixth quick attempt from the address is throttled: two were
        # spent above, three more are refused, the sixth is answered 429 with when to come back.
        driver.delete_all_cookies()
        signed_out_to_signin(browser, "/console/")
        for _ in range(3):
            assert sign_in(browser, VIEWER, WRONG) == 401
        assert sign_in(browser, VIEWER, PASSWORD) == 429
        throttled = browser.last_document()
        assert 0 < int(throttled.headers["retry-after"]) <= 60, throttled.headers
        assert "too many sign-in attempts" in browser.text()
        assert time.monotonic() - started < 50, "the attempts were not quick: a token came back meanwhile"
        assert len(entries(served, Query(event=("console.signin_failed",)))) == 4
        assert len(entries(served, Query(event=("console.signin",)))) == 1  # the throttled one never got that far
        driver.add_cookie({k: signed_in[k] for k in ("name", "value", "path", "httpOnly", "sameSite")})

        # --- the overview while the canary runs --------------------------------------------------------------
        browser.open("/console/")
        check_page(browser)
        running = record(served)
        sample = flows_sampled_after(served, held_since)
        browser.open("/console/")  # with that sample
        [row] = browser.rows("main table")
        assert row[:5] == ["web", "v1", running["active"]["port_set"], running["active"]["digest"], "serving"], row
        # The held connections, each on the live or the canary instance: its share of them beside its weight.
        assert (sample.live + sample.canary, sample.old or 0) == (4, 0), sample
        assert row[5] == f"v2 at 20%, {round(100 * sample.canary / 4, 1)}% of flows", (row, sample)
        assert row[6] == sample.health and sample.health.startswith("running"), (row, sample)
        assert row[7] == f"live {sample.live}, canary {sample.canary}", (row, sample)
        assert row[8] == "redeploy v9-missing failed", row
        assert "Health and live flows as of" in browser.text()
        for connection in held:
            connection.close()
        assert browser.links("main table a")["redeploy v9-missing"] == f"/console/jobs/{failed['id']}"
        assert "Worker heartbeat" in browser.text() and "No open faults." in browser.text()

        # The canary's promote (a signed job), then a rollback by hand: v1 is live again.
        promoted = job(served, app="web", action="promote")
        assert promoted["status"] == "succeeded", promoted
        rolling_back = time.time()
        cli(served, "rollback", "web")

        # --- the overview after ---------------------------------------------------------------------------
        sample = flows_sampled_after(served, rolling_back)  # the worker samples again once what is live changed
        browser.open("/console/")
        check_page(browser)
        now = record(served)
        live = served.signed("GET", "/apps/web").json()
        assert (now["active"]["tag"], live["tag"]) == ("v1", "v1"), (now, live)
        [row] = browser.rows("main table")
        assert row[:6] == ["web", "v1", live["port_set"], now["active"]["digest"], "serving", "-"], row
        assert row[1:4] == [now["active"]["tag"], now["active"]["port_set"], now["active"]["digest"]]
        # The connections were closed before the promote: ended, they are no live flows (the canary is gone too).
        assert (sample.live, sample.canary, row[6], row[7]) == (0, None, sample.health, "live 0"), (row, sample)
        browser.screenshot("overview")

        # --- the app's page, reached by its link ----------------------------------------------------------
        browser.click("web")
        assert browser.path() == "/console/apps/web"
        check_page(browser)
        log = entries(served, Query(app="web", limit=None, oldest_first=True))
        expected = releases_from_log(log)
        assert [(r["kind"], r["tag"], r["outcome"]) for r in expected] == [
            ("rollback", expected[0]["tag"], "ok"),
            ("promote", expected[1]["tag"], "ok"),
            ("canary", "v2", "ok"),
            ("deploy", "v9-missing", "failed"),
            ("deploy", "v1", "ok"),
        ], expected
        rows = browser.rows("main table")
        assert len(rows) == len(expected), rows
        for cells, release in zip(rows, expected):
            when, kind, tag, _previous, actor, outcome, took, link = cells
            assert (kind, took) == (release["kind"], release["took"]), (cells, release)
            assert tag == (release["tag"] or "-"), (cells, release)
            assert outcome.split(":")[0] == release["outcome"], (cells, release)
            if release["error"]:
                assert release["error"] in outcome
            assert when == next(e.ts for e in log if e.seq == release["seq"])
            assert link == (release["job"] or f"entry {release['seq']}"), (cells, release)
        # What was live before each: the canary and its promote replaced v1, the rollback left v2.
        assert [r[3] for r in rows] == ["v2", "v1", "v1", "v1", "-"], rows
        assert rows[4][4] == "key:ops" and rows[3][4] == "key:ops"

        # The chart: a bar for each release with timed steps, oldest at the top, each step's time from the log.
        labels = [t.get_attribute("textContent") for t in driver.find_elements("css selector", "svg.chart > text")]
        timed = [r for r in expected if r["kind"] in ("deploy", "rollback", "canary") and r["steps"]][::-1]
        assert labels[: len(timed)] == [f"{r['tag']} ({r['kind']})" for r in timed], labels
        titles = [t.get_attribute("textContent") for t in driver.find_elements("css selector", "svg.chart rect title")]
        chart_steps = ("pull", "start", "health", "flip", "drain", "stop")
        wanted = [f"{step}: {r['steps'][step]:.0f} ms" for r in timed for step in chart_steps if r["steps"].get(step)]
        assert titles == wanted, (titles, wanted)
        assert {"pull", "start", "health", "flip"} <= set(timed[0]["steps"])
        browser.screenshot("app")

        # --- a job's page, through the releases' link ----------------------------------------------------
        browser.click(failed["id"])
        assert browser.path() == f"/console/jobs/{failed['id']}"
        check_page(browser)
        assert f"Failed: {failed['reason']}" in browser.text(), (browser.text(), failed)
        timeline = AuditLog.for_state_dir(served.deployer.root / "state").timeline(failed["id"])
        shown = browser.rows("main table:last-of-type")
        assert [(int(c[1]), c[2], c[3], c[4]) for c in shown] == [
            (e.seq, e.event, e.get("step") or "", e.get("outcome") or "") for e in timeline
        ], shown

        browser.open(f"/console/jobs/{deployed['id']}")
        check_page(browser)
        assert "redeploy of web v1 by key:ops: succeeded." in browser.text()
        timeline = AuditLog.for_state_dir(served.deployer.root / "state").timeline(deployed["id"])
        shown = browser.rows("main table:last-of-type")
        steps = [(c[3], c[5]) for c in shown if c[2] == "step"]
        assert steps == [(e.get("step"), f"{e.get('duration_ms')} ms") for e in timeline if e.event == "step"]
        assert [s for s, _ in steps][:4] and {"pull", "start", "health", "flip"} <= {s for s, _ in steps}
        browser.screenshot("job")
        browser.click("web")
        assert browser.path() == "/console/apps/web"

        # --- the audit log, filtered through its form ---------------------------------------------------
        browser.click("Audit log")
        assert browser.path() == "/console/audit"
        check_page(browser)
        rows = browser.rows("table.entries")
        # The log as the page read it (a minute's refusals may be written to it meanwhile): its newest 50 entries.
        newest = entries(served, Query(limit=50, before=int(rows[0][0]) + 1))
        assert [(int(r[0]), r[2], r[8]) for r in rows] == [(e.seq, e.event, e.hash) for e in newest]
        assert int(rows[0][0]) >= signin.seq
        assert {r[9] for r in rows} == {"verifies"}
        # The bed wrote more than a page: the next page follows on from the last entry shown.
        assert len(entries(served, Query(limit=51, before=int(rows[0][0]) + 1))) == 51
        browser.click("Older entries")
        older = entries(served, Query(limit=50, before=int(rows[-1][0])))
        assert [(int(r[0]), r[9]) for r in browser.rows("table.entries")] == [(e.seq, "verifies") for e in older]
        browser.click("Audit log")
        browser.fill("form.filters", {"app": "web", "event": "deploy.*"})
        where = urlsplit(browser.path())
        assert (where.path, parse_qs(where.query)) == ("/console/audit", {"app": ["web"], "event": ["deploy.*"]})
        rows = browser.rows("table.entries")
        matching = entries(served, Query(app="web", event=("deploy.*",), limit=50))
        assert [(int(r[0]), r[2], r[6]) for r in rows] == [
            (e.seq, e.event, e.get("outcome") or "-") for e in matching
        ], rows
        assert rows and all(r[2].startswith("deploy.") and r[3] == "web" for r in rows)
        check_page(browser)
        assert {r[9] for r in rows} == {"verifies"}
        assert browser.links("form.filters a")["Export as JSON lines"].startswith("/console/audit.jsonl?")
        browser.screenshot("audit")

        # --- signing out ------------------------------------------------------------------------------------
        browser.navigate(driver.find_element("css selector", "form.signout button").click)
        assert browser.path() == "/console/signin"
        [signout] = entries(served, Query(event=("console.signout",)))
        assert (signout.get("actor"), signout.get("source")) == (f"console:{VIEWER}", "127.0.0.1")
        signed_out_to_signin(browser, "/console/audit")

        # Every console page the browser received came with the console's headers.
        received = browser.documents("/console/")
        assert len(received) > 20
        for answer in received:
            headers = answer.headers
            assert headers["content-security-policy"] == CSP, answer
            assert headers["x-frame-options"] == "DENY", answer
            assert headers["cache-control"] == "no-store", answer
            assert headers["x-content-type-options"] == "nosniff", answer
            assert headers["referrer-policy"] == "no-referrer", answer
        sheets = [a for a in browser.answers if a.kind == "Stylesheet"]
        assert sheets and all(a.url.endswith("/console/static/console.css") for a in sheets)
        assert not [e for e in browser.console if re.search(r"Content Security Policy|Refused to", e["message"])]
