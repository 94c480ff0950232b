"""What the console's pages show of a canary, from the entries the engine writes (deployer/receiver/console/views.py):
its start leaves the live release as it was, so the release it replaces and the live digest are those before it
until it is promoted."""

from __future__ import annotations

from deployer.audit import Entry
from deployer.receiver.console.views import app_summary, releases

V1, V2, V3 = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64


def log(*events: dict) -> list[Entry]:
    """Entries oldest first, each with its seq and a second of its own."""
    return [
        Entry(seq, {"seq": seq, "ts": f"2026-01-01T00:00:{seq:02d}.000Z", "app": "web", **event}, "", "")
        for seq, event in enumerate(events, start=1)
    ]


def deploy(tag: str, digest: str, **more) -> list[dict]:
    return [
        {"event": "deploy.started", "tag": tag, **more},
        {"event": "deploy.finished", "outcome": "ok", "tag": tag, "digest": digest, **more},
    ]


def canary(tag: str, digest: str) -> list[dict]:
    return deploy(tag, digest, canary=20)


def promote(tag: str) -> list[dict]:
    return [{"event": "promote.started", "tag": tag}, {"event": "promote.finished", "outcome": "ok", "tag": tag}]


def abort(canary_tag: str, live_tag: str) -> list[dict]:
    return [
        {"event": "abort.started", "tag": canary_tag},
        {"event": "abort.finished", "outcome": "ok", "tag": live_tag},
    ]


def rollback(tag: str, digest: str) -> list[dict]:
    return [
        {"event": "rollback.started", "tag": tag},
        {"event": "rollback.finished", "outcome": "ok", "tag": tag, "digest": digest},
    ]


def test_a_canary_and_its_promote_replace_the_release_that_was_live_before_the_canary():
    entries = log(*deploy("v1", V1), *canary("v2", V2), *promote("v2"), *rollback("v1", V1))
    assert [(r.kind, r.tag, r.previous) for r in releases(entries)] == [
        ("rollback", "v1", "v2"),
        ("promote", "v2", "v1"),
        ("canary", "v2", "v1"),
        ("deploy", "v1", None),
    ]


def test_after_an_aborted_canary_the_next_deploy_replaces_the_release_that_stayed_live():
    entries = log(*deploy("v1", V1), *canary("v2", V2), *abort("v2", "v1"), *deploy("v3", V3))
    assert [(r.kind, r.previous) for r in releases(entries)] == [
        ("deploy", "v1"),
        ("abort", "v1"),
        ("canary", "v1"),
        ("deploy", None),
    ]


def test_while_a_canary_runs_the_live_digest_is_the_release_it_splits_with():
    summary = app_summary("web", {"tag": "v1"}, log(*deploy("v1", V1), *canary("v2", V2))[::-1])
    assert (summary.digest, summary.canary, summary.canary_tag) == (V1, 20, "v2")


def test_a_promote_makes_its_canarys_digest_live_and_an_abort_does_not():
    promoted = app_summary("web", {"tag": "v2"}, log(*deploy("v1", V1), *canary("v2", V2), *promote("v2"))[::-1])
    assert (promoted.digest, promoted.canary) == (V2, None)
    aborted = app_summary("web", {"tag": "v1"}, log(*deploy("v1", V1), *canary("v2", V2), *abort("v2", "v1"))[::-1])
    assert (aborted.digest, aborted.canary) == (V1, None)
    again = log(*deploy("v1", V1), *canary("v2", V2), *promote("v2"), *canary("v3", V3), *abort("v3", "v2"))
    assert app_summary("web", {"tag": "v2"}, again[::-1]).digest == V2


def test_a_rollback_makes_its_digest_live():
    entries = log(*deploy("v1", V1), *canary("v2", V2), *promote("v2"), *rollback("v1", V1))
    assert app_summary("web", {"tag": "v1"}, entries[::-1]).digest == V1
