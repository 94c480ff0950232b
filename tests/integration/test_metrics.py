"""GET /metrics on a real server: scraped and parsed with prometheus_client's own parser after a deploy, a failed
deploy, a canary and its promote, and refused requests; each metric moves as docs/metrics.md says; a scraper
without the token is refused; scrapes answered by either gunicorn worker agree."""

from __future__ import annotations

import json
import secrets

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from support.served import Served, web_app

pytestmark = pytest.mark.integration

PORT = 22440
WEB = (("app", "web"),)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(served: Served, token: str) -> str:
    """One scrape over a fresh connection (requests.get opens one each time), as Prometheus would."""
    answer = requests.get(f"{served.url}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return answer.text


def parsed(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def live(found: Samples) -> dict[str, str]:
    """The labels of web's live release info (exactly one series)."""
    [labels] = [dict(k) for (name, k), v in found.items() if name == "deployer_live_release_info" and v == 1]
    return labels


def deploys(found: Samples, kind: str, outcome: str) -> float:
    return value(found, "deployer_deploys_total", app="web", kind=kind, outcome=outcome)


def job(served: Served, **request: str) -> str:
    """POST /deploy, signed, and the status the job ends in."""
    answer = served.signed("POST", "/deploy", json.dumps(request).encode())
    assert answer.status_code == 202, answer.text
    return served.wait(answer.json()["job"])["status"]


def counts(found: Samples) -> tuple[float, float]:
    """How many jobs' durations and how many flips' commit times web's histograms hold."""
    return (
        value(found, "deployer_deploy_duration_seconds_count", app="web"),
        value(found, "deployer_flip_commit_seconds_count", app="web"),
    )


def test_metrics_move_with_deploys_canaries_and_refusals_and_every_worker_agrees(serve, images, tmp_path):
    images.ensure("v1", "v2")
    token = secrets.token_hex(24)
    token_file = tmp_path / "metrics-token"
    token_file.write_text(token + "\n")
    served = serve(
        web_app(PORT, drain=0.5, stop_timeout=3),
        server=f'metrics_token_file = "{token_file}"\nmetrics_allow = ["127.0.0.1/32"]\n',
    )

    # An unauthorized scraper is refused, with the reason, and gets no number.
    for headers in ({}, {"Authorization": "Bearer not-the-token-at-all"}):
        refused = requests.get(f"{served.url}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401, refused.text
        assert "deployer_" not in refused.text and refused.json()["error"]

    before = parsed(scrape(served, token))
    assert value(before, "deployer_open_faults", part="worker") == 0  # the worker's heartbeat is fresh
    assert value(before, "deployer_jobs", status="succeeded") == 0

    # A deploy: counted by app, kind and outcome; its duration and its flip's commit are observed; v1 is live.
    assert job(served, app="web", tag="v1") == "succeeded"
    deployed = parsed(scrape(served, token))
    assert deploys(deployed, "redeploy", "succeeded") == 1
    assert counts(deployed) == (counts(before)[0] + 1, counts(before)[1] + 1)
    assert value(deployed, "deployer_deploy_duration_seconds_sum", app="web") > 0
    release = live(deployed)
    assert (release["app"], release["tag"], release["set"]) == ("web", "v1", "blue")
    assert release["digest"].startswith("sha256:"), release
    assert value(deployed, "deployer_canary_weight", app="web") == 0
    assert value(deployed, "deployer_jobs", status="succeeded") == 1

    # A failed deploy (its tag is not in the registry: a deploy asked for by hand fails at the pull): counted as
    # failed, its duration observed, no flip; v1 stays live.
    assert job(served, app="web", tag="v9-missing") == "failed"
    failed = parsed(scrape(served, token))
    assert deploys(failed, "redeploy", "failed") == 1
    assert counts(failed) == (counts(deployed)[0] + 1, counts(deployed)[1])
    assert live(failed)["tag"] == "v1"
    assert value(failed, "deployer_jobs", status="failed") == 1

    # A canary, started by hand: its weight shows, its flip is observed; v1 is still the live release.
    started = served.deployer.cli("deploy", "web", "v2", "--canary", "20")
    assert started.returncode == 0, started.stdout + started.stderr
    split = parsed(scrape(served, token))
    assert value(split, "deployer_canary_weight", app="web") == 20
    assert counts(split) == (counts(failed)[0], counts(failed)[1] + 1)
    assert live(split)["tag"] == "v1"

    # Its promote, as a signed job: the weight is back to 0, v2 is live on green, the promote is counted.
    assert job(served, app="web", action="promote") == "succeeded"
    promoted = parsed(scrape(served, token))
    assert value(promoted, "deployer_canary_weight", app="web") == 0
    assert deploys(promoted, "promote", "succeeded") == 1
    assert counts(promoted) == (counts(split)[0] + 1, counts(split)[1] + 1)
    release = live(promoted)
    assert (release["tag"], release["set"]) == ("v2", "green") and release["digest"].startswith("sha256:")

    # A refused request that authenticated (an unknown app) is in the audit log at once, and counted at once.
    unknown = served.signed("POST", "/deploy", json.dumps({"app": "nope", "tag": "v1"}).encode())
    assert unknown.status_code == 404, unknown.text
    refused = parsed(scrape(served, token))
    not_found = value(refused, "deployer_rejected_requests_total", reason="not_found")
    assert not_found == value(promoted, "deployer_rejected_requests_total", reason="not_found") + 1
    # One refused before it authenticated (unsigned) is counted once its process writes its minute's row.
    unsigned = requests.post(f"{served.url}/deploy", json={"app": "web", "tag": "v1"}, timeout=10)
    assert unsigned.status_code == 401, unsigned.text

    # Ten scrapes over fresh connections, answered by either of the two gunicorn workers: all the same.
    answers = {scrape(served, token) for _ in range(10)}
    assert len(answers) == 1, answers

    # Stopped, each receiver process writes what it counted; started again, the refusals before authentication
    # (two scrapes, one unsigned deploy) are counted as unauthorized, whichever process saw them.
    assert served.stop() == 0
    served.start()
    after = parsed(scrape(served, token))
    assert value(after, "deployer_rejected_requests_total", reason="unauthorized") == 3
    assert value(after, "deployer_rejected_requests_total", reason="not_found") == not_found
    assert deploys(after, "redeploy", "succeeded") == 1 and live(after)["tag"] == "v2"
