"""Audit log benchmark: filtered queries and `verify` on a log of 100,000 entries.

    .venv/bin/python bench/audit_bench.py             # 100,000 entries, writes bench/results/audit.json
    .venv/bin/python bench/audit_bench.py --entries 2000 --out /tmp/audit.json   # the smoke the tests run

The log is filled with a realistic mix (deliveries, jobs, deploys and their steps for 20 apps,
spread over 90 days) in batches, then each query runs through the same code path as
`deployer audit` and `GET /audit`. Target: a filtered query under 200 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deployer.audit import AuditLog, audit_query_from_args, format_ts  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "audit.json"
TARGET_MS = 200.0
APPS = [f"app-{n:02d}" for n in range(20)]
STEPS = ["pull", "start", "health", "flip", "record", "conntrack", "drain", "stop"]
QUERIES = {
    "app + since 7d + event deploy.*": {"app": "app-10", "since": "7d", "event": "deploy.*", "limit": "50"},
    "outcome failed + since 7d": {"outcome": "failed", "since": "7d", "limit": "50"},
    "actor github:* (prefix)": {"actor": "github:*", "limit": "50"},
    "app + event step + until 30d": {"app": "app-03", "event": "step", "until": "30d", "limit": "50"},
    "rare: app + outcome rejected": {"app": "app-11", "outcome": "rejected", "limit": "50"},
    "no filter, newest 50": {"limit": "50"},
    "since 24h, up to 1000": {"since": "24h", "limit": "1000"},
    "worst: actor matching nothing (full scan)": {"actor": "cli:nobody", "limit": "50"},
}


def deploy_events(rng: random.Random, job: int, moment: datetime, apps: list[str] = APPS) -> list[dict]:
    """One job's worth of entries, as the webhook receiver and the engine record them."""
    app, tag = rng.choice(apps), f"v{rng.randint(1, 300)}"
    actor = rng.choice(["github:octocat", "github:hubot", "key:ops", "cli:ann"])
    base = {"app": app, "actor": actor, "job": f"j{job}"}
    at = lambda s: format_ts(moment + timedelta(seconds=s))  # noqa: E731
    events = []
    if actor.startswith("github:"):
        verdict = "rejected" if rng.random() < 0.05 else "accepted"
        events.append(
            {
                "ts": at(0),
                "event": "delivery",
                "delivery": f"d{job}",
                "hook_id": 42,
                "action": "published",
                "repository": f"acme/{app}",
                "sender": actor[7:],
                "tag": tag,
                "verdict": verdict,
                "body_sha256": f"{job:064x}",
                "remote_addr": "192.0.2.10",
                "app": app,
            }
        )
        if verdict == "rejected":
            return events
    events.append({"ts": at(0.1), "event": "job.queued", "tag": tag, **base})
    events.append({"ts": at(0.2), "event": "deploy.started", "tag": tag, **base})
    failed_at = rng.choice(STEPS[:3]) if rng.random() < 0.08 else None
    t = 0.3
    for step in STEPS:
        duration = rng.uniform(5, 3000)
        outcome = "failed" if step == failed_at else "ok"
        events.append(
            {
                "ts": at(t + duration / 1000),
                "event": "step",
                "step": step,
                "outcome": outcome,
                "started_at": at(t),
                "duration_ms": round(duration, 1),
                **base,
            }
        )
        t += duration / 1000
        if failed_at == step:
            events.append(
                {
                    "ts": at(t),
                    "event": "deploy.failed",
                    "outcome": "failed",
                    "tag": tag,
                    "error": f"{step} failed",
                    **base,
                }
            )
            return events
    events.append({"ts": at(t), "event": "deploy.finished", "outcome": "ok", "tag": tag, "set": "blue", **base})
    return events


def fill(log: AuditLog, entries: int, now: datetime, seed: int = 7, apps: list[str] = APPS) -> None:
    rng = random.Random(seed)
    start = now - timedelta(days=90)
    span = (now - start).total_seconds()
    batch: list[dict] = []
    written, job = 0, 0
    while written < entries:
        job += 1
        moment = start + timedelta(seconds=span * written / entries)
        for event in deploy_events(rng, job, moment, apps)[: entries - written]:
            batch.append(event)
            written += 1
        if len(batch) >= 2000 or written >= entries:
            log.append_many(batch)
            batch = []


def timed(fn, runs: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(runs):
        begin = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - begin) * 1000)
    return times, result


def run(entries: int, out: Path, runs: int = 20) -> dict:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="audit-bench-") as folder:
        log = AuditLog.for_state_dir(folder)
        begin = time.perf_counter()
        fill(log, entries, now)
        fill_s = time.perf_counter() - begin
        single, _ = timed(lambda: log.append({"event": "bench.single", "actor": "bench"}), 200)
        db_bytes = sum(p.stat().st_size for p in log.path.parent.glob("audit.db*"))

        rows = []
        for name, args in QUERIES.items():
            query = audit_query_from_args(args, now=now)
            log.close()  # the first run opens the database, as a fresh CLI does
            times, result = timed(lambda query=query: log.query(query), runs)
            rows.append(
                {
                    "query": name,
                    "args": args,
                    "matches": len(result),
                    "first_ms": round(times[0], 2),
                    "median_ms": round(statistics.median(times), 2),
                    "max_ms": round(max(times), 2),
                }
            )
        job = log.query(audit_query_from_args({"event": "deploy.finished", "limit": "1"}))[0].get("job")
        times, timeline = timed(lambda: log.timeline(job), runs)
        rows.append(
            {
                "query": "timeline(job)",
                "args": {"job": job},
                "matches": len(timeline),
                "first_ms": round(times[0], 2),
                "median_ms": round(statistics.median(times), 2),
                "max_ms": round(max(times), 2),
            }
        )
        verify_times, verdict = timed(log.verify, 3)

    filtered = rows[0]
    result = {
        "entries": entries,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version},
        "fill_seconds": round(fill_s, 2),
        "single_append_ms": {"median": round(statistics.median(single), 3), "max": round(max(single), 3)},
        "db_megabytes": round(db_bytes / 1e6, 1),
        "queries": rows,
        "filtered_query_ms": filtered["median_ms"],
        "target_ms": TARGET_MS,
        "within_target": all(r["max_ms"] < TARGET_MS for r in rows),
        "verify_ms": {"median": round(statistics.median(verify_times), 1), "max": round(max(verify_times), 1)},
        "verify_ok": verdict.ok,
        "verify_checked": verdict.checked,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def table(result: dict) -> str:
    lines = [
        f"audit log: {result['entries']:,} entries ({result['db_megabytes']} MB), filled in "
        f"{result['fill_seconds']} s; one append (own transaction, fsync) median "
        f"{result['single_append_ms']['median']} ms",
        "",
        f"{'query':42} {'matches':>7} {'first ms':>9} {'median ms':>10} {'max ms':>8}",
    ]
    for row in result["queries"]:
        lines.append(
            f"{row['query']:42} {row['matches']:>7} {row['first_ms']:>9.2f} {row['median_ms']:>10.2f} "
            f"{row['max_ms']:>8.2f}"
        )
    lines += [
        "",
        f"verify: {result['verify_checked']:,} entries in {result['verify_ms']['median']} ms "
        f"(median of 3), ok={result['verify_ok']}",
        f"every query under {result['target_ms']:.0f} ms: {'yes' if result['within_target'] else 'NO'}",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20, help="runs of each query")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = run(args.entries, args.out, args.runs)
    print(table(result))
    print(f"\nwritten to {args.out}")
    return 0 if result["within_target"] and result["verify_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
