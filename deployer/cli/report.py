"""`deployer report`: the report loop that tells GitHub and the [[notify]] targets what the audit log says.

It runs as [server] user (serve starts it so), with only the GitHub tokens and the notification secrets: it loads
the config with `load_reports`, never the worker's secrets.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from deployer import wiring
from deployer.report.outbox import backlog
from deployer.worker import supervisor


def register(sub: argparse._SubParsersAction, command: Callable[..., argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "report",
        cmd_report,
        "report deploys to GitHub (deployments) and to the [[notify]] targets",
        "deployer report --once",
        "Read the audit log after each feed's cursor and deliver what each entry says: GitHub deployment\n"
        "statuses for apps with a repository and a token, notifications to each [[notify]] target.\n"
        "A failed delivery is tried again (1 s doubling to 60 s, or what Retry-After asks), in order.\n"
        "serve runs this loop itself, as [server] user; --once delivers what is due now and exits:\n"
        "0 when every feed is caught up, 1 when one still waits on a retry.",
    )
    p.add_argument("--once", action="store_true", help="deliver what is due now, print each feed's backlog, exit")
    p.set_defaults(needs_config="reports")  # it runs unprivileged: the reports' secrets only


def cmd_report(args: argparse.Namespace) -> int:
    outbox = wiring.build_outbox(args.loaded_config)
    if not args.once:
        stop = supervisor.stop_on_signals()
        outbox.run(stop)
        return 0
    outbox.start()
    for feed in outbox.feeds:
        outbox.drain(feed)
    rows = backlog([outbox.cursors.cursor(f.name) for f in outbox.feeds], outbox.audit.head())
    for line in backlog_lines(rows, time.time()):
        print(line)
    return 0 if all(row["behind"] == 0 for row in rows) else 1


def backlog_lines(rows: list[dict[str, Any]], now: float) -> list[str]:
    """One line a feed: caught up, or how far behind and why."""
    lines = []
    for row in rows:
        line = f"report {row['feed']}: " + (
            "caught up" if row["behind"] == 0 else f"{row['behind']} audit entries behind"
        )
        if row["problem"]:
            wait = max(0.0, (row["retry_at"] or now) - now)
            line += f" (try {row['attempts']} failed: {row['problem']}; next in {wait:.0f} s)"
        lines.append(line)
    return lines
