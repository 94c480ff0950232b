"""Console benchmark: the overview, the first and the last audit page and an app's page over a 10,000-entry log.

    .venv/bin/python bench/console_bench.py            # 10,000 entries, 50 apps; writes bench/results/console.json
    .venv/bin/python bench/console_bench.py --entries 300 --apps 3 --rounds 2 --out /tmp/console.json   # the smoke

Each page is rendered by the real Flask app (its test client, signed in once), over a queue with every app live,
a heartbeat, a flows sample and open jobs, and an audit log filled as bench/audit_bench.py fills it. The last audit
page checks the chain from its oldest entry to the head: over every entry. Target: each page well under a second,
here half a second at the 95th percentile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sqlite3
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.analysis import summary  # noqa: E402
from bench.audit_bench import fill  # noqa: E402
from bench.tables import table  # noqa: E402
from deployer import config as config_module  # noqa: E402
from deployer.audit import AuditLog  # noqa: E402
from deployer.journal import Journal  # noqa: E402
from deployer.passwords import hash_password  # noqa: E402
from deployer.queue.queue import Queue  # noqa: E402
from deployer.receiver.console.pages import PAGE_SIZE  # noqa: E402
from deployer.receiver.web import create_app  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "console.json"
TARGET_MS = 500.0
PASSWORD = "bench-password"
HTTPS = "https://localhost"


def config_text(state_dir: Path, apps: list[str]) -> str:
    viewer = hash_password(PASSWORD, n=2**4, r=1, p=1)  # the sign-in's cost is not what is measured
    lines = [
        f'[deployer]\nstate_dir = "{state_dir}"\n[server]\nnames = ["localhost"]\n',
        f'[console]\nsession_key_env = "CONSOLE_KEY"\n[console.viewers]\nbench = "{viewer}"\n',
    ]
    for n, app in enumerate(apps):
        port = 10000 + 3 * n
        lines.append(
            f'[apps.{app}]\nimage = "registry.example:5000/{app}"\n'
            f"[[apps.{app}.ports]]\nexternal = {port}\ncontainer = 80\nblue = {port + 1}\ngreen = {port + 2}\n"
        )
    return "".join(lines)


def build(folder: Path, entries: int, apps: list[str]) -> tuple[Any, dict[str, str]]:
    """The console's Flask app over a filled queue and audit log; the paths of the pages to time."""
    state = folder / "state"
    text = config_text(state, apps)
    config = config_module.parse(tomllib.loads(text), path=folder / "deployer.toml", environ={"CONSOLE_KEY": "k" * 64})
    queue = Queue.for_state_dir(state)
    audit = AuditLog.for_state_dir(state)
    fill(audit, entries, datetime.now(UTC), apps=apps)
    for n, app in enumerate(apps):
        queue.live.set_active(app, f"v{n}", None, "blue" if n % 2 else "green")
    for app in apps[:10]:
        queue.jobs.submit_manual(app=app, tag="v999", actor="key:bench", source={"reason": "bench"})
    queue.heartbeat.heartbeat(pid=1, started_at=0, faults={"registry": {"reason": "registry down", "since": 1.0}})
    publish_flows(queue, apps)
    journal = Journal([lambda entry: None])  # the sign-in's entry stays out of the log being measured
    app = create_app({"DEPLOYER_CONFIG": config, "QUEUE": queue, "JOURNAL": journal, "AUDIT": audit, "TESTING": True})
    last_page = PAGE_SIZE + 1  # the entries before it are the oldest PAGE_SIZE: the log numbers its first 1
    pages = {
        "overview": "/console/",
        "audit, first page": "/console/audit",
        "audit, last page (chain over all)": f"/console/audit?before={last_page}",
        "an app's page": f"/console/apps/{apps[len(apps) // 2]}",
    }
    return app, pages


def publish_flows(queue: Queue, apps: list[str]) -> None:
    """A flows sample of every app, as the worker's heartbeat publishes it."""
    queue.flows.publish(
        {app: {"live": 40 + n, "old": 0, "health": "running"} for n, app in enumerate(apps)}, at=time.time()
    )


def run(entries: int, apps_count: int, rounds: int, out: Path) -> dict[str, Any]:
    apps = [f"app-{n:02d}" for n in range(apps_count)]
    with tempfile.TemporaryDirectory(prefix="console-bench-") as folder:
        begin = time.perf_counter()
        app, pages = build(Path(folder), entries, apps)
        build_s = time.perf_counter() - begin
        client = app.test_client()
        form = client.get("/console/signin", base_url=HTTPS).get_data(as_text=True)
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        signed = client.post(
            "/console/signin", base_url=HTTPS, data={"name": "bench", "password": PASSWORD, "csrf": csrf}
        )
        assert signed.status_code == 302, signed.status_code
        rows = []
        for name, path in pages.items():
            times, size = [], 0
            for _ in range(rounds):
                began = time.perf_counter()
                response = client.get(path, base_url=HTTPS)
                times.append((time.perf_counter() - began) * 1000)
                assert response.status_code == 200, (path, response.status_code)
                size = len(response.data)
            rows.append({"page": name, "path": path, "bytes": size, "ms": summary(times, 1)})
    result = {
        "entries": entries,
        "apps": apps_count,
        "rounds": rounds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version},
        "build_seconds": round(build_s, 2),
        "pages": rows,
        "target_ms": TARGET_MS,
        "within_target": all(row["ms"]["p95"] < TARGET_MS for row in rows),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def report(result: dict[str, Any]) -> str:
    rows = [
        (row["page"], f"{row['bytes']:,}", row["ms"]["median"], row["ms"]["p95"], row["ms"]["max"])
        for row in result["pages"]
    ]
    return "\n".join(
        [
            f"console: {result['entries']:,} audit entries, {result['apps']} apps, {result['rounds']} rounds a page "
            f"(built in {result['build_seconds']} s)",
            "",
            table(["page", "bytes", "median ms", "p95 ms", "max ms"], rows),
            "",
            f"every page under {result['target_ms']:.0f} ms at p95: {'yes' if result['within_target'] else 'NO'}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--apps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20, help="renders of each page")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    result = run(args.entries, args.apps, args.rounds, args.out)
    print(report(result))
    print(f"\nwritten to {args.out}")
    return 0 if result["within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
