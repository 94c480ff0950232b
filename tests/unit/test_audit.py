"""The audit log: hash chain, tamper detection, prune, queries, the secret filter and the journal sink."""

from __future__ import annotations

import grp
import hashlib
import json
import logging
import os
import sqlite3
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from deployer import audit
from deployer.audit import (
    GENESIS,
    AuditLog,
    AuditSink,
    Entry,
    Query,
    audit_query_from_args,
    build_select,
    canonical_json,
    chain_hash,
    check_chain,
    deploy_span,
    parse_time,
    record_for,
)
from deployer.cli.audit import format_timeline
from deployer.cli.main import main as cli
from deployer.errors import AuditError
from deployer.journal import Journal
from support.configs import app_toml, config_text

NOW = datetime(2024, 5, 10, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    return AuditLog.for_state_dir(tmp_path / "state")


def fill(log: AuditLog, count: int = 6) -> None:
    log.append_many(
        {
            "event": "step",
            "ts": f"2024-05-0{1 + i % 9}T10:00:00.000Z",
            "app": "web",
            "actor": "cli:ann",
            "step": f"s{i + 1}",
            "outcome": "ok",
        }
        for i in range(count)
    )


def sql(log: AuditLog, *statements: str) -> None:
    """Tamper the way an intruder would: plain SQL, past the guards."""
    conn = sqlite3.connect(log.path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    conn.execute("DROP TRIGGER IF EXISTS entries_prune_only")
    for statement in statements:
        conn.execute(statement)
    conn.close()


# --- canonical form and the chain ----------------------------------------------------------------


def test_canonical_json_has_one_spelling():
    assert canonical_json({"b": [1, 2.5], "a": "é", "c": None}) == '{"a":"\\u00e9","b":[1,2.5],"c":null}'


def test_each_entry_hashes_its_predecessor_and_its_own_canonical_json(log):
    fill(log, 3)
    rows = sqlite3.connect(log.path).execute("SELECT seq, entry, prev_hash, hash FROM entries ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == [1, 2, 3]
    assert rows[0][2] == GENESIS
    for (seq, entry, prev, digest), before in zip(rows, [None, *rows]):
        assert json.loads(entry)["seq"] == seq
        assert entry == canonical_json(json.loads(entry))
        assert digest == hashlib.sha256((prev + entry).encode()).hexdigest()
        if before:
            assert prev == before[3]
    verdict = log.verify()
    assert (verdict.ok, verdict.checked, verdict.head_seq, verdict.head_hash) == (True, 3, 3, rows[2][3])


def test_an_empty_or_missing_log_verifies(log):
    assert log.verify().ok and log.verify().checked == 0
    assert log.query(Query()) == []
    assert not log.path.exists()  # reading does not create it


def test_the_database_is_wal_and_refuses_plain_updates_and_deletes(log):
    fill(log, 3)
    conn = sqlite3.connect(log.path, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE entries SET app = 'x' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="only by prune"):
        conn.execute("DELETE FROM entries WHERE seq = 2")


# --- tamper detection ----------------------------------------------------------------------------


def test_verify_names_an_edited_entry(log):
    fill(log)
    sql(log, 'UPDATE entries SET entry = replace(entry, \'"outcome":"ok"\', \'"outcome":"failed"\') WHERE seq = 4')
    verdict = log.verify()
    assert (verdict.ok, verdict.first_bad, verdict.checked) == (False, 4, 3)
    assert verdict.problem == "entry 4 was edited: its content no longer matches its hash"


def test_verify_names_an_entry_whose_indexed_column_was_edited(log):
    fill(log)
    sql(log, "UPDATE entries SET actor = 'cli:bob' WHERE seq = 2")
    verdict = log.verify()
    assert verdict.first_bad == 2
    assert verdict.problem == "entry 2 was edited: its actor column says 'cli:bob', its hashed content says 'cli:ann'"


def test_verify_names_an_entry_rewritten_with_a_recomputed_hash(log):
    fill(log)
    conn = sqlite3.connect(log.path)
    entry, prev = conn.execute("SELECT entry, prev_hash FROM entries WHERE seq = 3").fetchone()
    forged = entry.replace('"ok"', '"failed"')
    sql(
        log,
        f"UPDATE entries SET entry = '{forged}', outcome = 'failed', hash = '{chain_hash(prev, forged)}' WHERE seq = 3",
    )
    verdict = log.verify()
    assert verdict.first_bad == 3
    assert verdict.problem == "entry 3 was rewritten with a new hash: entry 4 no longer links to it"


def test_verify_names_a_deleted_entry(log):
    fill(log)
    sql(log, "DELETE FROM entries WHERE seq = 3")
    verdict = log.verify()
    assert (verdict.first_bad, verdict.checked) == (3, 2)
    assert verdict.problem == "entry 3 removed: the chain jumps from entry 2 to entry 4"


def test_verify_names_entries_deleted_from_the_end(log):
    fill(log)
    sql(log, "DELETE FROM entries WHERE seq >= 5")
    verdict = log.verify()
    assert verdict.first_bad == 5
    assert verdict.problem == "entries 5-6 removed from the end: the log's head is entry 6"


def test_verify_names_the_last_entry_rewritten_with_a_recomputed_hash(log):
    fill(log)
    entry, prev = sqlite3.connect(log.path).execute("SELECT entry, prev_hash FROM entries WHERE seq = 6").fetchone()
    forged = entry.replace('"s6"', '"s9"')
    sql(log, f"UPDATE entries SET entry = '{forged}', hash = '{chain_hash(prev, forged)}' WHERE seq = 6")
    verdict = log.verify()
    assert (verdict.first_bad, verdict.problem) == (
        6,
        "entry 6 was rewritten with a new hash: the head records another hash",
    )


def test_verify_names_two_swapped_entries(log):
    fill(log)
    sql(
        log,
        "UPDATE entries SET seq = -seq WHERE seq IN (3, 4)",
        "UPDATE entries SET seq = CASE seq WHEN -3 THEN 4 ELSE 3 END WHERE seq IN (-3, -4)",
    )
    verdict = log.verify()
    assert verdict.first_bad == 3
    assert verdict.problem == "entry 3 is out of order: its row holds entry 4 (rows were reordered)"


def test_verify_names_swapped_contents_too(log):
    fill(log)
    cols = "ts, event, app, actor, job, outcome, entry, prev_hash, hash"
    sql(
        log,
        "CREATE TEMP TABLE keep AS SELECT * FROM entries WHERE seq IN (2, 5)",
        f"UPDATE entries SET ({cols}) = (SELECT {cols} FROM keep WHERE keep.seq = 7 - entries.seq) WHERE seq IN (2, 5)",
    )
    verdict = log.verify()
    assert (verdict.first_bad, verdict.problem) == (
        2,
        "entry 2 is out of order: its row holds entry 5 (rows were reordered)",
    )


def test_check_chain_is_pure_and_accepts_rows_from_anywhere():
    rows, prev = [], GENESIS
    for seq in (1, 2):
        row = audit.row_for(seq, prev, {"ts": "2024-05-01T00:00:00.000Z", "event": "e"})
        rows.append(row)
        prev = row[-1]
    assert check_chain(rows, head=(2, prev)).ok
    assert check_chain(rows[1:], start=(1, rows[0][-1]), head=(2, prev)).ok
    assert check_chain(rows[1:], head=(2, prev)).problem == "entry 1 removed: the chain jumps from entry 0 to entry 2"


# --- prune ---------------------------------------------------------------------------------------


def test_prune_keeps_a_checkpoint_so_the_rest_still_verifies(log):
    fill(log)  # entries 1-6 on May 1st to 6th
    pruned = log.prune("2024-05-04T00:00:00.000Z", actor="cli:ann")
    assert (pruned.count, pruned.first, pruned.last) == (3, 1, 3)
    remaining = log.query(Query(limit=None, oldest_first=True))
    assert [e.seq for e in remaining] == [4, 5, 6, 7]
    assert remaining[-1].fields | {"ts": "-"} == {
        "event": "audit.pruned",
        "actor": "cli:ann",
        "before": "2024-05-04T00:00:00.000Z",
        "entries": 3,
        "first_seq": 1,
        "last_seq": 3,
        "seq": 7,
        "ts": "-",
    }
    verdict = log.verify()
    assert (verdict.ok, verdict.start_seq, verdict.checked, verdict.head_seq) == (True, 3, 4, 7)
    assert pruned.checkpoint == remaining[0].prev_hash


def test_prune_twice_and_tamper_after_prune(log):
    fill(log)
    log.prune("2024-05-03T00:00:00.000Z", actor="cli:ann")
    log.prune("2024-05-05T00:00:00.000Z", actor="cli:ann")
    assert [e.seq for e in log.query(Query(limit=None, oldest_first=True))] == [5, 6, 7, 8]
    assert log.verify().ok and log.verify().start_seq == 4
    sql(log, "DELETE FROM entries WHERE seq = 5")
    assert log.verify().problem == "entry 5 removed: the chain jumps from entry 4 to entry 6"


def test_prune_with_nothing_old_enough_changes_nothing_but_is_recorded(log):
    fill(log, 2)
    pruned = log.prune("2024-04-01T00:00:00.000Z", actor="cli:ann")
    assert pruned.count == 0 and log.verify().start_seq == 0
    assert [e.event for e in log.query(Query())] == ["audit.pruned", "step", "step"]


def test_prune_refuses_a_broken_log(log):
    fill(log)
    sql(log, "DELETE FROM entries WHERE seq = 2")
    with pytest.raises(AuditError, match="refusing to prune a broken audit log: entry 2 removed"):
        log.prune("2024-05-04T00:00:00.000Z", actor="cli:ann")


# --- queries -------------------------------------------------------------------------------------


def test_parse_time_reads_relative_and_absolute_times():
    assert parse_time("24h", now=NOW) == "2024-05-09T12:00:00.000Z"
    assert parse_time("30m", now=NOW) == "2024-05-10T11:30:00.000Z"
    assert parse_time("7d", now=NOW) == "2024-05-03T12:00:00.000Z"
    assert parse_time("2024-05-01") == "2024-05-01T00:00:00.000Z"
    assert parse_time("2024-05-01T14:00+02:00") == "2024-05-01T12:00:00.000Z"
    assert parse_time("2024-05-01 12:00:00Z") == "2024-05-01T12:00:00.000Z"
    with pytest.raises(AuditError) as caught:
        parse_time("yesterday", field_name="until")
    assert caught.value.context == {"field": "until"}


def test_build_select_renders_every_filter():
    query = audit_query_from_args(
        {
            "app": "web",
            "since": "24h",
            "until": "2024-05-10",
            "event": "deploy.*,step",
            "outcome": "failed",
            "actor": "github:*",
            "job": "j1",
            "limit": "20",
        },
        now=NOW,
    )
    assert build_select(query) == (
        "SELECT seq, ts, event, app, actor, job, outcome, entry, prev_hash, hash FROM entries "
        "WHERE app = ? AND outcome = ? AND job = ? AND ts >= ? AND ts < ? "
        "AND ((event >= ? AND event < ?) OR event = ?) AND (actor >= ? AND actor < ?) ORDER BY seq DESC LIMIT ?",
        [
            "web",
            "failed",
            "j1",
            "2024-05-09T12:00:00.000Z",
            "2024-05-10T00:00:00.000Z",
            "deploy.",
            "deploy/",
            "step",
            "github:",
            "github;",
            20,
        ],
    )
    assert build_select(Query(limit=None, after=7, oldest_first=True)) == (
        "SELECT seq, ts, event, app, actor, job, outcome, entry, prev_hash, hash FROM entries "
        "WHERE seq > ? ORDER BY seq ASC",
        [7],
    )


def test_query_args_refuse_unknown_keys_and_bad_limits():
    with pytest.raises(AuditError, match="unknown filter 'ap'"):
        audit_query_from_args({"ap": "web"})
    with pytest.raises(AuditError, match="limit: must be at least 1 and at most 1000"):
        audit_query_from_args({"limit": "5000"})
    with pytest.raises(AuditError, match="limit: must be a whole number"):
        audit_query_from_args({"limit": "ten"})
    assert audit_query_from_args({}).limit == 100
    assert audit_query_from_args({"limit": "0"}, max_limit=None).limit is None
    assert audit_query_from_args({"app": "", "event": " "}) == Query(limit=100)


def test_queries_filter_the_stored_entries_newest_first(log):
    events = [
        ("2024-05-01T09:00:00.000Z", "delivery", "web", "github:octo", "rejected"),
        ("2024-05-09T13:00:00.000Z", "deploy.started", "web", "github:octo", None),
        ("2024-05-09T13:00:05.000Z", "deploy.failed", "web", "github:octo", "failed"),
        ("2024-05-10T11:20:00.000Z", "deploy.started", "api", "cli:ann", None),
        ("2024-05-10T11:45:00.000Z", "deploy.finished", "api", "cli:ann", "ok"),
        ("2024-05-10T11:50:00.000Z", "deployment", "api", "cli:ann", None),
    ]
    for ts, event, app, actor, outcome in events:
        fields = {"ts": ts, "event": event, "app": app, "actor": actor}
        fields["verdict" if event == "delivery" else "outcome"] = outcome
        log.append(fields)

    def seqs(**args: str) -> list[int]:
        return [e.seq for e in log.query(audit_query_from_args(args, now=NOW))]

    assert seqs() == [6, 5, 4, 3, 2, 1]
    assert seqs(app="web") == [3, 2, 1]
    assert seqs(since="24h") == [6, 5, 4, 3, 2]
    assert seqs(since="30m") == [6, 5]
    assert seqs(since="2024-05-09", until="2024-05-10T11:45:00Z") == [4, 3, 2]
    assert seqs(event="deploy.*") == [5, 4, 3, 2]  # not "deployment"
    assert seqs(event="deploy.started,delivery") == [4, 2, 1]
    assert seqs(outcome="failed") == [3]
    assert seqs(outcome="rejected") == [1]  # a delivery's verdict
    assert seqs(actor="github:*") == [3, 2, 1]
    assert seqs(actor="cli:ann", limit="2") == [6, 5]


# --- what gets stored ----------------------------------------------------------------------------


def test_secret_looking_fields_are_never_recorded():
    record = record_for(
        {
            "ts": "2024-05-01T00:00:00.000Z",
            "event": "delivery",
            "_durable": True,
            "delivery": "d-1",
            "signature": "sha256=abc",
            "X-Hub-Signature-256": "sha256=abc",
            "headers": {"X-GitHub-Event": "release"},
            "api_token": "t",
            "password": "p",
            "client_secret": "s",
            "Authorization": "Bearer x",
            "request": {"raw_headers": "…", "Cookie": "c", "body_sha256": "f00", "remote_addr": "198.18.0.2"},
            "key_id": "ops",
            "nonce": "n-1",
        }
    )
    assert record == {
        "ts": "2024-05-01T00:00:00.000Z",
        "event": "delivery",
        "delivery": "d-1",
        "request": {"body_sha256": "f00", "remote_addr": "198.18.0.2"},
        "key_id": "ops",
        "nonce": "n-1",
    }


def test_known_secret_values_never_reach_the_database_file(log, tmp_path):
    secret = "hunter2-registry-password"
    journal = Journal([AuditSink(log)], secrets=[secret])
    journal.record(
        "step",
        app="web",
        step="pull",
        outcome="failed",
        error=f"login failed with {secret}",
        detail={"password": secret},
    )
    journal.record("delivery", app="web", signature=f"sha256={secret}", verdict="rejected")
    log.close()
    stored = b"".join(p.read_bytes() for p in log.path.parent.glob("audit.db*"))
    assert secret.encode() not in stored
    assert [e.get("error") for e in log.query(Query())] == [None, "login failed with ***"]


def test_record_for_normalises_time_and_values():
    record = record_for(
        {
            "ts": "2024-05-01T14:00:00+02:00",
            "event": "e",
            "path": Path("/x"),
            "ratio": float("nan"),
            "tags": {"b", "a"},
            "empty": None,
        }
    )
    assert record == {"ts": "2024-05-01T12:00:00.000Z", "event": "e", "path": "/x", "ratio": "nan", "tags": ["a", "b"]}
    with pytest.raises(AuditError, match="needs an `event`"):
        record_for({"app": "web"})


# --- the journal sink ----------------------------------------------------------------------------


def test_sink_records_durable_events_only_and_drops_the_flag(log):
    clock = iter([10.0, 10.25])
    journal = Journal([AuditSink(log)], clock=lambda: next(clock))
    journal.note("step.begin", app="web", step="pull")
    with journal.step("pull", app="web", actor="cli:ann", job="j1") as step:
        step.detail["digest"] = "sha256:0"
    journal.note("deploy.progress", app="web")
    entries = log.query(Query())
    assert len(entries) == 1
    fields = entries[0].fields
    assert "_durable" not in fields
    assert {k: fields[k] for k in ("event", "step", "outcome", "duration_ms", "app", "actor", "job", "digest")} == {
        "event": "step",
        "step": "pull",
        "outcome": "ok",
        "duration_ms": 250.0,
        "app": "web",
        "actor": "cli:ann",
        "job": "j1",
        "digest": "sha256:0",
    }
    assert set(fields) == {
        "ts",
        "seq",
        "event",
        "step",
        "outcome",
        "duration_ms",
        "started_at",
        "app",
        "actor",
        "job",
        "digest",
    }


def test_sink_never_raises_into_the_engine_but_warns(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    sink = AuditSink.for_state_dir(blocker / "state")
    with caplog.at_level(logging.WARNING, logger="deployer"):
        Journal([sink]).record("deploy.started", app="web")
    assert sink.failures == 1
    assert "audit: could not record deploy.started: cannot open the audit log" in caplog.text


def test_build_journal_adds_the_audit_sink_for_the_state_dir(tmp_path):
    from deployer.config import parse
    from deployer.wiring import build_journal

    config = parse(
        {
            "deployer": {"state_dir": "state"},
            "apps": {
                "web": {
                    "image": "registry.example/web",
                    "ports": [{"external": 8000, "container": 80, "blue": 8001, "green": 8002}],
                }
            },
        },
        path=tmp_path / "deployer.toml",
        environ={},
    )
    build_journal(config).record("deploy.started", app="web", actor="cli:ann")
    entries = AuditLog(tmp_path / "state" / "audit" / "audit.db").query(Query())
    assert [(e.event, e.get("app"), e.get("actor")) for e in entries] == [("deploy.started", "web", "cli:ann")]


# --- where the log lives: its own folder, shared with the receiver's group ------------------------


def modes(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (stat.S_IMODE(p.stat().st_mode), p.stat().st_gid) for p in folder.iterdir()}


def test_the_log_lives_in_its_own_folder(log, tmp_path):
    assert log.path == tmp_path / "state" / "audit" / "audit.db"
    fill(log, 1)
    assert log.path.exists() and not (tmp_path / "state" / "audit.db").exists()


def test_prepare_folder_shares_the_log_and_its_wal_with_the_receivers_group(tmp_path):
    group = grp.getgrgid(os.getgid()).gr_name
    path = audit.prepare_folder(tmp_path / "state", group)
    assert path == tmp_path / "state" / "audit" / "audit.db"
    assert (stat.S_IMODE(path.parent.stat().st_mode), path.parent.stat().st_gid) == (0o2770, os.getgid())
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) & 0o050 == 0o050
    log = AuditLog.for_state_dir(tmp_path / "state")
    assert log.query(Query()) == [] and log.verify().ok  # the schema is there already
    log.append({"event": "delivery", "verdict": "rejected"})  # opens the WAL, as a receiver's append would
    found = modes(path.parent)
    assert {"audit.db", "audit.db-wal", "audit.db-shm"} <= set(found)
    assert all(mode == (0o660, os.getgid()) for mode in found.values()), found


def test_prepare_folder_without_a_group_keeps_the_log_private(tmp_path):
    path = audit.prepare_folder(tmp_path / "state")
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def old_log(tmp_path: Path, count: int = 3) -> AuditLog:
    """A log where deployers before the audit folder kept it: <state_dir>/audit.db."""
    old = AuditLog(tmp_path / "state" / "audit.db")
    fill(old, count)
    return old


def test_a_log_at_the_old_place_is_moved_into_the_folder_on_first_open(tmp_path):
    old = old_log(tmp_path)
    head = old.verify().head_hash
    old.close()
    log = AuditLog.for_state_dir(tmp_path / "state")
    assert [e.seq for e in log.query(Query())] == [3, 2, 1]
    assert log.path.exists() and not old.path.exists()
    assert not list((tmp_path / "state").glob("audit.db*"))  # no -wal, -shm or lock left behind
    log.append({"event": "deploy.started", "app": "web"})
    verdict = log.verify()
    assert (verdict.ok, verdict.checked, verdict.head_seq) == (True, 4, 4)
    assert log.query(Query(after=3))[0].prev_hash == head  # the chain goes on from where it was
    assert sqlite3.connect(log.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_log_at_the_old_place_stays_there_while_another_process_has_it_open(tmp_path):
    old = old_log(tmp_path)  # its connection stays open, as a running deployer's would
    log = AuditLog.for_state_dir(tmp_path / "state")
    log.append({"event": "deploy.started", "app": "web"})
    assert not log.path.exists()
    assert [e.seq for e in old.query(Query())] == [4, 3, 2, 1]  # one log, written where it is
    assert audit.prepare_folder(tmp_path / "state", grp.getgrgid(os.getgid()).gr_name) == old.path
    assert not log.path.exists()  # no empty log made beside it: the chain is not restarted
    old.close()
    log.close()
    moved = AuditLog.for_state_dir(tmp_path / "state")
    assert moved.verify().head_seq == 4 and moved.verify().ok
    assert moved.path.exists() and not old.path.exists()


# --- timelines -----------------------------------------------------------------------------------


def _entry(seq: int, event: str, **fields) -> Entry:
    return Entry(seq, {"seq": seq, "event": event, "app": "web", "actor": "cli:ann", **fields}, "p", "h")


TIMELINE = [
    _entry(9, "deploy.started", ts="2024-05-01T10:00:00.000Z", tag="v2"),
    _entry(
        10,
        "step",
        ts="2024-05-01T10:00:01.500Z",
        step="pull",
        outcome="ok",
        duration_ms=1480.2,
        started_at="2024-05-01T10:00:00.020Z",
        digest="sha256:ab",
    ),
    _entry(11, "delivery", ts="2024-05-01T10:00:02.000Z", verdict="accepted"),
    _entry(
        12,
        "step",
        ts="2024-05-01T10:00:04.000Z",
        step="health",
        outcome="failed",
        duration_ms=2480.0,
        started_at="2024-05-01T10:00:01.520Z",
        error="did not pass\nlast log lines: ...",
    ),
    _entry(13, "deploy.failed", ts="2024-05-01T10:00:04.100Z", tag="v2", outcome="failed", error="did not pass"),
    _entry(14, "deploy.started", ts="2024-05-01T10:05:00.000Z", tag="v3"),
]


def test_deploy_span_takes_one_deploy_without_a_job_id():
    assert [e.seq for e in deploy_span(TIMELINE)] == [9, 10, 12, 13]
    assert deploy_span(TIMELINE[1:]) == []


def test_timeline_shows_start_times_durations_and_outcomes():
    assert format_timeline(deploy_span(TIMELINE)) == "\n".join(
        [
            "deploy of web v2 by cli:ann (entries 9-13)",
            "STARTED (UTC)            STEP             DURATION  OUTCOME  DETAIL",
            "2024-05-01 10:00:00.000  deploy.started",
            "2024-05-01 10:00:00.020  pull            1480.2 ms  ok       digest=sha256:ab",
            "2024-05-01 10:00:01.520  health          2480.0 ms  failed   error=did not pass …",
            "2024-05-01 10:00:04.100  deploy.failed              failed   tag=v2 error=did not pass",
            "total 4.1 s, deploy.failed failed",
        ]
    )


def test_timeline_by_job_is_oldest_first(log):
    log.append({"event": "job.queued", "job": "j1", "app": "web"})
    log.append({"event": "deploy.started", "job": "j2", "app": "web"})
    log.append({"event": "deploy.started", "job": "j1", "app": "web"})
    log.append({"event": "deploy.finished", "job": "j1", "app": "web", "outcome": "ok"})
    assert [(e.seq, e.event) for e in log.timeline("j1")] == [
        (1, "job.queued"),
        (3, "deploy.started"),
        (4, "deploy.finished"),
    ]
    assert [e.seq for e in log.span_from(3)] == [3, 4]
    assert log.span_from(1) == []


# --- the command line ----------------------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "deployer.toml"
    path.write_text(config_text(tmp_path, app_toml("web", 8000)))
    return path


def test_cli_verify_exits_1_naming_the_entry_and_0_when_intact(config_file, capsys):
    log = AuditLog.for_state_dir(config_file.parent / "state")
    fill(log)
    assert cli(["-c", str(config_file), "audit", "verify"]) == 0
    assert capsys.readouterr().out.startswith("audit log intact: 6 entries checked; head entry 6 ")
    sql(log, "DELETE FROM entries WHERE seq = 4")
    assert cli(["-c", str(config_file), "audit", "verify"]) == 1
    assert capsys.readouterr().out == (
        "audit log BROKEN at entry 4: entry 4 removed: the chain jumps from entry 3 "
        "to entry 5\n(3 entries checked before it)\n"
    )


def test_cli_lists_filters_and_prints_json(config_file, capsys):
    log = AuditLog.for_state_dir(config_file.parent / "state")
    fill(log, 3)
    assert cli(["-c", str(config_file), "audit", "--limit", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "(UTC)", "EVENT", "APP", "ACTOR", "JOB", "OUTCOME", "DETAIL"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["3", "2024-05-03", "10:00:00", "step"],
        ["2", "2024-05-02", "10:00:00", "step"],
    ]
    assert cli(["-c", str(config_file), "audit", "--json", "--until", "2024-05-02"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["count"] == 1 and document["entries"][0]["step"] == "s1"
    assert cli(["-c", str(config_file), "audit", "--jsonl", "--event", "step", "--limit", "0"]) == 0
    assert [json.loads(line)["seq"] for line in capsys.readouterr().out.splitlines()] == [3, 2, 1]


def test_cli_refuses_a_bad_time_with_exit_2(config_file, capsys):
    with pytest.raises(SystemExit) as caught:
        cli(["-c", str(config_file), "audit", "--since", "last week"])
    assert caught.value.code == 2
    assert "argument --since: since: expected a time like 24h" in capsys.readouterr().err


def test_cli_prune_and_show(config_file, capsys):
    log = AuditLog.for_state_dir(config_file.parent / "state")
    fill(log)
    assert cli(["-c", str(config_file), "audit", "prune", "--before", "2024-05-03"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pruned 2 entries (1-2) older than 2024-05-03T00:00:00.000Z; checkpoint: entry 2 ")
    assert cli(["-c", str(config_file), "audit", "verify"]) == 0
    assert "after the checkpoint at entry 2" in capsys.readouterr().out
    assert cli(["-c", str(config_file), "audit", "show", "nope"]) == 1
    assert capsys.readouterr().err == ("deployer: no job 'nope' and no deploy started at entry nope in the audit log\n")


# --- the benchmark -------------------------------------------------------------------------------


def test_benchmark_smoke_runs_on_2000_entries(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "audit.json"
    bench = Path(__file__).resolve().parents[2] / "bench" / "audit_bench.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--entries", "2000", "--runs", "2", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert (result["entries"], result["verify_ok"], result["verify_checked"]) == (2000, True, 2200)
    assert "verify: 2,200 entries in" in done.stdout


def default_sigint() -> None:
    """SIGINT as in a terminal, for a child of a run that inherited it ignored (started in the background by a
    shell): Python leaves an ignored SIGINT ignored, and the follower would never see Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_cli_follow_streams_new_entries_until_interrupted(config_file):
    import signal
    import subprocess
    import sys

    log = AuditLog.for_state_dir(config_file.parent / "state")
    fill(log, 3)
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deployer",
            "-c",
            str(config_file),
            "audit",
            "--follow",
            "--jsonl",
            "--limit",
            "2",
            "--event",
            "deploy.*,step",
        ],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )  # noqa: PLW1509 - no other thread runs here
    try:
        first = [json.loads(follower.stdout.readline())["seq"] for _ in range(2)]
        log.append({"event": "job.queued", "app": "web"})  # filtered out
        log.append({"event": "deploy.started", "app": "web"})
        streamed = json.loads(follower.stdout.readline())
        follower.send_signal(signal.SIGINT)
        assert follower.wait(timeout=10) == 0
    finally:
        follower.kill()
    assert first == [2, 3]  # the latest entries, oldest first
    assert (streamed["seq"], streamed["event"]) == (5, "deploy.started")
